"""Foreign single-mask ONNX models (rembg's families) as s3od removers.

The graphs are built with ``onnx.helper``: each outputs a known function of its input (the
channel mean), so the expected mask can be computed here, independently of s3od, from the
family's preprocessing. Wrong constants, the wrong output or a missing sigmoid change the mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from .conftest import SAMPLES

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))


def foreign_graph(path: Path, side: int | str, outputs: int, *, logits: bool = False,
                  output_names: list[str] | None = None) -> Path:
    """A rembg-shaped graph: output 0 is the channel mean of the input (times 8 as logits for
    BiRefNet), every other output its negation, so reading the wrong one inverts the mask."""
    names = output_names or [str(1959 + i) for i in range(outputs)]
    dims: list[int | str] = [1, 3, side, side]
    out_dims: list[int | str] = [1, 1, side, side]
    nodes = [helper.make_node("ReduceMean", ["input.1", "axes"], ["mean"], keepdims=1)]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    if logits:
        inits.append(helper.make_tensor("eight", TensorProto.FLOAT, [], [8.0]))
    nodes.append(helper.make_node("Mul", ["mean", "eight"], [names[0]]) if logits
                 else helper.make_node("Identity", ["mean"], [names[0]]))
    for name in names[1:]:
        nodes.append(helper.make_node("Neg", ["mean"], [name]))
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, out_dims) for n in names], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def expected_mask(rgb: np.ndarray, side: int, mean_std: tuple, sigmoid: bool = False
                  ) -> np.ndarray:
    """What rembg would give for the channel-mean network, written out step by step."""
    small = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.LANCZOS))
    x = small / np.max(small)
    mean, std = mean_std
    x = np.stack([(x[..., c] - mean[c]) / std[c] for c in range(3)]).astype(np.float32)
    pred = x.mean(axis=0)
    if sigmoid:
        pred = 1 / (1 + np.exp(-8.0 * pred))
    pred = (pred - pred.min()) / (pred.max() - pred.min())
    mask = Image.fromarray((pred * 255).astype(np.uint8), "L")
    mask = mask.resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.LANCZOS)
    return np.asarray(mask, np.float32) / 255


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from s3od.imageio import load_image

    return load_image(sorted(SAMPLES.glob("*.jpg"))[0])


CASES = [  # file name, side, outputs, logits, family, preprocessing, sigmoid
    ("u2net.onnx", 320, 7, False, "u2net", IMAGENET, False),
    ("renamed-u2netp.onnx", 320, 7, False, "u2net", IMAGENET, False),
    ("silueta.onnx", 320, 7, False, "u2net", IMAGENET, False),
    ("isnet-general-use.onnx", 1024, 6, False, "isnet", HALF, False),
    ("anime-model.onnx", 1024, 6, False, "isnet", HALF, False),
    ("BiRefNet-general-epoch_244.onnx", 1024, 1, True, "birefnet", IMAGENET, True),
    ("mystery-1024.onnx", 1024, 1, True, "birefnet", IMAGENET, True),
]


@pytest.mark.parametrize(("name", "side", "outputs", "logits", "family", "norm", "sig"), CASES)
def test_each_family_is_identified_and_preprocessed_as_rembg_does(
        tmp_path, photo, name, side, outputs, logits, family, norm, sig) -> None:
    from s3od import load_remover
    from s3od.foreign import ForeignOnnxRemoval

    remover = load_remover(foreign_graph(tmp_path / name, side, outputs, logits=logits))
    assert isinstance(remover, ForeignOnnxRemoval)
    assert (remover.family, remover.image_size) == (family, side)
    result = remover.remove_background(photo)
    assert result.all_masks.shape == (1, *photo.shape[:2])
    diff = np.abs(result.predicted_mask - expected_mask(photo, side, norm, sig))
    assert diff.max() <= 2.5 / 255 and diff.mean() < 1e-3  # float rounding at 8-bit steps
    assert np.isnan(result.all_ious).all() and not result.scored
    assert result.assessment().verdict == "unscored"
    assert "no IoU head" in remover.describe()


def test_explicit_preprocess_overrides_and_unplaceable_graph_names_the_families(
        tmp_path, photo) -> None:
    from s3od import CheckpointError, load_remover

    odd = foreign_graph(tmp_path / "odd.onnx", "side", 2)
    with pytest.raises(CheckpointError) as err:
        load_remover(odd)
    assert all(name in str(err.value) for name in ("u2net", "isnet-anime", "birefnet"))
    remover = load_remover(odd, preprocess="isnet-anime")  # dynamic input: the family's side
    assert (remover.family, remover.image_size) == ("isnet", 1024)
    small = load_remover(odd, preprocess="isnet-anime", image_size=256)
    np.testing.assert_allclose(small.remove_background(photo).predicted_mask,
                               expected_mask(photo, 256, HALF), atol=1.5 / 255)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        load_remover(odd, preprocess="rmbg")
    with pytest.raises(ValueError, match="foreign ONNX"):
        load_remover("s3od-lite", preprocess="u2net")
    fixed = foreign_graph(tmp_path / "u2net.onnx", 320, 7)
    with pytest.raises(ValueError, match="fixed 320px"):
        load_remover(fixed, image_size=512)


def test_our_own_export_shape_still_runs_as_an_s3od_model(tmp_path) -> None:
    """A graph with s3od's input/outputs is not taken for a foreign one."""
    from s3od import load_remover
    from s3od.export.ort_predictor import OnnxBackgroundRemoval

    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=1),
             helper.make_node("Concat", ["m", "m", "m"], ["pred_masks"], axis=1),
             helper.make_node("ReduceMean", ["pred_masks", "hw"], ["pred_iou"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "s3od", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                      ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("pred_masks", TensorProto.FLOAT, ["batch", 3, 64, 64]),
         helper.make_tensor_value_info("pred_iou", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("hw", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "ours.onnx"))
    remover = load_remover(tmp_path / "ours.onnx")
    assert isinstance(remover, OnnxBackgroundRemoval) and remover.image_size == 64
    # Bytes (what Ray actors receive) take the same two paths.
    from_bytes = load_remover((tmp_path / "ours.onnx").read_bytes())
    assert isinstance(from_bytes, OnnxBackgroundRemoval)
    foreign = load_remover(foreign_graph(tmp_path / "x.onnx", 320, 7).read_bytes())
    assert (type(foreign).__name__, foreign.family) == ("ForeignOnnxRemoval", "u2net")
    result = remover.remove_background(np.zeros((40, 50, 3), np.uint8))
    assert result.all_masks.shape == (3, 40, 50) and result.scored


def test_downstream_edges_benchmark_and_server_payloads(tmp_path, photo) -> None:
    from s3od import load_remover
    from s3od.evaluation.api import benchmark_model
    from s3od.serving.app import _masks_body, _render

    path = foreign_graph(tmp_path / "u2net.onnx", 320, 7)
    remover = load_remover(path)
    plain = remover.remove_background(photo)
    guided = remover.remove_background(photo, refine="guided")
    assert guided.predicted_mask.shape == photo.shape[:2]
    agree = np.logical_and(guided.binary_mask(), plain.binary_mask()).sum() / max(
        1, np.logical_or(guided.binary_mask(), plain.binary_mask()).sum())
    assert agree > 0.9 and not guided.scored

    from s3od.serving.app import remover_for
    from s3od.serving.settings import ServerSettings

    odd = foreign_graph(tmp_path / "odd.onnx", "side", 2)
    served = remover_for(ServerSettings(model=str(odd), preprocess="birefnet-portrait"))
    assert (served.family, served.image_size) == ("birefnet", 1024)

    body = _masks_body(plain, remover.model_name)
    assert json.loads(body.model_dump_json())["masks"][0]["iou"] is None
    _, headers = _render(plain, False, None, False, "png")
    assert "X-S3OD-IoU" not in headers and headers["X-S3OD-Best-Index"] == "0"

    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i, sample in enumerate(sorted(SAMPLES.glob("*.jpg"))[:2]):
        Image.open(sample).save(data / "images" / f"p{i}.jpg")
        mask = remover.remove_background(sample).predicted_mask > 0.5
        Image.fromarray(mask.astype(np.uint8) * 255).save(data / "masks" / f"p{i}.png")
    rows = benchmark_model(str(path), data, batch_size=2, save_pred=tmp_path / "pred")
    assert rows[0]["count"] == 2 and np.isfinite(rows[0]["metrics"]["MAE"])
    saved = np.asarray(Image.open(tmp_path / "pred" / "set" / "p0.png"), np.float32) / 255
    first = remover.remove_background(data / "images" / "p0.jpg").predicted_mask
    assert np.abs(saved - first).max() <= 1 / 255  # the benchmark scored the remover's masks


def test_cli_remove_with_preprocess_and_models_lists_the_rembg_folder(tmp_path, monkeypatch,
                                                                       photo) -> None:
    from s3od.cli import app

    home = tmp_path / "u2net-home"
    home.mkdir()
    foreign_graph(home / "u2netp.onnx", 320, 7)
    foreign_graph(home / "custom.onnx", "side", 2)
    monkeypatch.setenv("U2NET_HOME", str(home))
    listing = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    assert "u2netp.onnx" in listing.output and "custom.onnx" in listing.output
    assert str(home) in listing.output

    src = sorted(SAMPLES.glob("*.jpg"))[0]
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["remove", str(src), "-o", str(out), "--all-masks",
                                    "-m", str(home / "custom.onnx"), "--preprocess", "silueta"])
    assert done.exit_code == 0, done.output
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{src.stem}.mask0.png", f"{src.stem}.png"]
    mask = Image.open(out / f"{src.stem}.mask0.png")
    assert "s3od:iou" not in mask.text and mask.text["s3od:best"] == "true"
    expected = expected_mask(photo, 320, IMAGENET)
    alpha = np.asarray(Image.open(out / f"{src.stem}.png"))[..., 3] / 255
    assert np.abs(alpha - expected).max() <= 1.5 / 255

    refused = CliRunner().invoke(app, ["remove", str(src), "-o", str(tmp_path / "x.png"),
                                       "-m", str(home / "custom.onnx")])
    assert refused.exit_code == 2 and "--preprocess" in refused.output
    assert "Traceback" not in refused.output
    on_ray = CliRunner().invoke(app, ["remove", str(src), "-o", str(tmp_path / "r"), "--ray",
                                      "local", "-m", str(home / "custom.onnx"),
                                      "--preprocess", "u2net"])
    assert on_ray.exit_code == 2 and "does not apply with --ray" in on_ray.output


def test_pseudo_label_teacher_shares_the_preprocessing(tmp_path, photo, monkeypatch) -> None:
    """The teacher builds its input with s3od.foreign.rembg_input; its masks differ from the
    remover's only by its 8-bit rounding (it rounds, rembg truncates)."""
    import s3od.foreign
    from s3od import load_remover
    from synth_sod.data_generation.pseudo_label import OnnxTeacher

    calls = []
    real = s3od.foreign.rembg_input

    def spy(rgb, size, *args):
        calls.append((rgb.shape, size))
        return real(rgb, size, *args)

    path = foreign_graph(tmp_path / "u2net.onnx", 320, 7)
    monkeypatch.setattr(s3od.foreign, "rembg_input", spy)
    teacher = OnnxTeacher(path).predict(photo)
    assert calls == [(photo.shape, 320)]
    ours = load_remover(path).remove_background(photo).predicted_mask
    diff = np.abs(teacher - ours)
    assert diff.max() <= 3.5 / 255 and diff.mean() < 1 / 255


def test_video_through_a_foreign_model(tmp_path) -> None:
    """Every frame's alpha is that frame's mask from the foreign model (up to VP9 coding)."""
    pytest.importorskip("av", reason="the edges extra (PyAV) is not installed")
    from s3od import load_remover
    from s3od.video import iter_frames, remove_video_background

    from .test_video import _decode_rgba, _pan, _write_clip

    clip = tmp_path / "pan.mp4"
    _write_clip(clip, _pan("coffee", 12), audio_seconds=None)
    remover = load_remover(foreign_graph(tmp_path / "u2net.onnx", 320, 7))
    report = remove_video_background(remover, clip, tmp_path / "out.webm", batch_size=4)
    assert report.frames == 12
    frame = list(iter_frames(clip))[5]
    expected = remover.remove_background(frame, full_size_candidates=False).predicted_mask
    alpha = _decode_rgba(tmp_path / "out.webm")[5][..., 3].astype(np.float32) / 255
    assert alpha.shape == expected.shape and np.abs(alpha - expected).mean() < 0.03
    assert alpha.std() > 0.01  # a real mask, not a constant plane
