"""Bulk removal on a local Ray instance (2 CPUs) started here, over real photos."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="needs the [ray] extra")
pq = pytest.importorskip("pyarrow.parquet", reason="needs the [ray] extra")

from s3od.bulk import (  # noqa: E402
    PARQUET_COLUMNS,
    BulkInputError,
    RenderOptions,
    list_images,
    remove_backgrounds_ray,
)
from s3od.cli import app  # noqa: E402

from .conftest import SAMPLES, SHARED_DATA, shared_pairs  # noqa: E402
from .onnx_tiny import LITE_SIZE, calibrated_lite_checkpoint, exported_lite  # noqa: E402

BROKEN = "broken.jpg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A small tree of real photos: samples at the top, ../shared photos in a subfolder, one
    corrupt JPEG and one text file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for sample in sorted(SAMPLES.glob("*.jpg"))[:2]:
        shutil.copy(sample, root / sample.name)
    (root / "more").mkdir()
    if SHARED_DATA.is_dir():
        for img, _ in shared_pairs("davis2016", limit=2) + shared_pairs("sod-bsds300", limit=1):
            shutil.copy(img, root / "more" / img.name)
    else:
        shutil.copy(SAMPLES / "astronaut.jpg", root / "more" / "astronaut.jpg")
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "notes.txt").write_text("not an image")
    return root


def good_photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg") if p.name != BROKEN)


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def alpha_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGBA"
        return np.asarray(img)[..., 3].astype(int)


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory) -> Path:
    return calibrated_lite_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def torch_remover(lite_checkpoint):
    from s3od import BackgroundRemoval

    return BackgroundRemoval(lite_checkpoint, image_size=LITE_SIZE, device="cpu")


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray instance with two CPUs, shut down after this module."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


# ------------------------------------------------------------------ no cluster needed


def test_inputs_that_would_overwrite_each_other_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(SAMPLES / "cat.jpg", tmp_path / "a" / "cat.jpg")
    shutil.copy(SAMPLES / "cat.jpg", tmp_path / "b" / "cat.png")
    with pytest.raises(BulkInputError, match="same output"):
        list_images([str(tmp_path / "a" / "cat.jpg"), str(tmp_path / "b" / "cat.png")])
    _, items = list_images([str(tmp_path)])
    assert sorted(key for _, _, key in items) == ["a/cat.jpg", "b/cat.png"]


def test_bad_arguments_fail_before_any_work(tmp_path, photos):
    with pytest.raises(BulkInputError, match="input not found"):
        remove_backgrounds_ray(str(tmp_path / "missing"), str(tmp_path / "out"))
    with pytest.raises(BulkInputError, match="png/webp only"):
        remove_backgrounds_ray(str(photos), str(tmp_path / "out"), output_format="parquet",
                               render=RenderOptions(mask_only=True))
    with pytest.raises(BulkInputError, match="output_format"):
        remove_backgrounds_ray(str(photos), str(tmp_path / "out"),
                               output_format="jpg")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "jpg"], "png, webp or parquet"),
    (["--all-masks"], "not supported with --ray"),
])
def test_cli_ray_option_errors_are_clean(tmp_path, photos, args, message):
    result = CliRunner().invoke(app, ["remove", str(photos), "-o", str(tmp_path / "out"),
                                      "--ray", "local", *args])
    assert result.exit_code == 2
    assert message in flat(result.output) and "Traceback" not in result.output
    no_output = CliRunner().invoke(app, ["remove", str(photos), "--ray", "local"])
    assert no_output.exit_code == 2 and "needs -o" in flat(no_output.output)


# ------------------------------------------------------------------ on the local cluster


@pytest.mark.slow
def test_png_outputs_resume_and_match_the_in_process_predictor(cluster, photos, tmp_path,
                                                               lite_checkpoint,
                                                               torch_remover):
    out = tmp_path / "out"
    summary = remove_backgrounds_ray(str(photos), str(out), model=str(lite_checkpoint),
                                     image_size=LITE_SIZE, batch_size=2, num_actors=2)
    good = good_photos(photos)
    assert summary.done == len(good) and summary.skipped == 0
    assert [Path(s).name for s, _ in summary.failed] == [BROKEN]
    assert "cannot decode" in summary.failed[0][1]
    for src in good:
        target = out / src.relative_to(photos).with_suffix(".png")
        reference = torch_remover.remove_background(src)
        alpha = alpha_of(target)
        assert alpha.shape == reference.predicted_mask.shape
        assert np.abs(alpha - np.asarray(reference.rgba_image)[..., 3]).max() <= 1, src
    assert not list(out.rglob(".*")), "temporary files left behind"

    # Resume: only the missing output is redone; finished files are not touched.
    victim = out / good[0].relative_to(photos).with_suffix(".png")
    victim.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = remove_backgrounds_ray(str(photos), str(out), model=str(lite_checkpoint),
                                   image_size=LITE_SIZE, batch_size=2, num_actors=1)
    assert (again.done, again.skipped, len(again.failed)) == (1, len(good) - 1, 1)
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


@pytest.mark.slow
def test_parquet_parts_hold_every_mask_once_and_resume(cluster, photos, tmp_path,
                                                       lite_checkpoint, torch_remover):
    out = tmp_path / "parts"
    first = remove_backgrounds_ray(str(photos), f"file://{out}", output_format="parquet",
                                   model=str(lite_checkpoint), image_size=LITE_SIZE,
                                   batch_size=2, num_actors=1)
    good = good_photos(photos)
    assert first.done == len(good) and len(first.failed) == 1
    table = pq.read_table(out)
    assert tuple(table.column_names) == PARQUET_COLUMNS
    rows = {row["key"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows == len(good)
    for src in good:
        row = rows[str(src.relative_to(photos))]
        reference = torch_remover.remove_background(src)
        with Image.open(io.BytesIO(row["mask_png"])) as mask:
            assert mask.mode == "L" and mask.size == (row["width"], row["height"])
            ours = np.asarray(mask).astype(int)
        assert np.abs(ours - np.asarray(reference.mask_image())).max() <= 1
        assert row["best_index"] == reference.best_index
        assert abs(row["iou"] - float(reference.all_ious[reference.best_index])) < 1e-5

    second = remove_backgrounds_ray(str(photos), str(out), output_format="parquet",
                                    model=str(lite_checkpoint), image_size=LITE_SIZE)
    assert (second.done, second.skipped) == (0, len(good))
    assert pq.read_table(out).num_rows == len(good)
    with pytest.raises(BulkInputError, match="already holds parquet"):
        remove_backgrounds_ray(str(photos), str(out), output_format="parquet", resume=False,
                               model=str(lite_checkpoint), image_size=LITE_SIZE)


@pytest.mark.slow
def test_cli_remove_ray_with_an_onnx_model(cluster, photos, tmp_path, tmp_path_factory,
                                           lite_checkpoint):
    onnx_path, code, output = exported_lite(tmp_path_factory.mktemp("onnx"),
                                            lite_checkpoint)
    assert code == 0, output
    from s3od.export import OnnxBackgroundRemoval

    out = tmp_path / "masks"
    result = CliRunner().invoke(app, [
        "remove", str(photos), "-o", str(out), "--ray", "local", "--ray-actors", "1",
        "-m", str(onnx_path), "--mask-only", "--format", "webp", "--batch-size", "3"])
    assert result.exit_code == 1, result.output  # the corrupt JPEG is reported, not fatal
    assert f"failed 1 of {len(good_photos(photos)) + 1}" in flat(result.output)
    reference = OnnxBackgroundRemoval(onnx_path)
    for src in good_photos(photos):
        with Image.open(out / src.relative_to(photos).with_suffix(".webp")) as img:
            mask = np.asarray(img.convert("L")).astype(int)
        expected = np.asarray(reference.remove_background(src).mask_image())
        assert np.abs(mask - expected).max() <= 1, src
