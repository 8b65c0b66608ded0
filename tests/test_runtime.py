"""Precision, channels_last, batch-norm folding: fast paths must not change the masks.

The agreement tests use stand-in models calibrated on real photos (random weights alone give
near-constant masks that agree trivially; see benchmarks/common.py), or the shipped s3od-lite
weights once they exist. Tolerances (stated in AGREEMENT) come from benchmarks/speed.py runs;
a real bug (wrong memory format, a bad fold, a head left in bf16) misses them by far.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from s3od import BackgroundRemoval
from s3od import runtime as rt

from .conftest import REPO, SHARED_DATA, needs_shared

BUNDLED_LITE = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"
TINY_DINOV3 = {
    "hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96,
    "num_hidden_layers": 4, "num_register_tokens": 4, "patch_size": 16, "image_size": 224,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "layerscale_value": 1.0, "rope_theta": 100.0,
    "pos_embed_rescale": 2.0, "query_bias": True, "key_bias": False, "value_bias": True,
    "proj_bias": True, "mlp_bias": True, "use_gated_mlp": False,
}
SIZE = 256
# (min IoU of the thresholded best masks, max mean |dp| per image) against fp32.
# Calibrated stand-ins have no margin (half their pixels sit within a few logits of the
# threshold), so these are loose; the shipped, trained model must do much better.
AGREEMENT = {"stand-in": (0.90, 0.03), "trained": (0.98, 0.01)}


def _benchmarks_common():
    """benchmarks/common.py: the same calibration the speed benchmark uses."""
    spec = importlib.util.spec_from_file_location("s3od_bench_common",
                                                  REPO / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _photos(count: int = 3) -> list[np.ndarray]:
    """Real photos from ../shared (varied sizes); the committed samples when it is absent."""
    from s3od.imageio import load_image

    if SHARED_DATA.is_dir():
        paths = [sorted((SHARED_DATA / s / "images").glob("*.jpg"))[3]
                 for s in ("davis2016", "sod-bsds300")]
        paths.append(SHARED_DATA / "s3od-fixture" / "images" / "image.jpg")
    else:
        paths = sorted((REPO / "assets" / "samples").glob("*.jpg"))
    return [load_image(p) for p in paths[:count]]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint, kind): a small DINOv3 + DPT and the lite model."""
    from s3od.hub import save_checkpoint
    from s3od.modeling import DPTSegmentation, LiteSegmentation

    common = _benchmarks_common()
    photos = _photos()
    folder = tmp_path_factory.mktemp("stand-ins")
    torch.manual_seed(0)
    dpt_config = {"encoder_config": TINY_DINOV3, "layer_indices": (1, 2, 3, 4),
                  "features": 32, "out_channels": (16, 32, 64, 64), "num_masks": 3}
    dpt = DPTSegmentation(**dpt_config)
    common.calibrate(dpt, photos, SIZE)
    out = {"dinov3": (save_checkpoint(dpt.state_dict(), folder / "dpt.safetensors",
                                      "dpt_dinov3", dpt_config), "stand-in")}
    if BUNDLED_LITE.is_file():
        out["lite"] = (BUNDLED_LITE, "trained")
    else:
        lite_config = {"features": 32, "mask_upsample_features": 16, "mask_inter_features": 8}
        lite = LiteSegmentation(**lite_config)
        common.calibrate(lite, photos, SIZE)
        out["lite"] = (save_checkpoint(lite.state_dict(), folder / "lite.safetensors", "lite",
                                       lite_config), "stand-in")
    return out


@pytest.fixture(scope="module")
def references(stand_ins) -> dict[str, list]:
    """fp32 NCHW outputs of each stand-in on the photos (computed once)."""
    photos = _photos()
    return {name: BackgroundRemoval(path, image_size=SIZE, device="cpu", precision="fp32",
                                    channels_last=False).predict_arrays(photos)
            for name, (path, _) in stand_ins.items()}


def _agreement(reference, other) -> tuple[float, float, bool]:
    """(min IoU of best masks, max over images of mean |dp|, same best candidate everywhere)."""
    ious, diffs, same = [], [], True
    for (ref_masks, ref_iou), (masks, iou) in zip(reference, other, strict=True):
        a = ref_masks[int(np.argmax(ref_iou))] > 0.5
        b = masks[int(np.argmax(iou))] > 0.5
        ious.append(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))
        diffs.append(float(np.abs(ref_masks - masks).mean()))
        same &= int(np.argmax(ref_iou)) == int(np.argmax(iou))
    return min(ious), max(diffs), same


