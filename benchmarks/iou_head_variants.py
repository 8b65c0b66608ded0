"""Which IoU head ranks s3od-lite's candidates best on held-out photos (model card, v4 table).

The masks are fixed (a released network, run once); only the head changes, so the network's
outputs are computed once and cached, and each head variant trains in seconds on the cache:

1. ``cache``: run the network (``--weights``, default the v3 release from git history) over
   ``--passes`` augmented passes of the training set of ``dataset=lite_distill`` and once over
   its validation split (the 70 held-out sod-bsds300 ids, as the validation loader feeds them),
   keeping each candidate's probabilities at the decoder's resolution, the 8 map statistics of
   :class:`s3od.modeling.heads.MaskStatisticsIoUHead`, the decoder features and the IoU at 0.5
   of every candidate.
2. ``train``: fit each requested head on the cached training samples (AdamW, one-cycle LR,
   horizontal flips) and report, on the held-out split, the correlation of predicted and true
   IoU, how often the pick is the truly best candidate (ties count), and the IoU of the pick.

Example (this machine: 2-core AMD EPYC, about 8 min for the cache, seconds to minutes a head)::

    git show 8510bd6:src/s3od/weights/s3od-lite.safetensors > /tmp/v3.safetensors
    S3OD_PSEUDO_DIR=runs/distill/parquet python benchmarks/iou_head_variants.py cache \\
        --weights /tmp/v3.safetensors --shared ../shared --out /tmp/heads
    python benchmarks/iou_head_variants.py train --cache /tmp/heads \\
        --variant stats --variant stats+rank --variant stats+context --variant features \\
        --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


# ----------------------------------------------------------------------------- cache


def cache(args: argparse.Namespace) -> None:
    from hydra import compose, initialize_config_module
    from safetensors import safe_open
    from safetensors.torch import load_file

    from s3od.architectures import build_model
    from s3od.modeling.heads import MaskStatisticsIoUHead
    from s3od.transforms import normalize
    from synth_sod.model_training.data import build_datasets, resolve_splits
    from synth_sod.model_training.loss import hard_iou

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with initialize_config_module("synth_sod.model_training.config", version_base=None):
        cfg = compose("train", overrides=["model=lite_v3", "dataset=lite_distill",
                                          f"data_dir={args.shared}"])
    train_set, val_set = build_datasets(cfg.dataset, resolve_splits(cfg.dataset, seed=42))
    with safe_open(str(args.weights), "pt") as f:
        meta = json.loads(f.metadata()["s3od"])
    config = {k: v for k, v in meta["config"].items() if k != "image_size"}
    model = build_model(meta["architecture"], **config)
    model.load_state_dict({k: v.float() for k, v in load_file(str(args.weights)).items()})
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, ds, passes in (("val", val_set, 1), ("train", train_set, args.passes)):
        loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=name == "train",
                                             num_workers=1)
        parts: dict[str, list[torch.Tensor]] = {"features": [], "small": [], "stats": [],
                                                "iou": []}
        start = time.time()
        with torch.inference_mode():
            for _ in range(passes):
                for batch in loader:
                    out = model(normalize(batch["images"]))
                    logits = out["pred_masks"].float()
                    probs = torch.sigmoid(logits)
                    factor = probs.shape[-1] // out["features"].shape[-1]
                    parts["features"].append(out["features"].half())
                    parts["small"].append(F.avg_pool2d(probs, factor).half())
                    parts["stats"].append(MaskStatisticsIoUHead.mask_statistics(probs))
                    parts["iou"].append(hard_iou(logits, batch["masks"]))
        data = {k: torch.cat(v) for k, v in parts.items()}
        torch.save(data, args.out / f"{name}.pt")
        print(f"{name}: {len(data['iou'])} samples in {time.time() - start:.0f} s; "
              f"candidate mean IoU {data['iou'].mean(0).numpy().round(3)}, "
              f"oracle {data['iou'].max(1).values.mean():.3f}", flush=True)


# ----------------------------------------------------------------------------- heads


class StatsHead(nn.Module):
    """The shipped design (8 map statistics + candidate index), optionally with the other
    candidates' statistics as context."""

    def __init__(self, context: bool = False, hidden: int = 32) -> None:
        super().__init__()
        self.context = context
        n = 8 + 3 + (24 if context else 0)
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, small: torch.Tensor,
                stats: torch.Tensor) -> torch.Tensor:
        b = len(stats)
        parts = [stats, torch.eye(3)[None].expand(b, 3, 3)]
        if self.context:
            parts.append(stats.flatten(1)[:, None].expand(b, 3, 24))
        return self.mlp(torch.cat(parts, -1)).squeeze(-1)


