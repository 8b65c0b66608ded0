"""How a model runs, not what it computes: precision, memory format, ``torch.compile``.

The predictor calls :func:`prepare_model` once and runs every forward pass inside
:func:`autocast`. Reduced precision goes through autocast rather than casting the weights, so
layer norms, softmax statistics and the IoU head stay in float32 (autocast's own op lists), and
:func:`keep_float32` pins the layers whose outputs are the final logits. What the speed-ups cost
in accuracy is measured by ``benchmarks/speed.py`` and bounded by ``tests/test_runtime.py``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from s3od.errors import MissingDependencyError

log = logging.getLogger("s3od")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
}
# Sub-modules kept in float32 under autocast when the model has them: the IoU head (tiny, and it
# ranks the candidates) and the last 1x1 convolution of every mask head (it makes the logits).
FLOAT32_MODULES: tuple[str, ...] = (
    "seg_head.classifier_head",
    *(f"seg_head.mask_head.mask_heads.{i}.2" for i in range(8)),
)
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere: then nothing is assumed)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AMX or AVX512-BF16).

    Without them oneDNN emulates bf16 and it is slower than float32, so ``auto`` keeps fp32.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX512", "AMX"):
        return False
    return bool(cpu_flags() & set(_CPU_BF16_FLAGS))


def auto_precision(device: torch.device) -> str:
    """The fastest precision that keeps masks close to float32 on ``device``.

    CUDA: bf16 where the GPU has it natively (Ampere and newer), fp16 on Volta/Turing tensor
    cores, fp32 before that. CPU: bf16 with AMX/AVX512-BF16, else fp32. Others (MPS): fp32.
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        major, _ = torch.cuda.get_device_capability(device)
        return "fp16" if major >= 7 else "fp32"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """Validate ``precision`` and replace ``auto`` by the choice for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return auto_precision(device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("bf16 requested but this CPU has no bf16 instructions: it will be emulated "
                    "and likely slower than fp32")
    if precision == "fp16" and device.type == "cpu":
        log.warning("fp16 on CPU is emulated on most processors and slower than fp32; "
                    "prefer bf16 or fp32")
    return precision


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has 2-D convolutions, the layers channels_last speeds up."""
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def auto_channels_last(device: torch.device, model: nn.Module) -> bool:
    """channels_last for convolutional models on CPU (oneDNN) and CUDA (cuDNN).

    Measured on CPU by ``benchmarks/speed.py``: it never lost and won up to 2x in bf16. MPS is
    left alone (its NHWC support varies between macOS releases).
    """
    return device.type in ("cpu", "cuda") and has_convolutions(model)


def keep_float32(module: nn.Module) -> None:
    """Run ``module`` in float32 even inside autocast (inputs are upcast first).

    Wraps the instance's ``forward`` in place, so parameter names, ``state_dict`` and hooks are
    untouched. Calling it twice is harmless.
    """
    if getattr(module, "_s3od_float32", False):
        return
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        with torch.autocast(device_type, enabled=False):
            return inner(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]
    module._s3od_float32 = True  # type: ignore[assignment]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` on ``device``; a no-op for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=DTYPES[precision]):
        yield


@dataclass(frozen=True)
class RuntimeOptions:
    """What :func:`prepare_model` settled on (shown by the CLI, recorded by benchmarks)."""

    precision: str
    channels_last: bool
    compiled: bool

    def describe(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compiled:
            parts.append("compiled")
        return "+".join(parts)


def prepare_model(
    model: nn.Module,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
) -> tuple[nn.Module | Callable[..., Any], RuntimeOptions]:
    """Put ``model`` on ``device`` in eval mode, set up precision/memory format/compilation.

    Args:
        model: any module following the s3od forward contract; modified in place.
        device: where it runs.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        channels_last: ``None`` decides per device and model (:func:`auto_channels_last`).
        compile: wrap in ``torch.compile``; the first forward of each new batch shape compiles.

    Returns:
        The callable to run (the module, or its compiled wrapper) and the options in effect.
    """
    precision = resolve_precision(precision, device)
    model = model.to(device).eval()
    if channels_last is None:
        channels_last = auto_channels_last(device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if precision != "fp32":
        for name in FLOAT32_MODULES:
            with contextlib.suppress(AttributeError):
                keep_float32(model.get_submodule(name))
    runner: nn.Module | Callable[..., Any] = model
    if compile:
        if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise MissingDependencyError(
                "compile=True on CPU needs a C++ compiler (g++ or clang++) on PATH")
        runner = CompileTimer(torch.compile(model, dynamic=False))
    return runner, RuntimeOptions(precision, bool(channels_last), compile)


def to_memory_format(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The input batch in the layout the model's weights use."""
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


class CompileTimer:
    """Calls a ``torch.compile``'d model and records how long each new input shape took.

    Compilation happens lazily on the first call per shape; its cost is worth knowing (it is
    paid again in every new process), so it is logged and kept in :attr:`seconds`.
    """

    def __init__(self, compiled: Callable[[torch.Tensor], Any]) -> None:
        self.compiled = compiled
        self.seconds: dict[tuple[int, ...], float] = {}

    def __call__(self, batch: torch.Tensor) -> Any:
        shape = tuple(batch.shape)
        if shape in self.seconds:
            return self.compiled(batch)
        start = time.perf_counter()
        out = self.compiled(batch)
        self.seconds[shape] = time.perf_counter() - start
        log.info("torch.compile: first pass for input %s took %.1f s", shape, self.seconds[shape])
        return out
