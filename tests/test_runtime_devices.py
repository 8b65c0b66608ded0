"""CUDA decisions of s3od.runtime, checked on CPU: the device a question is asked about, and
the batch-norm folding check under the TF32 convolutions CUDA uses by default (emulated).

What only a GPU can show (real cuDNN TF32, real bf16 kernels) is in tests/test_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s3od import runtime as rt

from .conftest import REPO

BUNDLED_LITE = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"


# --------------------------------------------------------------------------- which GPU


class FakeGPUs:
    """Two GPUs of different generations; ``torch.cuda`` calls answer per device."""

    def __init__(self, capabilities: dict[int, tuple[int, int]], current: int = 0) -> None:
        self.capabilities, self.current = capabilities, current

    def index(self, device) -> int:
        if device is None:
            return self.current
        device = torch.device(device) if not isinstance(device, int) else device
        if isinstance(device, int):
            return device
        return self.current if device.index is None else device.index

    def get_device_capability(self, device=None):
        return self.capabilities[self.index(device)]

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        # torch's own answer: about the *current* device only
        return self.capabilities[self.current][0] >= 8


@pytest.mark.parametrize("device,expected", [
    ("cuda:0", "fp16"), ("cuda:1", "bf16"), ("cuda", "fp16")])
def test_auto_precision_asks_about_the_requested_gpu(monkeypatch, device, expected):
    gpus = FakeGPUs({0: (7, 5), 1: (8, 6)}, current=0)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", gpus.get_device_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpus.is_bf16_supported)
    assert rt.auto_precision(torch.device(device)) == expected


def test_auto_precision_on_the_second_gpu_when_the_first_is_newer(monkeypatch):
    gpus = FakeGPUs({0: (9, 0), 1: (7, 0)}, current=0)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", gpus.get_device_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpus.is_bf16_supported)
    assert rt.auto_precision(torch.device("cuda:1")) == "fp16"  # a V100 next to an H100
    assert rt.auto_precision(torch.device("cuda:0")) == "bf16"


# --------------------------------------------------------------------------- TF32


def _conv_tf32_enabled() -> bool:
    """What cuDNN would read before an fp32 convolution (TF32 is its default)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the nearest TF32 value (10 mantissa bits, ties away from zero), as float32."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.fixture
def emulated_tf32_convolutions(monkeypatch):
    """Every float32 Conv2d rounds its input and weights to TF32 while cuDNN's flag says so
    (products are then exact and accumulate in float32, as on the tensor cores)."""
    original = nn.Conv2d._conv_forward

    def conv_forward(self, input, weight, bias):
        if _conv_tf32_enabled() and input.dtype == torch.float32:
            input, weight = round_to_tf32(input), round_to_tf32(weight)
        return original(self, input, weight, bias)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", conv_forward)
    assert _conv_tf32_enabled(), "torch's default for cuDNN convolutions is TF32"


def test_round_to_tf32_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0, 1.0 + 2**-10, 1.0 + 2**-11, 1.0 + 2**-12, -3.0 - 2**-10])
    assert round_to_tf32(x).tolist() == [1.0, 1.0 + 2**-10, 1.0 + 2**-10, 1.0, -3.0 - 2**-9]


def test_full_float32_turns_tf32_off_and_restores_it():
    before = [getattr(o, n) for o, n, _ in rt._tf32_switches()]
    with rt.full_float32():
        assert not _conv_tf32_enabled()
        assert [getattr(o, n) for o, n, _ in rt._tf32_switches()] == [
            v for _, _, v in rt._tf32_switches()]
    assert [getattr(o, n) for o, n, _ in rt._tf32_switches()] == before
    with pytest.raises(RuntimeError), rt.full_float32():
        raise RuntimeError("restored on errors too")
    assert [getattr(o, n) for o, n, _ in rt._tf32_switches()] == before


@pytest.mark.skipif(not BUNDLED_LITE.is_file(), reason="needs the shipped s3od-lite weights")
@pytest.mark.parametrize("seed", [0, 1])
def test_folding_check_of_the_shipped_model_survives_tf32(emulated_tf32_convolutions, seed):
    """Under (emulated) TF32 the folded and unfolded s3od-lite differ by rounding alone, by
    more than the check's tolerance; the check must compare in full float32 and keep the fold."""
    from s3od.hub import build_from_checkpoint, resolve

    model = build_from_checkpoint(resolve(str(BUNDLED_LITE))).eval()
    side = 4 * int(model.size_multiple)
    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(seed))
    # the premise: TF32 rounding alone moves the outputs past the tolerance
    fused = rt.fold_batchnorm(model, example)
    assert fused is not model, "folding fell back to the unfolded model under TF32"
    with torch.inference_mode():
        ref = model(example)["pred_masks"]
        tf32_diff = float((fused(example)["pred_masks"] - ref).abs().max())
    tolerance = 1e-3 * (1.0 + float(ref.abs().max()))
    assert tf32_diff > tolerance, "emulation too weak to show anything"


# --------------------------------------------------------------------------- cuDNN autotuner


def test_cudnn_autotuner_is_turned_on_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    rt.use_cudnn_autotuner(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    rt.use_cudnn_autotuner(torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark is True


def test_prepare_model_sets_up_the_autotuner_for_its_device(monkeypatch):
    seen = []
    monkeypatch.setattr(rt, "use_cudnn_autotuner", seen.append)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    rt.prepare_model(model, torch.device("cpu"))
    assert seen == [torch.device("cpu")]
