"""Salient-object metrics: an accumulator over ``pysodmetrics`` plus boundary IoU.

Every metric that ``pysodmetrics`` provides is computed by ``pysodmetrics`` itself, with its
conventions: the ground truth is binarised at ``> 128``, the prediction is divided by 255 and
min-max normalised per image (its ``prepare_data``), curves use 256 thresholds, "max" and "mean"
F/E-measure are the maximum and the mean of the dataset-mean curve, adaptive thresholds are
``min(2 x mean, 1)``, F-measure uses beta^2 = 0.3, S-measure alpha = 0.5, and IoU/Dice binarise the
normalised prediction at ``> 0.5``. Only boundary IoU is computed here.

Both inputs are 2-D ``uint8`` maps of the same shape (0..255), as read from disk; use
:func:`to_uint8` for float or boolean arrays and :func:`fit_to_gt` for a prediction at another size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from s3od.evaluation.errors import MissingDependencyError, SizeMismatchError


@dataclass(frozen=True)
class MetricSpec:
    """One reported number: its column name, direction and meaning."""

    key: str
    higher_is_better: bool
    description: str


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("MAE", False, "mean absolute error"),
    MetricSpec("maxF", True, "max of the mean F-measure curve (beta^2=0.3, 256 thresholds)"),
    MetricSpec("meanF", True, "mean of the mean F-measure curve"),
    MetricSpec("adpF", True, "adaptive F-measure (threshold min(2 x mean, 1))"),
    MetricSpec("wF", True, "weighted F-measure"),
    MetricSpec("Sm", True, "S-measure (alpha=0.5)"),
    MetricSpec("maxEm", True, "max of the mean E-measure curve"),
    MetricSpec("meanEm", True, "mean of the mean E-measure curve"),
    MetricSpec("adpEm", True, "adaptive E-measure"),
    MetricSpec("IoU", True, "IoU of the prediction binarised at 0.5"),
    MetricSpec("Dice", True, "Dice of the prediction binarised at 0.5"),
    MetricSpec("BIoU", True, "boundary IoU (band of 2% of the image diagonal) at 0.5"),
    MetricSpec("HCE", False, "human correction effort (DIS); only for binary-GT sets"),
)
METRIC_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)
SPECS: dict[str, MetricSpec] = {m.key: m for m in METRICS}

#: Boundary IoU band width as a fraction of the image diagonal (Cheng et al., CVPR 2021).
BOUNDARY_DILATION_RATIO = 0.02
#: Relative aspect-ratio difference above which a prediction is not silently resized.
ASPECT_TOLERANCE = 0.02


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as err:
        raise MissingDependencyError(
            f"evaluation needs the optional package {name!r}: pip install 's3od[eval]'"
        ) from err


def pysodmetrics() -> Any:
    """The ``py_sod_metrics`` module, or a clear error naming the extra to install."""
    return _import("py_sod_metrics")


def to_uint8(mask: np.ndarray) -> np.ndarray:
    """A 2-D map of bool, uint8, uint16 or float in [0, 1] -> ``uint8`` 0..255.

    Floats are rounded (``0.5 -> 128``), the way a saved 8-bit PNG stores them.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("mask contains NaN or inf")
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported mask dtype {arr.dtype}")


def fit_to_gt(pred: np.ndarray, gt_shape: tuple[int, int], *, resize_any: bool = False,
              aspect_tolerance: float = ASPECT_TOLERANCE) -> np.ndarray:
    """Resize a ``uint8`` prediction to the ground truth's ``(H, W)`` with bilinear filtering.

    This is what the common SOD evaluation toolkits do with predictions saved at another size.
    A prediction whose aspect ratio differs from the ground truth's (transposed, cropped) is most
    likely paired with the wrong mask, so it raises :class:`SizeMismatchError` unless
    ``resize_any`` is set.
    """
    h, w = int(gt_shape[0]), int(gt_shape[1])
    if pred.shape == (h, w):
        return pred
    ph, pw = pred.shape
    if not resize_any:
        ratio_gt, ratio_pred = w / h, pw / ph
        if abs(ratio_pred - ratio_gt) / ratio_gt > aspect_tolerance:
            raise SizeMismatchError(
                f"prediction is {pw}x{ph} but ground truth is {w}x{h} (different aspect ratio)"
            )
    cv2 = _import("cv2")
    return cv2.resize(pred, (w, h), interpolation=cv2.INTER_LINEAR)


