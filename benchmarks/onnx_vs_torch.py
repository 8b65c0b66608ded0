"""ONNX Runtime vs PyTorch on this CPU, side by side, same images, same thread count.

For each model: export with ``s3od.export.export_onnx`` (timed), then alternate PyTorch and
ONNX Runtime calls on the same batch of real photos, and report medians per image for the
network alone (``model(batch)`` vs ``session.run``) and end to end (``predict_arrays``:
letterbox, forward, sigmoid, unletterbox; torch transforms vs their numpy twins), plus the max
abs difference of the mask probabilities.

Two clocks: wall time, and the process's CPU time. On a machine shared with other jobs the wall
time of both runtimes is inflated by however much CPU they got; with ``--threads 1`` (no
spinning worker threads) CPU seconds are the work each runtime did and stay comparable under
load. Alternating the calls spreads background load evenly over both runtimes.

Weights are random but calibrated on the photos (batch-norm statistics re-estimated, mask
logits rescaled to a trained model's spread; see tests/onnx_tiny.py), so speed is the published
architecture's and the agreement check is not flattered by constant masks.

    python benchmarks/onnx_vs_torch.py --threads 1                 # lite@512, dinov3-b@512
    python benchmarks/onnx_vs_torch.py --models dinov3-b --sizes 1024 --batch 1 --reps 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.onnx_tiny import calibrate  # noqa: E402

from s3od.export import OnnxBackgroundRemoval, export_onnx  # noqa: E402
from s3od.imageio import load_image  # noqa: E402
from s3od.modeling import build_model  # noqa: E402
from s3od.predictor import BackgroundRemoval  # noqa: E402
from s3od.registry import LITE_CONFIG  # noqa: E402
from s3od.runtime import to_memory_format  # noqa: E402
from s3od.transforms import preprocess_arrays  # noqa: E402

MODELS = {
    "lite": ("lite", dict(LITE_CONFIG)),
    "dinov3-b": ("dpt_dinov3", {"encoder_config": "dinov3_vitb16", "num_masks": 3}),
}
SHARED = REPO.parent / "shared" / "data"


def photos(count: int) -> list[np.ndarray]:
    """Real photos of varied sizes: ../shared when present, else the committed samples."""
    paths = []
    for source in ("davis2016", "sod-bsds300", "s3od-fixture"):
        paths += sorted((SHARED / source / "images").glob("*.jpg"))[:count]
    paths = paths or sorted((REPO / "assets" / "samples").glob("*.jpg"))
    return [load_image(p) for p in paths[::max(1, len(paths) // count)][:count]]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} logical cores, load average {load}; Python "
            f"{platform.python_version()}, torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}")


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(key: str, size: int, batch: int, reps: int, threads: int, folder: Path) -> dict:
    arch, config = MODELS[key]
    torch.manual_seed(0)
    images = photos(max(batch, 4))
    model = calibrate(build_model(arch, **config), images, size)
    path = folder / f"{key}-{size}.onnx"
    # The agreement is measured below on the benchmark batch; skip the exporter's own check.
    report = export_onnx(model, path, image_size=size, verify=False)
    pt = BackgroundRemoval.from_model(model, image_size=size, device="cpu")
    ort = OnnxBackgroundRemoval(path, threads=threads)
    rgbs = images[:batch]
    tensor = torch.from_numpy(preprocess_arrays(rgbs, size)[0])
    array = tensor.numpy()

    def torch_net() -> None:  # the predictor's own forward (channels_last where it helps)
        with torch.inference_mode():
            pt._forward(to_memory_format(tensor, pt.runtime.channels_last))

    def ort_net() -> None:
        ort.session.run(None, {"images": array})

    for fn in (torch_net, ort_net):  # warm-up: oneDNN primitives, ORT arena
        fn()
    calls = {"net_torch": torch_net, "net_ort": ort_net,
             "e2e_torch": lambda: pt.predict_arrays(rgbs),
             "e2e_ort": lambda: ort.predict_arrays(rgbs)}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(reps):  # alternate so that background load hits both alike
        for name, fn in calls.items():
            samples[name].append(timed(fn))
    diff = max(float(np.abs(a[0] - b[0]).max())
               for a, b in zip(ort.predict_arrays(rgbs), pt.predict_arrays(rgbs), strict=True))
    out = {"model": key, "size": size, "batch": batch, "export_s": report.seconds,
           "onnx_mib": report.size_bytes / 2**20, "max_abs_diff": diff}
    for name, values in samples.items():
        out[f"{name}_wall"] = statistics.median(v[0] for v in values) / batch
        out[f"{name}_cpu"] = statistics.median(v[1] for v in values) / batch
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lite", "dinov3-b"], choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"threads: {args.threads} (torch.set_num_threads and ORT intra_op_num_threads), "
          f"batch {args.batch}, {args.reps} alternating repetitions, median seconds per "
          "image\n")
    header = ("| model | input | batch | clock | network torch | network ORT | speed-up | "
              "end-to-end torch | end-to-end ORT | speed-up | max abs diff | export s | "
              "ONNX MiB |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            for size in args.sizes:
                r = bench(key, size, args.batch, args.reps, args.threads, Path(tmp))
                for clock in ("wall", "cpu"):
                    nt, no = r[f"net_torch_{clock}"], r[f"net_ort_{clock}"]
                    et, eo = r[f"e2e_torch_{clock}"], r[f"e2e_ort_{clock}"]
                    print(f"| {r['model']} | {r['size']} | {r['batch']} | {clock} | {nt:.3f} | "
                          f"{no:.3f} | {nt / no:.2f}x | {et:.3f} | {eo:.3f} | {et / eo:.2f}x | "
                          f"{r['max_abs_diff']:.1e} | {r['export_s']:.0f} | "
                          f"{r['onnx_mib']:.0f} |", flush=True)

if __name__ == "__main__":
    main()
