"""fp32 inference: what inference_mode, SDPA attention and channels_last each buy (issue 2).

s3od-lite and DINOv3-B + DPT, at 512 and 1024, batch 1 and 8; each configuration in its own
process on the same real photos; images/s of preprocess + forward + postprocess (the full
``predict_arrays`` path), CPU seconds per image and peak RSS, side by side:

- ``autograd``: a plain ``model(x)`` call as a user would write it without thinking about
  inference (gradients tracked, eager attention, NCHW);
- ``inference_mode``: the same under ``torch.inference_mode`` (no autograd bookkeeping);
- ``+sdpa``: scaled-dot-product attention instead of the eager softmax(QK^T)V (ViT only);
- ``+channels_last``: NHWC convolutions (what ``BackgroundRemoval(precision="fp32")`` runs).

Reduced precision and compilation are in ``benchmarks/speed.py``.

Example:
    python benchmarks/inference.py --models lite --sizes 512 --batches 1,8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

# Largest batch x pixels run with autograd by default: it keeps every activation for a backward
# pass that never comes (s3od-lite at 1024, batch 8 would hold well over 10 GB).
AUTOGRAD_PIXELS = 8 * 512 * 512
# name -> (grad mode, attention, channels_last)
CONFIGS: dict[str, tuple[str, str, bool]] = {
    "autograd": ("grad", "eager", False),
    "inference_mode": ("inference", "eager", False),
    "+sdpa": ("inference", "sdpa", False),
    "+channels_last": ("inference", "sdpa", True),
}
COLUMNS = ["model", "size", "batch", "config", "img/s", "CPU s/img", "img/CPU-s",
           "x autograd (CPU)", "peak RSS MB", "max |dp| vs +channels_last", "load"]


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint, switch the options, time the predict path on the photos."""
    import contextlib

    import numpy as np
    import torch

    from s3od import load_model
    from s3od.imageio import load_image
    from s3od.transforms import preprocess, unletterbox

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    load_start = os.getloadavg()[0]
    grad, attention, channels_last = CONFIGS[job["config"]]
    model = load_model(job["model_path"]).eval()
    encoder = getattr(model, "encoder", None)
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation(attention)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    size, batch = job["size"], job["batch"]
    arrays = [load_image(p) for p in job["images"]]
    chunks = [arrays[i:i + batch] for i in range(0, len(arrays), batch)]

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        context = torch.inference_mode() if grad == "inference" else contextlib.nullcontext()
        with context:
            x, boxes = preprocess(images, size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            probs = torch.sigmoid(model(x)["pred_masks"].float())
            return [unletterbox(probs[i], box).detach().numpy() for i, box in enumerate(boxes)]

    predict(chunks[0])  # warm-up: oneDNN primitives, allocator
    outputs: list[np.ndarray] = []
    wall = cpu = 0.0
    for chunk in chunks:
        t, c = time.perf_counter(), time.process_time()
        outputs.extend(predict(chunk))
        wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
    result: dict[str, Any] = {
        "img_s": len(arrays) / wall,
        "cpu_s_per_img": cpu / len(arrays),
        "peak_rss_mb": common.peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "load": f"{load_start:.1f}-{os.getloadavg()[0]:.1f}",
    }
    if job.get("save_npz"):
        np.savez(job["save_npz"], *outputs)
    if job.get("reference_npz"):
        ref = np.load(job["reference_npz"])
        result["max_abs_prob"] = max(float(np.abs(ref[f"arr_{i}"] - o).max())
                                     for i, o in enumerate(outputs))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lite,dinov3-b")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--all-autograd", action="store_true",
                        help="also run autograd where it needs many GB")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    if unknown := [c for c in configs if c not in CONFIGS]:
        raise SystemExit(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    machine = common.machine_description()
    images, source = common.quality_images(args.images)
    rows: list[dict[str, Any]] = []
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory(prefix="s3od-inference-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for key in args.models.split(","):
            model_path, weights = common.build_checkpoint(key, work)
            vit = common.model_choice(key).architecture == "dpt_dinov3"
            for size in (int(s) for s in args.sizes.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    reference = Path(tmp) / f"ref-{key}-{size}-{batch}.npz"
                    # The shipped configuration runs first and is the reference for |dp|.
                    order = sorted(configs, key=lambda c: c != "+channels_last")
                    group = {}
                    for name in order:
                        if name == "+sdpa" and not vit:
                            continue
                        if (name == "autograd" and batch * size * size > AUTOGRAD_PIXELS
                                and not args.all_autograd):
                            group[name] = {"error": "skipped: autograd keeps every activation "
                                                    "(many GB here); --all-autograd runs it"}
                            continue
                        job = {"model_path": str(model_path), "size": size, "batch": batch,
                               "config": name, "images": [str(p) for p in images],
                               "threads": args.threads}
                        if name == "+channels_last":
                            job["save_npz"] = str(reference)
                        elif reference.is_file():
                            job["reference_npz"] = str(reference)
                        group[name] = common.run_worker(script, job, args.timeout)
                        print(f"  {key} {size}px b{batch} {name}: "
                              f"{group[name].get('img_s', float('nan')):.3g} img/s "
                              f"{group[name].get('error', '')}", file=sys.stderr)
                    base = group.get("autograd", {})
                    for name in configs:
                        if name not in group:
                            continue
                        res = group[name]
                        row = {"model": key, "size": size, "batch": batch, "config": name,
                               "weights": weights, **res}
                        if "error" in res:
                            skipped = res["error"].startswith("skipped")
                            row["img/s"] = ("" if skipped else "error: ") + res["error"][:80]
                        else:
                            row.update({"img/s": res["img_s"], "CPU s/img": res["cpu_s_per_img"],
                                        "img/CPU-s": 1 / res["cpu_s_per_img"],
                                        "peak RSS MB": res["peak_rss_mb"], "load": res["load"],
                                        "max |dp| vs +channels_last": res.get("max_abs_prob", "")})
                            if base.get("cpu_s_per_img"):
                                row["x autograd (CPU)"] = (base["cpu_s_per_img"]
                                                           / res["cpu_s_per_img"])
                        rows.append(row)
    common.write_report("inference.py", "s3od fp32 inference options", machine, images,
                        source, rows, COLUMNS, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