def mask_boundary(mask: np.ndarray, dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> np.ndarray:
    """Pixels of a boolean mask within ``d`` pixels (chessboard distance) of its outside.

    ``d = max(1, round(dilation_ratio x image diagonal))``. Pixels beyond the image border count
    as outside, so a mask touching the border has a band along it.
    """
    cv2 = _import("cv2")
    h, w = mask.shape
    d = max(1, round(dilation_ratio * float(np.hypot(h, w))))
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=d,
                      borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (inner == 0)


def boundary_iou(pred: np.ndarray, gt: np.ndarray,
                 dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> float:
    """Boundary IoU of two boolean masks: IoU of their boundary bands (Cheng et al., 2021).

    Returns 0 when both bands are empty, as pysodmetrics does for IoU with an empty union.
    """
    pb = mask_boundary(pred, dilation_ratio)
    gb = mask_boundary(gt, dilation_ratio)
    union = np.count_nonzero(pb | gb)
    return float(np.count_nonzero(pb & gb) / union) if union else 0.0


class SODMetrics:
    """Accumulate the metric suite over pairs, then read dataset-level numbers.

    >>> m = SODMetrics()
    >>> m.step(pred_uint8, gt_uint8)          # once per image
    >>> m.results()["maxF"]

    Args:
        hce: also compute human correction effort (slow; meant for DIS-style binary GT).
        boundary_dilation_ratio: band width of boundary IoU as a fraction of the diagonal.
    """

    def __init__(self, *, hce: bool = False,
                 boundary_dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> None:
        psm = pysodmetrics()
        self._prepare = psm.utils.prepare_data
        self._mae = psm.MAE()
        self._sm = psm.Smeasure(alpha=0.5)
        self._wfm = psm.WeightedFmeasure()
        self._em = psm.Emeasure()
        self._fm = psm.FmeasureV2(metric_handlers={
            "fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3),
            "iou": psm.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            "dice": psm.DICEHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        })
        self._hce = psm.HumanCorrectionEffortMeasure() if hce else None
        self._ratio = boundary_dilation_ratio
        self._biou: list[float] = []

    @property
    def with_hce(self) -> bool:
        return self._hce is not None

    def __len__(self) -> int:
        return len(self._biou)

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one pair: 2-D maps of equal shape (uint8 0..255; bool and float are converted)."""
        pred, gt = to_uint8(pred), to_uint8(gt)
        if pred.shape != gt.shape:
            raise SizeMismatchError(
                f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}"
            )
        # pysodmetrics' own normalisation, done once instead of once per metric class.
        p, g = self._prepare(pred, gt)
        for metric in (self._mae, self._sm, self._wfm, self._em, self._fm):
            metric.step(p, g, normalize=False)
        if self._hce is not None:
            self._hce.step(p, g, normalize=False)
        self._biou.append(boundary_iou(p > 0.5, g, self._ratio))

    def results(self) -> dict[str, float | None]:
        """Dataset-level numbers keyed by :data:`METRIC_KEYS` (``None`` when not computed)."""
        out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
        if not self._biou:
            return out
        fm = self._fm.get_results()
        f_curve = np.asarray(fm["fm"]["dynamic"], dtype=np.float64)
        em = self._em.get_results()["em"]
        e_curve = np.asarray(em["curve"], dtype=np.float64)
        out.update(
            MAE=self._mae.get_results()["mae"],
            maxF=float(f_curve.max()),
            meanF=float(f_curve.mean()),
            adpF=fm["fm"]["adaptive"],
            wF=self._wfm.get_results()["wfm"],
            Sm=self._sm.get_results()["sm"],
            maxEm=float(e_curve.max()),
            meanEm=float(e_curve.mean()),
            adpEm=em["adp"],
            IoU=fm["iou"]["binary"],
            Dice=fm["dice"]["binary"],
            BIoU=float(np.mean(self._biou)),
        )
        if self._hce is not None:
            out["HCE"] = self._hce.get_results()["hce"]
        return {k: (None if v is None else float(v)) for k, v in out.items()}