@needs_shared
@pytest.mark.parametrize("model", ["dinov3", "lite"])
@pytest.mark.parametrize("precision,channels_last", [
    ("fp32", True), ("bf16", False), ("bf16", True), ("auto", None),
    # fp16 is a GPU option; CPUs without AVX512-FP16 emulate it slowly (seconds here).
    pytest.param("fp16", True, marks=pytest.mark.slow)])
def test_fast_paths_agree_with_fp32_on_real_photos(stand_ins, references, model, precision,
                                                   channels_last):
    path, kind = stand_ins[model]
    photos = _photos()
    reference = references[model]
    fast = BackgroundRemoval(path, image_size=SIZE, device="cpu", precision=precision,
                             channels_last=channels_last)
    assert fast.precision in ("fp32", "bf16", "fp16")
    result = fast.predict_arrays(photos)
    # The masks themselves are still float32 probabilities at the photo's size.
    for (ref_masks, _), (masks, ious) in zip(reference, result, strict=True):
        assert masks.dtype == np.float32 and masks.shape == ref_masks.shape
        assert ious.dtype == np.float32
    min_iou, max_mean_diff, same_best = _agreement(reference, result)
    iou_bound, diff_bound = AGREEMENT[kind]
    if fast.precision == "fp32":  # only the memory format changed: summation order only
        iou_bound, diff_bound = 0.999, 1e-4
    assert min_iou >= iou_bound, f"{precision}: IoU {min_iou:.4f} < {iou_bound}"
    assert max_mean_diff <= diff_bound, f"{precision}: mean |dp| {max_mean_diff:.4f}"
    assert same_best


@needs_shared
def test_bf16_moves_masks_less_than_half_a_grey_level_of_input_noise(stand_ins):
    """A yardstick independent of any tolerance: bf16 must disturb the masks less than
    +-0.5/255 noise on the pixels (below what two JPEG decoders disagree by) does in fp32."""
    from s3od.transforms import IMAGENET_STD, preprocess

    path, _ = stand_ins["lite"]
    photos = _photos()
    fp32 = BackgroundRemoval(path, image_size=SIZE, device="cpu", precision="fp32",
                             channels_last=False)
    bf16 = BackgroundRemoval(path, image_size=SIZE, device="cpu", precision="bf16")
    batch, _ = preprocess(photos, SIZE)
    torch.manual_seed(0)
    noise = (torch.rand_like(batch) * 2 - 1) * (0.5 / 255) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = fp32.model(batch)["pred_masks"]
        noisy = fp32.model(batch + noise)["pred_masks"]
        with rt.autocast(bf16.device, "bf16"):
            low = bf16._forward(rt.to_memory_format(batch, bf16.runtime.channels_last))
    low = low["pred_masks"].float()
    flips_noise = ((noisy > 0) != (ref > 0)).float().mean()
    flips_bf16 = ((low > 0) != (ref > 0)).float().mean()
    assert flips_bf16 < flips_noise


# ----------------------------------------------------------------------------- choices


def test_precision_is_validated():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        rt.resolve_precision("int4", torch.device("cpu"))
    assert rt.resolve_precision("fp16", torch.device("cpu")) == "fp16"


def test_auto_on_cpu_follows_the_bf16_instructions(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(rt.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert rt.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert rt.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx512f", "avx2"}))
    assert rt.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert rt.resolve_precision("auto", cpu) == "fp32"


@pytest.mark.parametrize("bf16,capability,expected", [
    (True, (8, 0), "bf16"), (False, (7, 5), "fp16"), (False, (6, 1), "fp32")])
def test_auto_on_cuda_by_generation(monkeypatch, bf16, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert rt.auto_precision(torch.device("cuda")) == expected


def test_auto_on_mps_is_fp32():
    assert rt.auto_precision(torch.device("mps")) == "fp32"


def test_cpu_flags_reads_proc_cpuinfo():
    flags = rt.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert "fpu" in flags or "fp" in flags  # x86 / arm always report these
    assert isinstance(flags, frozenset)


# ----------------------------------------------------------------------------- mechanics


def test_keep_float32_inside_autocast_keeps_names():
    layer = nn.Linear(4, 3)
    keys = list(layer.state_dict())
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        rt.keep_float32(layer)
        rt.keep_float32(layer)  # idempotent
        out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, nn.functional.linear(x.bfloat16().float(), layer.weight,
                                                         layer.bias))
    assert list(layer.state_dict()) == keys


class _ConvBn(nn.Module):
    def __init__(self, reuse: bool = False) -> None:
        super().__init__()
        self.reuse = reuse
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                                   nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        out = self.block(self.bn(y))
        return {"pred_masks": out + y if self.reuse else out}


def _trained_stats(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.1, 3)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def test_fold_batchnorm_merges_pairs_in_a_copy_that_shares_the_rest():
    model = _trained_stats(_ConvBn())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    folded = rt.fold_batchnorm(model, x)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x)["pred_masks"], model(x)["pred_masks"],
                                   rtol=1e-5, atol=1e-5)
    # The original is untouched and still has its norms.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_fold_batchnorm_leaves_a_conv_whose_output_is_reused():
    model = _trained_stats(_ConvBn(reuse=True))
    x = torch.randn(1, 3, 8, 8)
    assert ("conv", "bn") in rt._conv_bn_pairs(model, x)
    folded = rt.fold_batchnorm(model, x)  # folding `conv` would change `out + y`: refused
    assert folded is model


