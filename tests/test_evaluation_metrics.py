"""Metric suite: agreement with direct pysodmetrics calls on real pairs, hand-checkable cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFilter

from s3od.evaluation.errors import SizeMismatchError
from s3od.evaluation.metrics import (
    METRIC_KEYS,
    SODMetrics,
    boundary_iou,
    fit_to_gt,
    mask_boundary,
    to_uint8,
)

from .conftest import needs_shared, shared_pairs

py_sod_metrics = pytest.importorskip("py_sod_metrics")


def _read_l(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def _blur(gt: np.ndarray, radius: float = 4) -> np.ndarray:
    return np.asarray(Image.fromarray(gt).filter(ImageFilter.GaussianBlur(radius)), np.uint8)


@pytest.fixture(scope="module")
def real_gts() -> list[np.ndarray]:
    """A handful of real masks: binary SOD and DAVIS masks, and the soft s3od fixture mask."""
    pairs = shared_pairs("sod-bsds300", 4) + shared_pairs("davis2016", 2)
    pairs += shared_pairs("s3od-fixture")
    return [_read_l(mask) for _, mask in pairs]


def _noisy_blur(gt: np.ndarray, seed: int) -> np.ndarray:
    """A plausible soft prediction: blurred, shifted, with noise (not min-max normalised)."""
    rng = np.random.default_rng(seed)
    pred = _blur(np.roll(gt, 3, axis=1), 3).astype(np.float64) * 0.8
    pred += rng.normal(0, 12, gt.shape) + 20
    return np.clip(pred, 0, 255).astype(np.uint8)


@needs_shared
def test_wrapper_matches_direct_pysodmetrics_calls(real_gts):
    preds = [_noisy_blur(g, i) for i, g in enumerate(real_gts)]
    ours = SODMetrics(hce=True)
    for p, g in zip(preds, real_gts, strict=True):
        ours.step(p, g)
    got = ours.results()

    # The reference: each pysodmetrics class fed the raw uint8 maps, as its README does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure (v1) announces its future removal
        fm = py_sod_metrics.Fmeasure()
    mae, sm = py_sod_metrics.MAE(), py_sod_metrics.Smeasure()
    em, wfm = py_sod_metrics.Emeasure(), py_sod_metrics.WeightedFmeasure()
    hce = py_sod_metrics.HumanCorrectionEffortMeasure()
    binary = py_sod_metrics.FmeasureV2({
        "iou": py_sod_metrics.IOUHandler(False, False, with_binary=True),
        "dice": py_sod_metrics.DICEHandler(False, False, with_binary=True),
    })
    for p, g in zip(preds, real_gts, strict=True):
        for metric in (fm, mae, sm, em, wfm, hce, binary):
            metric.step(pred=p, gt=g)
    f_curve = fm.get_results()["fm"]["curve"]
    e = em.get_results()["em"]
    expected = {
        "MAE": mae.get_results()["mae"],
        "maxF": f_curve.max(),
        "meanF": f_curve.mean(),
        "adpF": fm.get_results()["fm"]["adp"],
        "wF": wfm.get_results()["wfm"],
        "Sm": sm.get_results()["sm"],
        "maxEm": e["curve"].max(),
        "meanEm": e["curve"].mean(),
        "adpEm": e["adp"],
        "IoU": binary.get_results()["iou"]["binary"],
        "Dice": binary.get_results()["dice"]["binary"],
        "HCE": hce.get_results()["hce"],
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
    # Sanity: the maps are neither perfect nor hopeless, so the comparison means something.
    assert 0.05 < got["MAE"] < 0.5 and 0.3 < got["maxF"] < 0.99 and got["HCE"] > 0


@needs_shared
def test_iou_and_dice_follow_the_threshold_convention(real_gts):
    # pysodmetrics min-max normalises the prediction, then binarises at > 0.5.
    ious, dices = [], []
    ours = SODMetrics()
    for i, g in enumerate(real_gts):
        p = _noisy_blur(g, 10 + i)
        ours.step(p, g)
        norm = (p / 255 - p.min() / 255) / ((p.max() - p.min()) / 255)
        pb, gb = norm > 0.5, g > 128
        inter, union = np.sum(pb & gb), np.sum(pb | gb)
        ious.append(inter / union)
        dices.append(2 * inter / (pb.sum() + gb.sum()))
    got = ours.results()
    assert got["IoU"] == pytest.approx(np.mean(ious), rel=1e-12)
    assert got["Dice"] == pytest.approx(np.mean(dices), rel=1e-12)


def _suite(preds, gts, **kwargs) -> dict:
    m = SODMetrics(**kwargs)
    for p, g in zip(preds, gts, strict=True):
        m.step(p, g)
    assert len(m) == len(gts)
    return m.results()


@needs_shared
def test_hand_checkable_cases_on_real_binary_masks(real_gts):
    gts = real_gts[:6]  # SOD and DAVIS masks are strictly 0/255
    assert all(set(np.unique(g)) == {0, 255} for g in gts)
    fg_fraction = float(np.mean([np.mean(g > 128) for g in gts]))

    perfect = _suite(gts, gts)
    assert perfect["MAE"] == 0.0
    assert perfect["maxF"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["Sm"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["wF"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["maxEm"] == pytest.approx(1.0, abs=1e-4)  # sum / (N - 1): a hair above 1
    assert perfect["IoU"] == perfect["Dice"] == perfect["BIoU"] == 1.0
    assert perfect["HCE"] is None  # not asked for

    zeros = _suite([np.zeros_like(g) for g in gts], gts)
    assert zeros["MAE"] == pytest.approx(fg_fraction, rel=1e-12)  # every object pixel missed
    assert zeros["IoU"] == zeros["Dice"] == zeros["BIoU"] == 0.0
    assert zeros["meanF"] < 0.05

    inverted = _suite([255 - g for g in gts], gts)
    assert inverted["MAE"] == 1.0
    assert inverted["IoU"] == 0.0 and inverted["maxF"] <= perfect["maxF"]
    assert inverted["Sm"] < 0.2

    blurred = _suite([_blur(g, 4) for g in gts], gts)
    assert 0 < blurred["MAE"] < zeros["MAE"]
    for key in ("maxF", "meanF", "wF", "Sm", "meanEm", "IoU", "BIoU"):
        assert inverted[key] < blurred[key] < perfect[key], key
    # A stronger blur is worse on the structure-sensitive metrics.
    very = _suite([_blur(g, 12) for g in gts], gts)
    assert very["MAE"] > blurred["MAE"] and very["wF"] < blurred["wF"]
    assert very["BIoU"] < blurred["BIoU"]


def test_boundary_iou_on_a_hand_computed_case():
    # 200x200 image: d = round(0.02 * hypot(200, 200)) = round(5.66) = 6 pixels.
    gt = np.zeros((200, 200), bool)
    gt[50:150, 50:150] = True  # 100x100 square, band = 100^2 - 88^2 = 2256 pixels
    assert mask_boundary(gt).sum() == 100 * 100 - 88 * 88
    full = np.ones((200, 200), bool)  # the image border counts as outside
    assert mask_boundary(full).sum() == 200 * 200 - 188 * 188
    assert boundary_iou(full, gt) == 0.0  # the two bands do not touch

    pred = np.zeros((200, 200), bool)
    pred[50:150, 50:200] = True  # same square extended to the right border
    # pred band: 100*150 - 88*138 = 2856; shared band: 100^2 - 88*94 = 1728.
    assert mask_boundary(pred).sum() == 2856
    assert boundary_iou(pred, gt) == pytest.approx(1728 / (2256 + 2856 - 1728), rel=1e-12)
    assert boundary_iou(gt, gt) == 1.0
    assert boundary_iou(np.zeros_like(gt), np.zeros_like(gt)) == 0.0


def test_to_uint8_converts_common_dtypes():
    assert to_uint8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]
    assert to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]
    assert to_uint8(np.array([[0, 65535, 257]], np.uint16)).tolist() == [[0, 255, 1]]
    assert to_uint8(np.zeros((2, 3, 1), np.uint8)).shape == (2, 3)
    with pytest.raises(ValueError):
        to_uint8(np.array([[np.nan]]))
    with pytest.raises(ValueError):
        to_uint8(np.zeros((2, 2, 3)))


def test_predictions_are_resized_to_the_gt_unless_the_aspect_differs():
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 20:40] = 255
    half = np.asarray(Image.fromarray(gt).resize((30, 20), Image.NEAREST))
    up = fit_to_gt(half, gt.shape)
    assert up.shape == gt.shape and up.dtype == np.uint8
    assert np.mean((up > 128) == (gt > 128)) > 0.97
    with pytest.raises(SizeMismatchError, match="aspect"):
        fit_to_gt(gt.T.copy(), gt.shape)
    assert fit_to_gt(gt.T.copy(), gt.shape, resize_any=True).shape == gt.shape
    with pytest.raises(SizeMismatchError):
        SODMetrics().step(gt.T.copy(), gt)


def test_results_without_pairs_are_none():
    assert SODMetrics().results() == dict.fromkeys(METRIC_KEYS)
