"""evaluate_folder / benchmark_model on real pairs, bad inputs, and the written reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from s3od.evaluation import benchmark_model, evaluate_folder, write_reports
from s3od.evaluation.errors import DatasetNotFoundError, UnknownSetError
from s3od.evaluation.report import best_cells, results_table, to_markdown

from .conftest import needs_shared, shared_pairs

pytest.importorskip("py_sod_metrics")
pytestmark = needs_shared


def _gt_set(root: Path, source: str, n: int) -> list[str]:
    """``root/images`` + ``root/masks`` as symlinks to ``n`` real pairs (no copies)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = []
    for image, mask in shared_pairs(source, n):
        (root / "images" / image.name).symlink_to(image)
        (root / "masks" / mask.name).symlink_to(mask)
        stems.append(mask.stem)
    return stems


def _write_preds(folder: Path, gt_dir: Path, stems, blur: float | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        img = Image.open(gt_dir / f"{stem}.png").convert("L")
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        img.save(folder / f"{stem}.png")


@pytest.fixture
def bsds(tmp_path) -> tuple[Path, list[str]]:
    gt = tmp_path / "SOD"
    return gt, _gt_set(gt, "sod-bsds300", 6)


def test_perfect_and_blurred_predictions_and_the_comparison_report(tmp_path, bsds):
    gt, stems = bsds
    _write_preds(tmp_path / "perfect", gt / "masks", stems, None)
    _write_preds(tmp_path / "blur", gt / "masks", stems, 4)
    rows = (evaluate_folder(tmp_path / "perfect", gt, name="perfect")
            + evaluate_folder(tmp_path / "blur", gt, name="blur"))
    assert [(r["model"], r["set"], r["count"], r["total"]) for r in rows] == [
        ("perfect", "SOD", 6, 6), ("blur", "SOD", 6, 6)]
    perfect, blur = (r["metrics"] for r in rows)
    assert perfect["MAE"] == 0 and perfect["maxF"] == pytest.approx(1) and perfect["IoU"] == 1
    assert perfect["Sm"] == pytest.approx(1, abs=1e-6)
    assert 0 < blur["MAE"] < 0.1 and blur["maxF"] < 1 and perfect["HCE"] is None
    assert all(r["skipped"] == [] and r["error"] is None for r in rows)

    # Best per column: the perfect row everywhere (MAE is lower-is-better).
    best = best_cells(rows, ["MAE", "maxF", "Sm"])
    assert best == {(0, "MAE"), (0, "maxF"), (0, "Sm")}
    md = to_markdown(rows)
    assert "| perfect | SOD | 6 | **0.000** | **1.000** |" in md
    assert f"| blur | SOD | 6 | {blur['MAE']:.3f} |" in md

    paths = write_reports(rows, tmp_path / "out" / "cmp.csv")
    assert sorted(p.name for p in paths) == ["cmp.csv", "cmp.json", "cmp.md"]
    with open(tmp_path / "out" / "cmp.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["model"] for r in table] == ["perfect", "blur"]
    assert float(table[1]["MAE"]) == blur["MAE"] and table[0]["HCE"] == ""
    doc = json.loads((tmp_path / "out" / "cmp.json").read_text())
    assert doc["results"][1]["metrics"]["wF"] == blur["wF"]
    assert doc["metrics"]["MAE"]["higher_is_better"] is False

    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(results_table(rows, title="cmp"))
    text = console.export_text()
    assert "perfect" in text and "blur" in text and f"{blur['MAE']:.3f}" in text


def test_bad_inputs_are_reported_and_the_rest_is_scored(tmp_path, bsds):
    gt, stems = bsds
    pred = tmp_path / "pred"
    _write_preds(pred, gt / "masks", stems[:4], 2)  # stems[4] and stems[5] get no good pred
    (pred / f"{stems[4]}.png").write_bytes(b"garbage, not a png")
    transposed = np.asarray(Image.open(gt / "masks" / f"{stems[1]}.png")).T
    Image.fromarray(np.ascontiguousarray(transposed)).save(pred / f"{stems[1]}.png")
    Image.new("L", (8, 8)).save(pred / "stray.png")
    smaller = Image.open(gt / "masks" / f"{stems[2]}.png")
    smaller.resize((smaller.width // 2, smaller.height // 2)).save(pred / f"{stems[2]}.png")

    (row,) = evaluate_folder(pred, gt)
    assert row["count"] == 3 and row["total"] == 6  # stems 0, 2 (resized) and 3
    reasons = {Path(s["file"]).name: s["reason"] for s in row["skipped"]}
    assert set(reasons) == {f"{stems[4]}.png", f"{stems[1]}.png", "stray.png", f"{stems[5]}.png"}
    assert "cannot read" in reasons[f"{stems[4]}.png"]
    assert "aspect ratio" in reasons[f"{stems[1]}.png"]
    assert "no ground-truth mask" in reasons["stray.png"]
    assert "no prediction" in reasons[f"{stems[5]}.png"]
    assert row["metrics"]["IoU"] > 0.8

    (forced,) = evaluate_folder(pred, gt, resize_any=True)
    assert forced["count"] == 4


def test_missing_folders_empty_sets_and_unknown_sets(tmp_path, bsds):
    gt, stems = bsds
    with pytest.raises(DatasetNotFoundError, match="prediction folder"):
        evaluate_folder(tmp_path / "nope", gt)
    _write_preds(tmp_path / "pred", gt / "masks", stems, None)
    with pytest.raises(DatasetNotFoundError):
        evaluate_folder(tmp_path / "pred", tmp_path / "no-gt")
    with pytest.raises(UnknownSetError, match="available: SOD"):
        evaluate_folder(tmp_path / "pred", gt, sets=["DUTS-TE"])

    (tmp_path / "Empty" / "masks").mkdir(parents=True)
    (row,) = evaluate_folder(tmp_path / "pred", tmp_path / "Empty")
    assert row["count"] == 0 and row["error"] and row["metrics"]["MAE"] is None
    assert len(row["skipped"]) == len(stems)  # every prediction lacks a mask


def test_multi_set_root_with_per_set_prediction_folders(tmp_path):
    root = tmp_path / "bench"
    sod = _gt_set(root / "SOD", "sod-bsds300", 3)
    davis = _gt_set(root / "DAVIS-S", "davis2016", 2)
    (root / "DIS-TE1" / "gt").mkdir(parents=True)  # a set with no predictions at all
    pred = tmp_path / "pred"
    _write_preds(pred / "SOD", root / "SOD" / "masks", sod, None)
    _write_preds(pred / "davis-s", root / "DAVIS-S" / "masks", davis, 3)  # case differs

    rows = evaluate_folder(pred, root, name="m")
    assert [(r["set"], r["count"]) for r in rows] == [("DAVIS-S", 2), ("DIS-TE1", 0), ("SOD", 3)]
    assert "no predictions for DIS-TE1" in rows[1]["error"]
    assert rows[1]["hce"] and not rows[2]["hce"]  # HCE is on for DIS sets by default
    assert rows[2]["metrics"]["MAE"] == 0
    (only,) = evaluate_folder(pred, root, sets=["sod"], hce=True)
    assert only["metrics"]["HCE"] == 0  # a perfect mask needs no correction


class _EchoPredictor:
    """Returns the red channel as the mask: perfect on images painted from their masks."""

    model_name = "echo"

    def __init__(self):
        self.batches = []

    def remove_backgrounds(self, images, batch_size=4):
        from types import SimpleNamespace

        self.batches.append(len(images))
        return [SimpleNamespace(predicted_mask=im[..., 0].astype(np.float32) / 255)
                for im in images]


def test_benchmark_plumbing_with_a_perfect_predictor(tmp_path):
    data = tmp_path / "data" / "SOD"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for _, mask in shared_pairs("sod-bsds300", 5):
        (data / "masks" / mask.name).symlink_to(mask)
        Image.open(mask).convert("RGB").save(data / "images" / f"{mask.stem}.png")
    (data / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("L", (4, 4)).save(data / "masks" / "broken.png")

    echo = _EchoPredictor()
    rows = benchmark_model(echo, tmp_path / "data", batch_size=2, save_pred=tmp_path / "p")
    (row,) = rows
    assert row["model"] == "echo" and row["count"] == 5 and row["total"] == 6
    assert row["metrics"]["MAE"] == 0 and row["metrics"]["IoU"] == 1
    assert [Path(s["file"]).name for s in row["skipped"]] == ["broken.jpg"]
    assert sum(echo.batches) == 5 and max(echo.batches) <= 2
    saved = sorted(p.name for p in (tmp_path / "p" / "SOD").iterdir())
    assert saved == sorted(m.name for _, m in shared_pairs("sod-bsds300", 5))


def test_benchmark_a_tiny_random_model_and_rescore_its_saved_predictions(tmp_path, tiny_remover):
    data = tmp_path / "data"
    _gt_set(data / "DAVIS-S", "davis2016", 3)
    rows = benchmark_model(tiny_remover, data, batch_size=2, save_pred=tmp_path / "pred",
                           name="tiny")
    (row,) = rows
    assert row["count"] == 3 and row["error"] is None
    assert all(v is not None for k, v in row["metrics"].items() if k != "HCE")
    for png in (tmp_path / "pred" / "DAVIS-S").iterdir():
        assert Image.open(png).size == (854, 480) and Image.open(png).mode == "L"
    # Scoring the saved 8-bit PNGs gives the same numbers as scoring in memory.
    (again,) = evaluate_folder(tmp_path / "pred", data, name="tiny")
    assert again["metrics"] == row["metrics"]


def test_benchmark_accepts_an_in_memory_module(tmp_path):
    import torch

    from s3od.modeling import LiteSegmentation

    torch.manual_seed(0)
    model = LiteSegmentation(features=16, mask_upsample_features=16, mask_inter_features=8)
    data = tmp_path / "data"
    _gt_set(data / "fixture", "s3od-fixture", 1)
    (row,) = benchmark_model(model, data, image_size=64, device="cpu")
    assert row["model"] == "LiteSegmentation" and row["count"] == 1
    with pytest.raises(TypeError, match="model must be"):
        benchmark_model(42, data)
