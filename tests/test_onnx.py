"""ONNX export and the ONNX Runtime predictor against PyTorch, on real photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
onnx = pytest.importorskip("onnx", reason="needs the [onnx] extra")

from s3od import BackgroundRemoval, CheckpointError, ModelNotFoundError, RemovalResult  # noqa: E402
from s3od.cli import app  # noqa: E402
from s3od.export import OnnxBackgroundRemoval, OnnxExportError, export_onnx  # noqa: E402
from s3od.imageio import load_image  # noqa: E402
from s3od.modeling import DPTSegmentation, LiteSegmentation  # noqa: E402

from .conftest import SAMPLES, SHARED_DATA, shared_pairs  # noqa: E402
from .onnx_tiny import (  # noqa: E402
    LITE_SIZE,
    TINY_DPT,
    calibrate,
    calibrated_lite_checkpoint,
    exported_lite,
    sample_arrays,
)


def real_images() -> list[Path]:
    """The committed sample photos, plus a few ../shared photos when the folder is there."""
    paths = sorted(SAMPLES.glob("*.jpg"))
    if SHARED_DATA.is_dir():
        paths += [img for source in ("davis2016", "sod-bsds300")
                  for img, _ in shared_pairs(source, limit=1)]
    return paths


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory) -> Path:
    """Small lite model whose masks vary like a trained model's (see ``calibrate``)."""
    return calibrated_lite_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def lite_onnx(tmp_path_factory, lite_checkpoint) -> Path:
    path, code, output = exported_lite(tmp_path_factory.mktemp("onnx"), lite_checkpoint)
    assert code == 0, output
    return path


@pytest.fixture(scope="module")
def torch_remover(lite_checkpoint) -> BackgroundRemoval:
    return BackgroundRemoval(lite_checkpoint, image_size=LITE_SIZE, device="cpu")


@pytest.fixture(scope="module")
def ort_remover(lite_onnx) -> OnnxBackgroundRemoval:
    return OnnxBackgroundRemoval(lite_onnx)


def test_cli_export_writes_a_verified_file_with_dynamic_batch(tmp_path_factory,
                                                              lite_checkpoint, lite_onnx):
    _, _, output = exported_lite(tmp_path_factory.mktemp("unused"), lite_checkpoint)
    assert "max abs difference" in output and "Traceback" not in output
    proto = onnx.load(str(lite_onnx))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "images"
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, LITE_SIZE, LITE_SIZE]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["s3od.architecture"] == "lite" and meta["s3od.image_size"] == str(LITE_SIZE)
    assert {o.name for o in proto.graph.output} == {"pred_masks", "pred_iou"}


def test_onnx_runtime_matches_pytorch_on_real_images(ort_remover, torch_remover):
    assert ort_remover.image_size == torch_remover.image_size == LITE_SIZE
    for path in real_images():
        ours = ort_remover.remove_background(path)
        reference = torch_remover.remove_background(path)
        assert reference.predicted_mask.std() > 0.1, "masks too flat for a meaningful check"
        assert type(ours) is RemovalResult is type(reference)
        assert ours.all_masks.shape == reference.all_masks.shape
        assert ours.all_masks.dtype == np.float32 and ours.all_ious.dtype == np.float32
        assert np.abs(ours.all_masks - reference.all_masks).max() < 1e-4, path
        assert np.abs(ours.all_ious - reference.all_ious).max() < 1e-5, path
        assert ours.best_index == reference.best_index
        alpha = np.asarray(ours.rgba_image)[..., 3].astype(int)
        assert np.abs(alpha - np.asarray(reference.rgba_image)[..., 3]).max() <= 1
        np.testing.assert_array_equal(ours.image, reference.image)


def test_dynamic_batch_gives_the_same_masks_as_single_images(ort_remover):
    rgbs = [load_image(p) for p in sorted(SAMPLES.glob("*.jpg"))]
    batched = ort_remover.predict_arrays(rgbs)
    assert len(batched) == len(rgbs) >= 3
    for rgb, (masks, ious) in zip(rgbs, batched, strict=True):
        single_masks, single_ious = ort_remover.predict_arrays([rgb])[0]
        assert masks.shape == (3, *rgb.shape[:2])
        assert np.abs(masks - single_masks).max() < 1e-5
        assert np.abs(ious - single_ious).max() < 1e-5


def test_low_resolution_masks_for_edge_refinement(ort_remover, torch_remover):
    rgb = load_image(SAMPLES / "cat.jpg")
    (low, _), = ort_remover.predict_arrays([rgb], full_resolution=False)
    (ref, _), = torch_remover.predict_arrays([rgb], full_resolution=False)
    assert low.shape == ref.shape and low.shape[-1] == LITE_SIZE
    assert np.abs(low - ref).max() < 1e-4
    refined = ort_remover.remove_background(rgb, refine="guided")
    assert refined.predicted_mask.shape == rgb.shape[:2]


def test_onnx_predictor_works_where_torch_cannot_be_imported(lite_onnx):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "import s3od\n"
        f"remover = s3od.OnnxBackgroundRemoval({str(lite_onnx)!r})\n"
        f"result = remover.remove_background({str(SAMPLES / 'cat.jpg')!r})\n"
        "assert isinstance(result, s3od.RemovalResult)\n"
        "print(result.predicted_mask.shape, result.rgba_image.mode)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(300, 451) RGBA"


