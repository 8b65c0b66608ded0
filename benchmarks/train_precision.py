"""What ``backend.precision=bf16-mixed`` changes in training, against the default fp32.

    python benchmarks/train_precision.py [--steps 30] [--size 256] [--batch 4] [--device cuda]

Two runs from the same start (the shipped s3od-lite weights, or the ImageNet-free random init
when they are absent) on the same batches of real pairs from ../shared/data, in the same order:
one in float32, one under ``torch.autocast(bfloat16)`` with float32 weights and optimizer state,
which is what Lightning's ``bf16-mixed`` does around each training step. Reported per
precision: the training loss at every step (and the largest relative gap to fp32), the IoU@0.5
of both trained models on held-out pairs (evaluated in fp32, so only the training differs), the
median seconds per step after the first, and on CUDA the peak GPU memory.

Augmentation is off (``transform_mode=test``) so that both runs see identical pixels; the
difference is precision alone. Numbers depend on the machine; docs/training.md quotes a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BUNDLED_LITE, SHARED_DATA, machine_description, markdown_table


def _batches(size: int, batch: int, steps: int, held_out: int):
    from synth_sod.model_training.data import MaskDataset, scan_folder

    sources = [scan_folder(SHARED_DATA / name) for name in ("sod-bsds300", "davis2016")]
    data = MaskDataset(sources, size, "test")
    n = len(data)
    order = torch.randperm(n - held_out, generator=torch.Generator().manual_seed(0)).tolist()
    train = []
    for step in range(steps):
        idx = [order[(step * batch + k) % len(order)] for k in range(batch)]
        items = [data[i] for i in idx]
        train.append({"images": torch.stack([it["images"] for it in items]).float(),
                      "masks": torch.stack([it["masks"] for it in items]).float()})
    evaluation = [data[i] for i in range(n - held_out, n)]
    return train, evaluation


def _module(config: dict):
    from s3od.hub import load_checkpoint
    from synth_sod.model_training.lightning_module import SegmentationLightningModule

    torch.manual_seed(0)
    state = None
    if BUNDLED_LITE.is_file():  # the shipped model's own constructor arguments and weights
        state, _, params = load_checkpoint(BUNDLED_LITE)
        config = {**config, "model": {**config["model"], "params": params}}
    module = SegmentationLightningModule(config)
    if state is not None:
        module.model.load_state_dict({k: v.float() for k, v in state.items()})
    return module


def _run(config: dict, precision: str, train: list, evaluation: list, device: torch.device):
    from synth_sod.model_training.lightning_module import best_mask_index, mask_metrics

    module = _module(config).to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    losses, seconds = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for batch in train:
        batch = {k: v.to(device) for k, v in batch.items()}
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=precision == "bf16-mixed"):
            loss, _ = module._step(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None
    module.eval()
    ious = []
    with torch.no_grad():
        for item in evaluation:
            out = module({"images": item["images"][None].float().to(device)})
            idx = best_mask_index(out)
            probs = torch.sigmoid(out["pred_masks"][torch.arange(1, device=device), idx].float())
            target = item["masks"][None].to(device)
            if probs.shape[-2:] != target.shape[-2:]:
                probs = torch.nn.functional.interpolate(probs[:, None], size=target.shape[-2:],
                                                        mode="bilinear")[:, 0]
            ious.append(float(mask_metrics(probs, target)["iou"].mean()))
    return {"precision": precision, "losses": losses,
            "s_per_step": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "held_out_iou": sum(ious) / len(ious), "peak_gpu_mib": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import synth_sod.model_training.train  # noqa: F401  (config resolvers)

    with initialize_config_module("synth_sod.model_training.config", version_base=None):
        cfg = compose("train", overrides=["model=lite", "dataset=folders", "dataset.datasets=[a]",
                                          f"optimizer.lr={args.lr}", "data_dir=/data"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["model"]["pretrained"] = False
    device = torch.device(args.device)
    train, evaluation = _batches(args.size, args.batch, args.steps, args.held_out)
    runs = [_run(config, p, train, evaluation, device) for p in ("32", "bf16-mixed")]
    fp32 = runs[0]["losses"]
    rows = []
    for run in runs:
        gaps = [abs(a - b) / abs(a) for a, b in zip(fp32, run["losses"], strict=True)]
        rows.append({"precision": run["precision"], "first loss": run["losses"][0],
                     "last loss": run["losses"][-1], "max rel. loss gap to fp32": max(gaps),
                     "held-out IoU@0.5": run["held_out_iou"], "s/step": run["s_per_step"],
                     "peak GPU MiB": run["peak_gpu_mib"] or ""})
    print("# bf16-mixed vs fp32 training (benchmarks/train_precision.py)\n")
    for k, v in machine_description().items():
        print(f"- {k}: {v}")
    start = "shipped weights" if BUNDLED_LITE.is_file() else "random init"
    print(f"- device {device}; s3od-lite from {start}; {args.steps} steps, batch {args.batch}, "
          f"{args.size} px, lr {args.lr}; held-out: {args.held_out} pairs\n")
    print(markdown_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
