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
   ``--sources human`` trains on the human-annotated samples only (not the teacher's
   pseudo-labels); the table then also says which candidate is best how often, per source.

Example (this machine: 2-core AMD EPYC, about 8 min for the cache, seconds to minutes a head)::

    git show 8510bd6:src/s3od/weights/s3od-lite.safetensors > /tmp/v3.safetensors
    S3OD_PSEUDO_DIR=runs/distill/parquet python benchmarks/iou_head_variants.py cache \\
        --weights /tmp/v3.safetensors --shared ../shared --out /tmp/heads
    python benchmarks/iou_head_variants.py train --cache /tmp/heads \\
        --variant stats --variant stats+rank --variant stats+context --variant features \\
        --seeds 0,1,2

The v5 release (384 px) with the image-evidence variant (model card, v5 head experiments)::

    S3OD_PSEUDO_DIR=runs/distill/parquet python benchmarks/iou_head_variants.py cache \
        --weights src/s3od/weights/s3od-lite.safetensors --image-size 384 --passes 2 \
        --out /tmp/heads-v5
    python benchmarks/iou_head_variants.py train --cache /tmp/heads-v5 --variant stats \
        --variant stats+evidence --variant stats+evidence+context --sources all,human \
        --seeds 0,1,2 --epochs 30
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
                                          f"data_dir={args.shared}",
                                          f"dataset.image_size={args.image_size}"])
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
                                                "iou": [], "image": []}
        keys: list[str] = []
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
                    # The photo at the decoder features' resolution, for image-evidence heads.
                    parts["image"].append(F.adaptive_avg_pool2d(
                        batch["images"].float(), out["features"].shape[-2:]).to(torch.uint8))
                    keys += list(batch["key"])
        data: dict[str, object] = {k: torch.cat(v) for k, v in parts.items()}
        data["source"] = [key.split("/", 1)[0] for key in keys]
        torch.save(data, args.out / f"{name}.pt")
        iou = data["iou"]
        assert isinstance(iou, torch.Tensor)
        print(f"{name}: {len(iou)} samples in {time.time() - start:.0f} s; "
              f"candidate mean IoU {iou.mean(0).numpy().round(3)}, "
              f"oracle {iou.max(1).values.mean():.3f}", flush=True)


# ----------------------------------------------------------------------------- heads


def image_evidence(image: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``(B, 3, h, w)`` uint8 photo and ``(B, K, h, w)`` candidate maps -> ``(B, K, 3)``: how
    well each candidate's outline follows the photo's edges (mean image gradient under the
    map's gradient, relative to the photo's mean gradient), the colour contrast between its
    inside and outside, and the colour spread left within the two regions (both relative to
    the photo's colour spread). A good mask should sit on edges and split the colours."""
    rgb = image.float() / 255.0
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None] / 8

    def gradient(x: torch.Tensor) -> torch.Tensor:
        gx = F.conv2d(x, sobel, padding=1)
        gy = F.conv2d(x, sobel.transpose(-1, -2), padding=1)
        return torch.sqrt(gx**2 + gy**2 + 1e-8)[..., 1:-1, 1:-1]

    b, k, h, w = small.shape
    g = gradient(rgb.mean(1, keepdim=True))
    outline = gradient(small.reshape(b * k, 1, h, w)).reshape(b, k, h - 2, w - 2)
    align = ((outline * g).sum((2, 3)) / outline.sum((2, 3)).clamp_min(1e-6)
             / g.mean((2, 3)).clamp_min(1e-6))
    inside = small / small.sum((2, 3), keepdim=True).clamp_min(1e-6)
    outside = (1 - small) / (1 - small).sum((2, 3), keepdim=True).clamp_min(1e-6)
    mean_in = torch.einsum("bkhw,bchw->bkc", inside, rgb)
    mean_out = torch.einsum("bkhw,bchw->bkc", outside, rgb)
    spread = rgb.std((2, 3)).mean(1, keepdim=True).clamp_min(1e-3)
    contrast = (mean_in - mean_out).norm(dim=-1) / spread
    var = (torch.einsum("bkhw,bchw->bkc", inside, rgb**2) - mean_in**2).clamp_min(0).sum(-1) + (
        torch.einsum("bkhw,bchw->bkc", outside, rgb**2) - mean_out**2).clamp_min(0).sum(-1)
    return torch.stack([align / 5, contrast, var.sqrt() / spread], -1)


class StatsHead(nn.Module):
    """The shipped design (8 map statistics + candidate index), optionally with the other
    candidates' statistics as context and with :func:`image_evidence`."""

    def __init__(self, context: bool = False, evidence: bool = False, hidden: int = 32) -> None:
        super().__init__()
        self.context = context
        self.evidence = evidence
        per = 8 + (3 if evidence else 0)
        n = per + 3 + (3 * per if context else 0)
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, small: torch.Tensor, stats: torch.Tensor,
                evidence: torch.Tensor | None = None) -> torch.Tensor:
        b = len(stats)
        if self.evidence:
            if evidence is None:
                raise ValueError("this head needs the cached photos: rerun `cache`")
            stats = torch.cat([stats, evidence], -1)
        parts = [stats, torch.eye(3)[None].expand(b, 3, 3)]
        if self.context:
            parts.append(stats.flatten(1)[:, None].expand(b, 3, stats.shape[-1] * 3))
        return self.mlp(torch.cat(parts, -1)).squeeze(-1)


