"""How a model runs, not what it computes: precision, memory format, ``torch.compile``.

The predictor calls :func:`prepare_model` once and runs every forward pass inside
:func:`autocast`. Reduced precision goes through autocast rather than casting the weights, so
layer norms and softmax statistics stay in float32 (autocast's own op lists); :func:`keep_float32`
pins the IoU head and the layers that output the final logits; and batch norms are folded into
the convolutions before them (:func:`fold_batchnorm`). What the speed-ups cost
in accuracy is measured by ``benchmarks/speed.py`` and bounded by ``tests/test_runtime.py``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from s3od.errors import MissingDependencyError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
}
# Sub-modules kept in float32 under autocast when the model has them:
# - the layers that see raw pixels: bf16 keeps 8 bits of mantissa, about one grey level, and
#   the lite encoder's high-resolution stages amplify that. Measured on the shipped s3od-lite
#   at 512 px (12 photos): all-bf16 masks agree with fp32 at IoU >= 0.964; with these stages in
#   fp32, >= 0.989, for 5% more CPU time. The ViT's patch embedding is one cheap convolution;
# - the IoU head (tiny, and it ranks the candidates) and the last 1x1 convolution of every mask
#   head (it makes the logits).
FLOAT32_MODULES: tuple[str, ...] = (
    "encoder.embeddings.patch_embeddings",
    "encoder.stem",
    "encoder.stages.0",
    "encoder.stages.1",
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


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` names (not the current one) computes bf16 natively.

    ``torch.cuda.is_bf16_supported()`` answers for the *current* device, which is ``cuda:0``
    unless someone switched it: on a machine mixing GPU generations ``cuda:1`` would get the
    answer of ``cuda:0``. ROCm GPUs all have bf16.
    """
    if torch.version.hip:
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def auto_precision(device: torch.device) -> str:
    """The fastest precision that keeps masks close to float32 on ``device``.

    CUDA: bf16 where the GPU has it natively (Ampere and newer), fp16 on Volta/Turing tensor
    cores, fp32 before that. CPU: bf16 with AMX/AVX512-BF16, else fp32. Others (MPS): fp32.
    """
    if device.type == "cuda":
        if cuda_has_native_bf16(device):
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

    Measured on CPU by ``benchmarks/speed.py``: it never lost (1.1-1.8x). MPS is
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
        args = _to_float32(args)
        device_type = next((a.device.type for a in _tensors(args)), "cpu")
        with torch.autocast(device_type, enabled=False):
            return inner(*args, **kwargs)

    module.forward = forward
    module._s3od_float32 = True  # type: ignore[assignment]


