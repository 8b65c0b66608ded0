"""Pseudo-labelling step: ONNX teacher, TTA, resume, filters, filter + export + training source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synth_sod.data_generation.export import export_parquet
from synth_sod.data_generation.filtering import FilteringConfig, run_filtering
from synth_sod.data_generation.filters import build_filter
from synth_sod.data_generation.filters.base import Sample
from synth_sod.data_generation.pseudo_label import (
    TTA,
    OnnxTeacher,
    discover_photos,
    load_teacher,
    mask_confidence,
    pseudo_label,
)
from synth_sod.data_generation.sharding import PipelineError, Shard

SIDE = 64


class RedTeacher(torch.nn.Module):
    """Saliency = the normalised red channel, plus an optional left-to-right ramp that makes the
    teacher disagree with its own mirror image."""

    def __init__(self, ramp: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("ramp", torch.linspace(0, ramp, SIDE).view(1, 1, 1, SIDE))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = x[:, 0:1] + self.ramp
        return out, out * 0.5  # rembg reads only the first output


def export_teacher(path: Path, ramp: float = 0.0) -> Path:
    torch.onnx.export(RedTeacher(ramp), torch.zeros(1, 3, SIDE, SIDE), str(path),
                      input_names=["input.1"], dynamo=False)
    return path


def red_square(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.full((height, width, 3), 30, np.uint8)
    y0, y1, x0, x1 = box
    image[y0:y1, x0:x1] = (230, 20, 20)
    return image


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Two sources in the shared layout (``<source>/images``) and one corrupt file."""
    truth = {}
    for source, stem, box in [("a", "p1", (20, 70, 30, 90)), ("a", "p2", (10, 40, 10, 60)),
                              ("b", "p3", (50, 110, 60, 140))]:
        folder = tmp_path / "photos" / source / "images"
        folder.mkdir(parents=True, exist_ok=True)
        image = red_square(120, 160, box)
        Image.fromarray(image).save(folder / f"{stem}.png")
        mask = np.zeros(image.shape[:2], bool)
        mask[box[0]:box[1], box[2]:box[3]] = True
        truth[f"{source}_{stem}"] = mask
    (tmp_path / "photos" / "b" / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return tmp_path / "photos", truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def test_onnx_teacher_reads_static_size_and_refuses_scale_tta(tmp_path: Path) -> None:
    teacher = OnnxTeacher(export_teacher(tmp_path / "t.onnx"))
    assert teacher.size == SIDE
    assert len(teacher.describe()["sha256"]) == 64
    with pytest.raises(PipelineError, match="fixed 64x64 input"):
        teacher.predict(red_square(40, 40, (5, 20, 5, 20)), scale=1.5)


def test_missing_or_broken_teacher_is_a_pipeline_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not found"):
        load_teacher(str(tmp_path / "absent.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(PipelineError, match="cannot load"):
        OnnxTeacher(bad)


def test_pseudo_label_writes_masks_skips_bad_files_and_resumes(tmp_path: Path, photos) -> None:
    root, truth = photos
    teacher = OnnxTeacher(export_teacher(tmp_path / "t.onnx"))
    out = tmp_path / "labels"
    manifest = pseudo_label([root], out, teacher, tta=TTA(flip=True))
    assert (manifest.done, manifest.skipped) == (3, 0)
    assert [f["id"] for f in manifest.failed] == ["b_broken"]
    for sample_id, mask in truth.items():
        source, stem = sample_id.split("_", 1)
        written = np.asarray(Image.open(out / source / "masks" / f"{stem}.png")) / 255.0
        assert written.shape == mask.shape
        assert iou(written > 0.5, mask) > 0.9
        meta = json.loads((out / source / "metadata" / f"{stem}.json").read_text())
        assert meta["teacher"] == "t" and meta["tta"] == {"flip": True, "scales": []}
        # A symmetric teacher agrees with its mirror image.
        assert meta["agreement"] > 0.95
        assert (out / source / "images" / f"{stem}.png").read_bytes() == (
            root / source / "images" / f"{stem}.png").read_bytes()
    again = pseudo_label([root], out, teacher, tta=TTA(flip=True))
    assert (again.done, again.skipped) == (0, 3)
    assert not list(out.rglob("*.part*"))


def test_shards_split_the_photos(tmp_path: Path, photos) -> None:
    root, _ = photos
    teacher = OnnxTeacher(export_teacher(tmp_path / "t.onnx"))
    done = [pseudo_label([root], tmp_path / "o", teacher, shard=Shard(i, 2)).total
            for i in range(2)]
    assert sum(done) == len(discover_photos([root])) == 4


def test_flip_tta_measures_disagreement_of_an_asymmetric_teacher(tmp_path: Path, photos) -> None:
    root, _ = photos
    teacher = OnnxTeacher(export_teacher(tmp_path / "t.onnx", ramp=6.0))
    plain = pseudo_label([root], tmp_path / "plain", teacher)
    flipped = pseudo_label([root], tmp_path / "flip", teacher, tta=TTA(flip=True))
    plain_agreement = {r["id"]: r["agreement"] for r in plain.items}
    flip_agreement = {r["id"]: r["agreement"] for r in flipped.items}
    assert set(plain_agreement.values()) == {1.0}  # one view agrees with itself
    assert min(flip_agreement.values()) < 0.8


def test_mask_confidence_separates_crisp_from_hazy_masks() -> None:
    crisp = np.zeros((100, 100), np.float32)
    crisp[30:70, 30:70] = 1.0
    yy, xx = np.mgrid[0:100, 0:100]
    hazy = np.clip(1.0 - np.hypot(yy - 50, xx - 50) / 60.0, 0, 1).astype(np.float32)
    assert mask_confidence(crisp) == 1.0
    assert mask_confidence(hazy) < 0.3
    assert mask_confidence(np.zeros((10, 10), np.float32)) == 0.0


def _sample(tmp_path: Path, mask: np.ndarray, meta: dict | None) -> Sample:
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(image)
    mask_path = tmp_path / "m.png"
    Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
    meta_path = None
    if meta is not None:
        meta_path = tmp_path / "meta.json"
        meta_path.write_text(json.dumps(meta))
    return Sample(image, mask_path, "c", "0", meta_path)


def test_teacher_filters(tmp_path: Path) -> None:
    agreement = build_filter({"type": "teacher_agreement", "min_agreement": 0.8})
    confidence = build_filter({"type": "mask_confidence", "min_confidence": 0.5})
    square = np.zeros((100, 100), np.float32)
    square[20:80, 20:80] = 1
    assert agreement.check(_sample(tmp_path, square, {"agreement": 0.9})).passed
    low = agreement.check(_sample(tmp_path, square, {"agreement": 0.5}))
    assert not low.passed and "0.500 < 0.8" in low.reason
    assert not agreement.check(_sample(tmp_path, square, None)).passed
    assert confidence.check(_sample(tmp_path, square, None)).passed
    dot = np.zeros((100, 100), np.float32)
    dot[50, 50] = 1
    tiny = confidence.check(_sample(tmp_path, dot, None))
    assert not tiny.passed and "object covers" in tiny.reason
    with pytest.raises(PipelineError, match="unknown setting"):
        build_filter({"type": "mask_confidence", "min_agrement": 0.5})


def test_labels_flow_through_filter_and_export_into_training(tmp_path: Path, photos) -> None:
    from synth_sod.model_training.data import load_hf_source

    root, truth = photos
    teacher = OnnxTeacher(export_teacher(tmp_path / "t.onnx"))
    labels = tmp_path / "labels"
    pseudo_label([root], labels, teacher, tta=TTA(flip=True))
    cfg = FilteringConfig.from_yaml("pseudo_filtering_config.yaml",
                                    [f"input_path={labels}", f"output_path={tmp_path / 'flat'}"])
    filtered = run_filtering(cfg)
    assert filtered.done == 3 and not filtered.failed
    export_parquet(tmp_path / "flat", tmp_path / "parquet")
    source = load_hf_source(str(tmp_path / "parquet"))
    assert len(source) == 3
    ids = sorted(source.key(i).rsplit("/", 1)[-1] for i in range(len(source)))
    assert ids == sorted(truth)
    for i in range(len(source)):
        image, mask = source.load(i)
        expected = truth[source.key(i).rsplit("/", 1)[-1]]
        assert image.shape[:2] == expected.shape
        assert iou(mask > 127, expected) > 0.9


def test_cli_labels_a_folder_and_reports_bad_input(tmp_path: Path, photos) -> None:
    from typer.testing import CliRunner

    from synth_sod.data_generation.cli import app

    root, _ = photos
    teacher = export_teacher(tmp_path / "t.onnx")
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["pseudo-label", "--image-dir", str(root), "--teacher",
                                 str(teacher), "--tta", "flip", "--output-dir", str(out)])
    # One photo is corrupt: reported as failed (exit 1), the three others are labelled.
    assert result.exit_code == 1, result.output
    assert "3 done" in result.output and "1 failed" in result.output
    assert len(list(out.glob("*/masks/*.png"))) == 3
    missing = runner.invoke(app, ["pseudo-label", "--image-dir", str(root), "--teacher",
                                  str(tmp_path / "nope.onnx"), "--output-dir", str(out)])
    assert missing.exit_code == 2 and "teacher model not found" in missing.output
    bad_tta = runner.invoke(app, ["pseudo-label", "--image-dir", str(root), "--teacher",
                                  str(teacher), "--output-dir", str(out), "--tta", "rotate"])
    assert bad_tta.exit_code == 2 and "--tta" in bad_tta.output


def test_an_s3od_model_is_a_teacher_too(tmp_path: Path, photos, tiny_lite_checkpoint) -> None:
    """Anything load_remover takes labels photos; its masks are the remover's own."""
    from s3od import load_remover

    root, _ = photos
    teacher = load_teacher(str(tiny_lite_checkpoint), size=64)
    assert teacher.describe()["kind"] == "s3od" and teacher.size == 64
    manifest = pseudo_label([root / "a"], tmp_path / "o", teacher)
    assert manifest.done == 2
    remover = load_remover(str(tiny_lite_checkpoint), image_size=64)
    image = np.asarray(Image.open(root / "a" / "images" / "p1.png").convert("RGB"))
    expected = remover.remove_background(image).predicted_mask
    written = np.asarray(Image.open(tmp_path / "o" / "a" / "masks" / "p1.png"), np.float32)
    assert np.abs(written / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(PipelineError, match="cannot load the teacher"):
        load_teacher(str(tmp_path / "missing.safetensors"))


def test_our_onnx_export_runs_through_the_s3od_runtime(tmp_path: Path, tiny_lite_checkpoint,
                                                        ) -> None:
    """An ``.onnx`` with s3od metadata is one of our exports: it keeps our preprocessing and the
    IoU head's pick, instead of rembg's single-output recipe."""
    from synth_sod.data_generation.pseudo_label import RemoverTeacher

    from .onnx_tiny import exported_lite

    path, code, output = exported_lite(tmp_path, tiny_lite_checkpoint)
    assert code == 0, output
    ours = load_teacher(str(path))
    assert isinstance(ours, RemoverTeacher) and ours.describe()["kind"] == "s3od"
    rembg_style = load_teacher(str(export_teacher(tmp_path / "t.onnx")))
    assert isinstance(rembg_style, OnnxTeacher)