class FeatureHead(nn.Module):
    """Decoder features pooled inside and outside each candidate and over the image, plus the
    map statistics and the candidate index."""

    def __init__(self, channels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(3 * hidden + 8 + 3, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, small: torch.Tensor, stats: torch.Tensor,
                evidence: torch.Tensor | None = None) -> torch.Tensor:
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
    "stats+evidence": (lambda: StatsHead(evidence=True), 0.0),
    "stats+evidence+context": (lambda: StatsHead(context=True, evidence=True), 0.0),
    "features": (lambda: FeatureHead(), 1.0),
}


def _features(head: nn.Module, data: dict[str, torch.Tensor],
              idx: torch.Tensor | slice) -> torch.Tensor:
    """The cached decoder features, for the heads that read them (copying them for the others
    made each fit minutes instead of seconds)."""
    if isinstance(head, FeatureHead):
        return data["features"][idx].float()
    return torch.empty(0)


def _evidence(data: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> torch.Tensor | None:
    return data["evidence"][idx] if "evidence" in data else None


def add_evidence(data: dict[str, torch.Tensor]) -> None:
    """:func:`image_evidence` of every cached sample, once (it does not change under the
    horizontal flips of training)."""
    if "image" in data:
        data["evidence"] = torch.cat([
            image_evidence(data["image"][i:i + 256], data["small"][i:i + 256].float())
            for i in range(0, len(data["iou"]), 256)])


def scores_of(head: nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(head(_features(head, data, slice(i, i + 64)),
                                             data["small"][i:i + 64].float(),
                                             data["stats"][i:i + 64],
                                             _evidence(data, slice(i, i + 64))))
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
            feats, small = _features(head, train, idx), train["small"][idx].float()
            if torch.rand(()) < 0.5:
                feats, small = feats.flip(-1), small.flip(-1)
            target = train["iou"][idx]
            out = head(feats, small, train["stats"][idx], _evidence(train, idx))
            loss = F.binary_cross_entropy_with_logits(out, target)
            if rank_weight:
                loss = loss + rank_weight * F.cross_entropy(out, torch.softmax(target / 0.05, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head


#: Sources whose masks a teacher made (``dataset=lite_distill``); the rest are human masks.
TEACHER_SOURCES = ("pseudo-unlabeled",)


def select(data: dict, keep: list[bool]) -> dict:
    """The cached samples where ``keep`` is true."""
    idx = torch.tensor(keep)
    return {k: (v[idx] if isinstance(v, torch.Tensor)
                else [x for x, y in zip(v, keep, strict=True) if y])
            for k, v in data.items()}


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = {name: torch.load(args.cache / f"{name}.pt", weights_only=True)
            for name in ("train", "val")}
    if any("evidence" in name for name in args.variant):
        for part in data.values():
            add_evidence(part)
    sources = data["train"].get("source")
    if sources is not None:
        print("Best candidate per training source (counts of candidates 0/1/2):")
        for name in sorted(set(sources)):
            best = select(data["train"], [s == name for s in sources])["iou"].argmax(1)
            print(f"- {name}: {torch.bincount(best, minlength=3).tolist()}")
        print(f"- held-out: {torch.bincount(data['val']['iou'].argmax(1), minlength=3).tolist()}")
    val_iou = data["val"]["iou"]
    for k in range(val_iou.shape[1]):
        always = float((val_iou[:, k] >= val_iou.max(1).values).float().mean())
        print(f"Always candidate {k}: picks the truly best on {always:.0%} of held-out photos")
    print("\n| head | trained on | seed | held-out correlation | picks the truly best "
          "| IoU of the pick |")
    print("|---|---|--:|--:|--:|--:|")
    for subset in args.sources.split(","):
        if subset == "human":
            if sources is None:
                raise SystemExit("--sources human needs a cache with source names: rerun `cache`")
            train_data = select(data["train"], [s not in TEACHER_SOURCES for s in sources])
        elif subset == "all":
            train_data = data["train"]
        else:
            raise SystemExit(f"--sources takes all and/or human, got {subset!r}")
        for name in args.variant:
            for seed in (int(s) for s in args.seeds.split(",")):
                head = train_head(name, seed, train_data, args.epochs)
                r = report(scores_of(head, data["val"]), val_iou)
                print(f"| {name} | {subset} ({len(train_data['iou'])}) | {seed} | "
                      f"{r['corr']:.3f} | {r['picks_best']:.0%} | {r['picked_iou']:.4f} |",
                      flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run the network once and cache its outputs")
    c.add_argument("--weights", type=Path, required=True, help="released .safetensors")
    c.add_argument("--shared", type=Path, default=SHARED)
    c.add_argument("--passes", type=int, default=3, help="augmented passes over training")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--image-size", type=int, default=320, help="input size (v5: 384)")
    t = sub.add_parser("train", help="fit head variants on the cache and score them")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--variant", action="append", choices=sorted(VARIANTS), required=True)
    t.add_argument("--seeds", default="0")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--sources", default="all",
                   help="train on all samples and/or only the human-annotated ones: all,human")
    args = parser.parse_args()
    cache(args) if args.command == "cache" else train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