def _to_float32(value: Any) -> Any:
    """Floating tensors (also inside lists/tuples, as the decoder takes them) -> float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


# ----------------------------------------------------------------------------- batch norm


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batch norm) names where the norm directly consumes the convolution's output.

    Found by running ``example`` once and matching tensors, so it follows the real data flow
    of any model instead of guessing from names. Modules called more than once are skipped.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    seen: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def on_conv(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            seen[name] = seen.get(name, 0) + 1
            produced[id(out)] = (name, out)  # holding `out` keeps its id unique
        return hook

    def on_norm(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
            seen[name] = seen.get(name, 0) + 1
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                pairs.append((source[0], name))
        return hook

    handles = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(on_conv(name)))
        elif type(module) is nn.BatchNorm2d and module.running_var is not None:
            # (a norm without running statistics normalises by the batch: nothing to fold)
            handles.append(module.register_forward_pre_hook(on_norm(name)))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    convs = [c for c, _ in pairs]
    return [(c, b) for c, b in pairs
            if seen[c] == 1 and seen[b] == 1 and convs.count(c) == 1]


def _tf32_switches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, value that means "full float32") for cuDNN convolutions and cuBLAS
    matrix products: the per-operation ``fp32_precision`` settings where torch has them
    (2.9+), the older ``allow_tf32`` flags before."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 convolutions and matrix products without TF32 inside the block.

    On Ampere and newer GPUs cuDNN runs float32 convolutions in TF32 by default (10 bits of
    mantissa instead of 23), so two float32 models that agree exactly differ by TF32 rounding
    there. The previous settings come back on exit. No effect on CPU.
    """
    saved = []
    try:
        for owner, name, exact in _tf32_switches():
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, exact)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _merge(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the convolution before it (new tensors, not in place).

    In fp32 this only saves a pass over memory. In bf16 it matters for accuracy: the
    convolution would otherwise round its un-centred output to 8 bits of mantissa before the
    norm subtracts a mean that can be far larger than the spread, losing most of the signal.
    """
    mean, var = norm.running_mean, norm.running_var
    assert mean is not None and var is not None  # _conv_bn_pairs keeps tracked norms only
    scale = norm.weight.detach().float() / torch.sqrt(var.float() + norm.eps)
    weight = conv.weight.detach().float() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - mean.float()) * scale + norm.bias.detach().float()
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with ``model``.

    Costs almost no memory; changes to the copy's structure (a swapped sub-module, a wrapped
    ``forward``) do not reach ``model``.
    """
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An inference copy of ``model`` with each conv -> batch-norm pair merged into one conv.

    The copy shares every tensor it does not change with ``model`` (only the merged
    convolutions get new weights), so it costs almost no memory, and ``model`` itself is left
    untouched. The copy is checked against ``model`` on ``example``; if they disagree (a
    convolution output that is also used elsewhere), ``model`` is returned unchanged. The
    check runs in full float32 (:func:`full_float32`): with the TF32 convolutions CUDA uses by
    default, rounding alone put the shipped s3od-lite over the tolerance.
    """
    pairs = _conv_bn_pairs(model, example)
    if not pairs:
        return model
    fused = shared_copy(model)
    for conv_name, norm_name in pairs:
        _merge(cast(nn.Conv2d, fused.get_submodule(conv_name)),
               cast(nn.BatchNorm2d, fused.get_submodule(norm_name)))
        parent, _, child = norm_name.rpartition(".")
        setattr(fused.get_submodule(parent), child, nn.Identity())
    with torch.inference_mode(), full_float32():
        expected, got = model(example), fused(example)
    ref, out = _first_tensor(expected), _first_tensor(got)
    tolerance = 1e-3 * (1.0 + float(ref.abs().max()))
    if out.shape != ref.shape or float((out - ref).abs().max()) > tolerance:
        log.warning("batch-norm folding changed the outputs; running the model unfolded")
        return model
    return fused


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, dict):
        output = output.get("pred_masks", next(iter(output.values())))
    return next(_tensors(output)).float()


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


def use_cudnn_autotuner(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape.

    Inference inputs are letterboxed to one side, so only the batch size varies: a handful of
    shapes, each tuned on its first batch, then the fastest kernels for the rest of the run.
    The setting is process-wide (``torch.backends.cudnn.benchmark``); CPU runs are untouched.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def prepare_model(
    model: nn.Module,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
) -> tuple[nn.Module | Callable[..., Any], RuntimeOptions]:
    """Put ``model`` on ``device`` in eval mode, set up precision/memory format/compilation.

    Args:
        model: any module following the s3od forward contract. Moved to ``device`` and to
            channels_last in place; reduced precision runs a batch-norm-folded copy of it that
            shares its tensors (:func:`fold_batchnorm`).
        device: where it runs.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        channels_last: ``None`` decides per device and model (:func:`auto_channels_last`).
        compile: wrap in ``torch.compile``; the first forward of each new batch shape compiles.

    Returns:
        The callable to run (the module, or its compiled wrapper) and the options in effect.
    """
    precision = resolve_precision(precision, device)
    use_cudnn_autotuner(device)
    model = model.to(device).eval()
    if channels_last is None:
        channels_last = auto_channels_last(device, model)
    if channels_last:
        # Module.to takes memory_format at run time; torch's stubs leave it out.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if precision != "fp32":
        side = 4 * int(getattr(model, "size_multiple", 32))
        example = torch.randn(1, 3, side, side, device=device)
        folded = fold_batchnorm(model, to_memory_format(example, channels_last))
        model = folded if folded is not model else shared_copy(model)
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