class FeatureHead(nn.Module):
    """Decoder features pooled inside and outside each candidate and over the image, plus the
    map statistics and the candidate index."""

    def __init__(self, channels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(3 * hidden + 8 + 3, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, small: torch.Tensor,
                stats: torch.Tensor) -> torch.Tensor:
        x = self.project(features)

        def pool(w: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bkhw,bchw->bkc", w, x) / (w.sum((2, 3))[..., None] + 1e-6)

        b = len(stats)
        glob = x.mean((2, 3))[:, None].expand(b, 3, -1)
        parts = [pool(small), pool(1 - small), glob, stats, torch.eye(3)[None].expand(b, 3, 3)]
        return self.mlp(torch.cat(parts, -1)).squeeze(-1)


VARIANTS = {
    "stats": (lambda: StatsHead(), 0.0),
    "stats+rank": (lambda: StatsHead(), 0.3),
    "stats+context": (lambda: StatsHead(context=True), 0.0),
    "features": (lambda: FeatureHead(), 1.0),
}


def scores_of(head: nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(head(data["features"][i:i + 64].float(),
                                             data["small"][i:i + 64].float(),
                                             data["stats"][i:i + 64]))
                          for i in range(0, len(data["iou"]), 64)])


def report(scores: torch.Tensor, iou: torch.Tensor) -> dict[str, float]:
    rows = torch.arange(len(iou))
    picked = iou[rows, scores.argmax(1)]
    return {"corr": float(np.corrcoef(scores.flatten().numpy(), iou.flatten().numpy())[0, 1]),
            "picks_best": float((picked >= iou.max(1).values).float().mean()),
            "picked_iou": float(picked.mean())}


def train_head(name: str, seed: int, train: dict[str, torch.Tensor], epochs: int,
               lr: float = 1e-3, batch: int = 32) -> nn.Module:
    build, rank_weight = VARIANTS[name]
    torch.manual_seed(seed)
    head = build()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n = len(train["iou"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (n // batch))
    for _ in range(epochs):
        head.train()
        order = torch.randperm(n)
        for i in range(0, n - batch + 1, batch):
            idx = order[i:i + batch]
            feats, small = train["features"][idx].float(), train["small"][idx].float()
            if torch.rand(()) < 0.5:
                feats, small = feats.flip(-1), small.flip(-1)
            target = train["iou"][idx]
            out = head(feats, small, train["stats"][idx])
            loss = F.binary_cross_entropy_with_logits(out, target)
            if rank_weight:
                loss = loss + rank_weight * F.cross_entropy(out, torch.softmax(target / 0.05, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = {name: torch.load(args.cache / f"{name}.pt") for name in ("train", "val")}
    print("| head | seed | held-out correlation | picks the truly best | IoU of the pick |")
    print("|---|--:|--:|--:|--:|")
    for name in args.variant:
        for seed in (int(s) for s in args.seeds.split(",")):
            head = train_head(name, seed, data["train"], args.epochs)
            r = report(scores_of(head, data["val"]), data["val"]["iou"])
            print(f"| {name} | {seed} | {r['corr']:.3f} | {r['picks_best']:.0%} | "
                  f"{r['picked_iou']:.4f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run the network once and cache its outputs")
    c.add_argument("--weights", type=Path, required=True, help="released .safetensors")
    c.add_argument("--shared", type=Path, default=SHARED)
    c.add_argument("--passes", type=int, default=3, help="augmented passes over training")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("train", help="fit head variants on the cache and score them")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--variant", action="append", choices=sorted(VARIANTS), required=True)
    t.add_argument("--seeds", default="0")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cache(args) if args.command == "cache" else train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
