"""What ``image_size`` above 1024 costs for the DINOv3 models, and that it works.

    python benchmarks/dinov3_image_size.py [--config tiny] [--sizes 1024 1536 2048] [--device cpu]

DINOv3 places patches with rotary position embeddings computed from the patch grid, so any
multiple of 16 is accepted without interpolating a learned position table. This script

1. prints the encoder's multiply-accumulates per image for ViT-B/16 and ViT-L/16 from the
   layer shapes (tokens = (size / 16)^2 + 5 special tokens; attention grows with tokens^2),
2. runs one forward pass per size in a fresh process for ``--config`` (``tiny`` = the
   12-layer, 48-wide reference-tiny fixture of ../shared; ``dinov3_vitb16`` or
   ``dinov3_vitl16`` for the real shapes, random weights) and reports wall and CPU seconds and
   peak RSS (or peak CUDA memory with ``--device cuda``), plus the output mask size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine_description, markdown_table, peak_rss_mb, run_worker

SHAPES = {"dinov3_vitb16": (12, 768, 3072), "dinov3_vitl16": (24, 1024, 4096)}


def encoder_macs(size: int, layers: int, width: int, mlp: int) -> tuple[float, float]:
    """(linear, attention) multiply-accumulates of the ViT encoder for one ``size``^2 image."""
    tokens = (size // 16) ** 2 + 5                      # patches + class + 4 registers
    linear = layers * tokens * (4 * width * width + 2 * width * mlp)
    attention = layers * 2 * tokens * tokens * width    # q.k^T and attn.v
    return linear, attention


def _tiny_config() -> dict:
    c = json.loads((REPO.parent / "shared" / "fixtures" / "reference-tiny" / "config.json")
                   .read_text())
    return {"encoder_config": c["encoder_config"], "layer_indices": c["hidden_state_indices"],
            "features": c["model"]["features"], "out_channels": c["model"]["out_channels"],
            "num_masks": c["model"]["num_outputs"], "use_bn": c["model"]["use_bn"],
            "mask_inter_features": c["mask_head_inter_features"],
            "iou_hidden": c["iou_head_hidden"]}


def worker(payload: dict) -> dict:
    import torch

    from s3od.modeling import DPTSegmentation

    torch.set_num_threads(payload["threads"])
    torch.manual_seed(0)
    config = (_tiny_config() if payload["config"] == "tiny"
              else {"encoder_config": payload["config"]})
    device = torch.device(payload["device"])
    model = DPTSegmentation(**config).eval().to(device)
    size = payload["size"]
    x = torch.randn(1, 3, size, size, device=device)
    before = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    res = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
           "mask": "x".join(str(d) for d in out["pred_masks"].shape[-2:]),
           "before_mb": before, "peak_mb": peak_rss_mb()}
    if device.type == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny",
                        choices=["tiny", "dinov3_vitb16", "dinov3_vitl16"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 1536, 2048])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in machine_description().items()))
    rows = []
    for name, (layers, width, mlp) in SHAPES.items():
        base = sum(encoder_macs(1024, layers, width, mlp))
        for size in sorted({512, 1024, 1536, 2048, *args.sizes}):
            linear, attention = encoder_macs(size, layers, width, mlp)
            rows.append({"encoder": name, "image_size": size,
                         "tokens": (size // 16) ** 2 + 5, "GMAC": (linear + attention) / 1e9,
                         "attention share": f"{100 * attention / (linear + attention):.0f} %",
                         "x cost of 1024": (linear + attention) / base})
    print("\n### Encoder multiply-accumulates (analytic)\n")
    print(markdown_table(rows, ["encoder", "image_size", "tokens", "GMAC", "attention share",
                                "x cost of 1024"]))
    measured = []
    for size in args.sizes:
        res = run_worker(Path(__file__), {"config": args.config, "size": size,
                                          "device": args.device, "threads": args.threads},
                         timeout=3600)
        row = {"config": args.config, "image_size": size}
        row.update({k: v for k, v in res.items() if k != "wall_s"} if "error" not in res
                   else {"mask": res["error"]})
        if "error" not in res:
            row["wall_s"] = res["wall_s"]
            row["forward MiB"] = res["peak_mb"] - res["before_mb"]
        measured.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n### One forward pass, {args.config} on {args.device}\n")
    print(markdown_table(measured, ["config", "image_size", "mask", "wall_s", "cpu_s",
                                    "forward MiB", "cuda_peak_mb"]))


if __name__ == "__main__":
    main()