def test_reduced_precision_keeps_the_callers_module_intact(stand_ins):
    from s3od import load_model

    path, _ = stand_ins["dinov3"]
    model = load_model(path)
    keys = list(model.state_dict())
    remover = BackgroundRemoval.from_model(model, image_size=64, device="cpu", precision="bf16")
    assert remover.model is model
    assert list(model.state_dict()) == keys
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert remover.runtime.precision == "bf16"


def test_repr_and_options_are_reported(stand_ins):
    path, _ = stand_ins["lite"]
    remover = BackgroundRemoval(path, image_size=64, device="cpu", precision="bf16",
                                channels_last=True)
    assert remover.runtime == rt.RuntimeOptions("bf16", True, False)
    assert "bf16+channels_last" in repr(remover)


def test_compile_needs_a_compiler_on_cpu(monkeypatch):
    monkeypatch.setattr(rt.shutil, "which", lambda name: None)
    with pytest.raises(rt.MissingDependencyError, match="C\\+\\+ compiler"):
        rt.prepare_model(nn.Conv2d(3, 3, 1), torch.device("cpu"), compile=True)


@pytest.mark.slow
def test_compiled_model_matches_eager(stand_ins):
    path, _ = stand_ins["lite"]
    photos = _photos(2)
    eager = BackgroundRemoval(path, image_size=128, device="cpu", precision="fp32")
    compiled = BackgroundRemoval(path, image_size=128, device="cpu", precision="fp32",
                                 compile=True)
    for (a, _), (b, _) in zip(eager.predict_arrays(photos), compiled.predict_arrays(photos),
                              strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert compiled._forward.seconds  # the compile time was recorded


@pytest.mark.gpu  # part of the GPU suite (docs/gpu.md): pytest -m gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16"])
def test_cuda_precisions_agree_with_fp32(stand_ins, precision):
    path, kind = stand_ins["lite"]
    photos = _photos()
    reference = BackgroundRemoval(path, image_size=SIZE, device="cuda",
                                  precision="fp32").predict_arrays(photos)
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    result = BackgroundRemoval(path, image_size=SIZE, device="cuda",
                               precision=precision).predict_arrays(photos)
    min_iou, max_mean_diff, _ = _agreement(reference, result)
    assert min_iou >= AGREEMENT[kind][0] and max_mean_diff <= AGREEMENT[kind][1]


def test_cli_precision_flag(stand_ins, tmp_path):
    from typer.testing import CliRunner

    from s3od.cli import app

    path, _ = stand_ins["lite"]
    sample = REPO / "assets" / "samples" / "cat.jpg"
    runner = CliRunner()
    bad = runner.invoke(app, ["remove", str(sample), "-o", str(tmp_path / "x.png"),
                              "--model", str(path), "--precision", "int4"])
    assert bad.exit_code != 0 and "precision must be one of" in bad.output
    assert not (tmp_path / "x.png").exists()
    ok = runner.invoke(app, ["remove", str(sample), "-o", str(tmp_path / "cat.png"),
                             "--model", str(path), "--image-size", "64", "--precision", "bf16"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "cat.png").is_file()
    assert "bf16" in ok.output


# ----------------------------------------------------------------------------- pre-processing


def test_resize_twins_agree_and_match_opencv_when_downscaling():
    """The row-skipping resize must stay bit-exact: torch == numpy everywhere, == OpenCV on
    downscales (the case the row selection changes)."""
    from s3od.transforms import resize_uint8_linear, resize_uint8_linear_array

    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(2, 400, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 400, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a = resize_uint8_linear(torch.from_numpy(image), out_h, out_w).numpy()
        b = resize_uint8_linear_array(image, out_h, out_w)
        np.testing.assert_array_equal(a, b)
        if out_h <= h and out_w <= w:
            np.testing.assert_array_equal(
                a, cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR))
