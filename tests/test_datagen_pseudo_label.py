"""Pseudo-labelling step: ONNX teacher, TTA, resume, filters, filter + export + training source."""

from __future__ import annotations

import json
import os
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
    TeacherError,
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


# ------------------------------------------------------------------ hostile input (issue 22)


class PlainTeacher:
    """A Python teacher: the normalised red channel, or whatever ``out`` makes of it."""

    name = "plain"

    def __init__(self, out=None) -> None:
        self.out = out

    def describe(self) -> dict:
        return {"kind": "test", "name": self.name}

    def predict(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        red = image[..., 0].astype(np.float32) / 255.0
        return red if self.out is None else self.out(red)


def _invoke(*args: str):
    from typer.testing import CliRunner

    from synth_sod.data_generation.cli import app

    result = CliRunner().invoke(app, list(args))
    result.text = " ".join(result.output.split())  # the console wraps long lines
    return result


def test_photo_with_a_non_utf8_name_is_a_failure_and_the_run_goes_on(tmp_path, photos) -> None:
    root, _ = photos
    bad = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(red_square(40, 50, (5, 30, 5, 40))).save(root / "a" / "images" / bad)
    out = tmp_path / "labels"
    for run in range(2):  # a rerun meets the same photo again and still finishes
        manifest = pseudo_label([root], out, PlainTeacher())
        failed = {f["id"]: f["error"] for f in manifest.failed}
        assert "a_caf\\xe9" in failed and "not valid UTF-8" in failed["a_caf\\xe9"]
        assert (manifest.done, manifest.skipped) == ((3, 0) if run == 0 else (0, 3))
        json.loads(manifest.path.read_text(encoding="utf-8"))  # the manifest stays valid JSON
    assert sorted(p.stem for p in out.glob("*/masks/*.png")) == ["p1", "p2", "p3"]
    assert not list(out.glob(f"*/*/{os.fsdecode(b'caf')}*"))


def test_webp_and_bmp_photos_survive_filter_and_export(tmp_path) -> None:
    """One shared suffix list: what pseudo-label labels, filter keeps and export writes."""
    from synth_sod.data_generation.samples import IMAGE_SUFFIXES

    folder = tmp_path / "photos" / "s" / "images"
    folder.mkdir(parents=True)
    for i, fmt in enumerate(("png", "jpeg", "webp", "bmp")):
        suffix = {"jpeg": "jpg"}.get(fmt, fmt)
        assert f".{suffix}" in IMAGE_SUFFIXES
        Image.fromarray(red_square(48, 64, (8, 40, 10, 50))).save(
            folder / f"p{i}.{suffix}", format=fmt.upper(), **({"lossless": True} if fmt ==
                                                              "webp" else {}))
    labels = tmp_path / "labels"
    assert pseudo_label([tmp_path / "photos"], labels, PlainTeacher()).done == 4
    cfg = FilteringConfig(input_path=str(labels), output_path=str(tmp_path / "flat"))
    kept = run_filtering(cfg, filters=[build_filter({"type": "teacher_agreement",
                                                     "min_agreement": 0.5})])
    assert (kept.done, kept.failed) == (4, [])
    assert sorted(p.suffix for p in (tmp_path / "flat" / "images").iterdir()) == [
        ".bmp", ".jpg", ".png", ".webp"]
    export_parquet(tmp_path / "flat", tmp_path / "parquet")
    from synth_sod.model_training.data import load_hf_source

    source = load_hf_source(str(tmp_path / "parquet"))
    assert sorted(source.key(i).rsplit("/", 1)[-1] for i in range(len(source))) == [
        "s_p0", "s_p1", "s_p2", "s_p3"]


def test_output_dir_overlapping_an_input_folder_is_refused(tmp_path, photos) -> None:
    root, _ = photos
    before = sorted(p for p in root.rglob("*"))
    for out in (root, root / "a" / "images", root / "labels", tmp_path):
        with pytest.raises(PipelineError, match="overlaps the input folder"):
            pseudo_label([root], out, PlainTeacher())
        result = _invoke("pseudo-label", "--image-dir", str(root), "--teacher",
                         str(tmp_path / "absent.onnx"), "--output-dir", str(out))
        assert result.exit_code == 2 and "overlaps the input folder" in result.text
    assert sorted(p for p in root.rglob("*")) == before


def test_teacher_with_a_wrong_output_shape_is_a_clear_error(tmp_path, photos) -> None:
    root, _ = photos

    class TwoMaps(torch.nn.Module):
        def forward(self, x):
            return x[:, 0:2]

    path = tmp_path / "two.onnx"
    torch.onnx.export(TwoMaps(), torch.zeros(1, 3, SIDE, SIDE), str(path),
                      input_names=["input.1"], dynamo=False)
    with pytest.raises(TeacherError, match=r"output of shape \[1, 2, 64, 64\]"):
        pseudo_label([root], tmp_path / "o", OnnxTeacher(path))
    with pytest.raises(TeacherError, match="returned a mask of shape"):
        pseudo_label([root], tmp_path / "p", PlainTeacher(lambda red: red[::2]))
    result = _invoke("pseudo-label", "--image-dir", str(root), "--teacher", str(path),
                     "--output-dir", str(tmp_path / "cli"))
    assert result.exit_code == 2, result.output
    assert "output of shape" in result.text and "Traceback" not in result.text
    assert not list((tmp_path / "cli").glob("*/masks/*"))


def test_nan_teacher_output_fails_the_photo_instead_of_an_empty_mask(tmp_path, photos) -> None:
    root, _ = photos

    class NanTeacher(torch.nn.Module):
        def forward(self, x):
            return torch.log(x[:, 0:1] - 1000.0)  # NaN everywhere

    path = tmp_path / "nan.onnx"
    torch.onnx.export(NanTeacher(), torch.zeros(1, 3, SIDE, SIDE), str(path),
                      input_names=["input.1"], dynamo=False)
    for teacher, out in ((OnnxTeacher(path), tmp_path / "onnx"),
                         (PlainTeacher(lambda red: np.where(red > 0.5, np.nan, red)),
                          tmp_path / "plain")):
        manifest = pseudo_label([root], out, teacher)
        assert manifest.done == 0
        errors = [f["error"] for f in manifest.failed if f["id"] != "b_broken"]
        assert len(errors) == 3 and all("NaN" in e for e in errors)
        assert not list(out.glob("*/masks/*")) and not list(out.glob("*/metadata/*"))


@pytest.mark.parametrize("scales", ["nan", "inf", "-inf", "0.001", "0", "-1", "1e9",
                                    "0.75,nan", "1e400"])
def test_out_of_range_tta_scales_are_refused(tmp_path, photos, scales) -> None:
    root, _ = photos
    result = _invoke("pseudo-label", "--image-dir", str(root), "--teacher",
                     str(tmp_path / "absent.onnx"), "--scales", scales, "--output-dir",
                     str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert "TTA scales must be numbers from 0.25 to 4.0" in result.text
    assert "Traceback" not in result.text
    with pytest.raises(PipelineError, match="TTA scales"):
        TTA(scales=tuple(float(s) for s in scales.split(",")))


def test_manifest_records_are_rebuilt_from_the_metadata(tmp_path, photos) -> None:
    """A run killed before its manifest was saved loses no records: the next run rebuilds
    them from the per-photo metadata."""
    root, truth = photos
    out = tmp_path / "labels"
    first = pseudo_label([root], out, PlainTeacher())
    expected = sorted(first.items, key=lambda r: r["id"])
    assert [r["id"] for r in expected] == sorted(truth)
    data = json.loads(first.path.read_text())
    data["items"] = []  # as if SIGKILL came before the periodic save
    first.path.write_text(json.dumps(data))
    again = pseudo_label([root], out, PlainTeacher())
    assert sorted(again.items, key=lambda r: r["id"]) == expected
    on_disk = json.loads(again.path.read_text())["items"]
    assert sorted(on_disk, key=lambda r: r["id"]) == expected
    # a photo whose metadata is damaged is not counted as done: it is labelled again
    (out / "a" / "metadata" / "p1.json").write_text("{broken")
    third = pseudo_label([root], out, PlainTeacher())
    assert (third.done, third.skipped) == (1, 2)
    assert sorted(third.items, key=lambda r: r["id"]) == expected


def test_disk_full_is_a_clear_error_and_leaves_no_partial_files(tmp_path, photos, monkeypatch,
                                                                ) -> None:
    import errno

    root, _ = photos
    out = tmp_path / "labels"
    real_save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        if getattr(self, "mode", "") == "L":  # the mask: image and metadata are written
            if hasattr(fp, "write"):
                fp.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(PipelineError, match="the disk is full") as err:
        pseudo_label([root], out, PlainTeacher())
    assert "a/images" not in str(err.value) and "rerun" in str(err.value)
    leftovers = [p for p in out.rglob("*") if p.is_file() and "manifests" not in p.parts]
    assert leftovers == []
    assert not list(out.rglob("*.lock"))
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert pseudo_label([root], out, PlainTeacher()).done == 3


def test_disk_full_through_the_cli_is_exit_2_without_traceback(tmp_path, photos,
                                                               monkeypatch) -> None:
    import errno

    from synth_sod.data_generation import pseudo_label as module

    root, _ = photos
    teacher = export_teacher(tmp_path / "t.onnx")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.shutil, "copyfile", full_disk)
    result = _invoke("pseudo-label", "--image-dir", str(root), "--teacher", str(teacher),
                     "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert "the disk is full" in result.text and "Traceback" not in result.text
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file()
                and "manifests" not in p.parts]


def test_two_runs_on_one_output_folder_are_prevented(tmp_path, photos) -> None:
    import socket
    import subprocess

    from synth_sod.data_generation.sharding import OutputLock

    root, _ = photos
    out = tmp_path / "labels"
    with OutputLock(out, "pseudo_label", Shard()):
        with pytest.raises(PipelineError, match=f"another run \\(pid {os.getpid()}"):
            pseudo_label([root], out, PlainTeacher())
        # another shard of the same folder is a different writer: allowed
        assert pseudo_label([root], out, PlainTeacher(), shard=Shard(1, 2)).done >= 1
    assert not list(out.glob("*/masks/p1.png"))  # shard 0's photo was not labelled
    lock = out / "manifests" / "pseudo_label-shard-00000-of-00001.lock"
    # a lock left by a process that is gone is taken over
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert pseudo_label([root], out, PlainTeacher()).failed[0]["id"] == "b_broken"
    assert not lock.exists()
    # a lock naming a process that still runs on this host is respected
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(PipelineError, match=f"pid {os.getppid()}"):
        pseudo_label([root], out, PlainTeacher())
    result = _invoke("pseudo-label", "--image-dir", str(root), "--teacher",
                     str(export_teacher(tmp_path / "t.onnx")), "--output-dir", str(out))
    assert result.exit_code == 2 and "another run" in result.text