def test_dinov3_export_matches_pytorch_on_real_images(tmp_path):
    torch.manual_seed(0)
    model = calibrate(DPTSegmentation(**TINY_DPT), sample_arrays(), 128)
    images = [load_image(p) for p in real_images()]
    report = export_onnx(model, tmp_path / "tiny-dinov3.onnx", image_size=128,
                         verify_images=images)
    assert report.architecture == "dpt_dinov3" and report.opset >= 17
    assert max(report.max_abs_diff.values()) < 1e-4
    # Independent of the exporter's own check: both predictors, one batch of real photos.
    ours = OnnxBackgroundRemoval(report.path).predict_arrays(images)
    reference = BackgroundRemoval.from_model(model, image_size=128,
                                             device="cpu").predict_arrays(images)
    for (m_ort, i_ort), (m_pt, i_pt) in zip(ours, reference, strict=True):
        assert m_ort.shape == m_pt.shape
        assert np.abs(m_ort - m_pt).max() < 1e-4
        assert np.abs(i_ort - i_pt).max() < 1e-5


class _FakeProgram:
    """Stands in for torch's ONNXProgram: writes given bytes instead of exporting."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def save(self, path: str, **_: object) -> None:
        Path(path).write_bytes(self.payload)


def _tiny_lite() -> torch.nn.Module:
    return LiteSegmentation(features=16, mask_upsample_features=16, mask_inter_features=8)


def test_broken_export_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: _FakeProgram(b"not onnx"))
    target = tmp_path / "out.onnx"
    with pytest.raises(OnnxExportError):
        export_onnx(_tiny_lite(), target, image_size=64)
    assert list(tmp_path.iterdir()) == []


def test_disagreeing_runtime_fails_the_export_and_writes_nothing(tmp_path, monkeypatch,
                                                                 lite_onnx):
    import s3od.export.exporter as exporter

    monkeypatch.setattr(torch.onnx, "export",
                        lambda *a, **k: _FakeProgram(lite_onnx.read_bytes()))
    monkeypatch.setattr(exporter, "verify_onnx", lambda *a, **k: {
        "network_masks": 0.3, "network_ious": 0.0, "masks": 0.3, "ious": 0.0})
    with pytest.raises(OnnxExportError, match="differs from PyTorch"):
        export_onnx(_tiny_lite(), tmp_path / "out.onnx", image_size=LITE_SIZE)
    assert list(tmp_path.iterdir()) == []


def test_bad_models_and_options_raise_typed_errors(tmp_path, lite_onnx):
    with pytest.raises(ModelNotFoundError):
        OnnxBackgroundRemoval(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(CheckpointError):
        OnnxBackgroundRemoval(garbage)
    # A valid ONNX file that is not an s3od model.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(other))
    with pytest.raises(CheckpointError, match="not an s3od ONNX model"):
        OnnxBackgroundRemoval(other)
    with pytest.raises(ValueError, match="exported for 128px"):
        OnnxBackgroundRemoval(lite_onnx, image_size=256)
    with pytest.raises(ValueError, match="unsupported device"):
        OnnxBackgroundRemoval(lite_onnx, device="tpu")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(_tiny_lite(), tmp_path / "a.onnx", opset=16)
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(_tiny_lite(), tmp_path / "a.pt")


@pytest.mark.parametrize("args, message", [
    (["--opset", "16"], "17"),
    (["--verify-image", "missing.jpg"], "--verify-image"),
])
def test_cli_export_errors_are_clean(tmp_path, tiny_lite_checkpoint, args, message):
    target = tmp_path / "x.onnx"
    result = CliRunner().invoke(app, ["export-onnx", str(tiny_lite_checkpoint), "-o",
                                      str(target), *args])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not target.exists()


def test_cli_export_unknown_model_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["export-onnx", str(tmp_path / "nope.pt"), "-o",
                                      str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert "cannot resolve model" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_cli_remove_runs_an_onnx_model(tmp_path, lite_onnx, lite_checkpoint):
    runner = CliRunner()
    outputs = {}
    for name, model in (("onnx", lite_onnx), ("torch", lite_checkpoint)):
        target = tmp_path / f"{name}.png"
        result = runner.invoke(app, ["remove", str(SAMPLES / "coffee.jpg"), "-m", str(model),
                                     "--image-size", str(LITE_SIZE), "-o", str(target),
                                     "--no-fg-estimate", "--device", "cpu",
                                     "--precision", "fp32"])  # the CLI's auto may pick bf16
        assert result.exit_code == 0, result.output
        outputs[name] = np.asarray(load_image_rgba(target))
    assert "CPUExecutionProvider" in runner.invoke(app, [
        "remove", str(SAMPLES / "cat.jpg"), "-m", str(lite_onnx), "-o",
        str(tmp_path / "cat.png"), "--no-fg-estimate"]).output
    assert outputs["onnx"].shape == outputs["torch"].shape
    assert np.abs(outputs["onnx"][..., 3].astype(int) - outputs["torch"][..., 3]).max() <= 1


def load_image_rgba(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        assert img.mode == "RGBA"
        return np.asarray(img)
