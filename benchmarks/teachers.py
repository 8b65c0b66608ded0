"""Score pseudo-label teachers, alone and as ensembles, on the dev split (issue 21, item 1).

Each teacher labels the dev photos with ``s3od-data pseudo-label`` into its own folder (the same
command and flags that label the unlabelled pool), then this script scores every folder and
every requested ensemble of them (the mean of soft masks, exactly what ``s3od-data ensemble``
writes: :func:`synth_sod.data_generation.ensemble.combine_masks`) against the dev ground truth,
per part of the split (BSDS, DAVIS-dev) and pooled. No model runs here.

Example (the folders scripts/train_default_model.sh's commands write for the dev photos)::

    python benchmarks/teachers.py --gt runs/v6/dev \\
        --teacher u2net+flip=runs/v6/dev_u2net --teacher v5@384+flip=runs/v6/dev_v5_384 \\
        --teacher v5@512+flip=runs/v6/dev_v5_512 \\
        --ensemble u2net+flip,v5@384+flip,v5@512+flip --ensemble v5@384+flip,v5@512+flip \\
        --out docs/teachers.md

``--gt`` holds one folder per part (``<part>/masks/<id>.png``); a teacher folder holds the same
parts (``<part>/masks/<id>.png``), as ``s3od-data pseudo-label --image-dir <gt>/<part>`` writes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from s3od.evaluation.metrics import SODMetrics
from synth_sod.data_generation.ensemble import combine_masks

KEYS = ("MAE", "maxF", "Sm", "IoU", "wF", "BIoU")
LOWER_IS_BETTER = {"MAE"}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _parse_teacher(spec: str) -> tuple[str, Path]:
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise SystemExit(f"--teacher must be NAME=FOLDER, got {spec!r}")
    if not Path(folder).is_dir():
        raise SystemExit(f"--teacher {name}: folder not found: {folder}")
    return name, Path(folder)


def score(gt_root: Path, teachers: dict[str, Path], ensembles: list[list[str]]
          ) -> list[dict[str, Any]]:
    """One row per method and part (and ``all``, every part pooled)."""
    parts = sorted(p.name for p in gt_root.iterdir() if (p / "masks").is_dir())
    if not parts:
        raise SystemExit(f"no <part>/masks folders under {gt_root}")
    methods: dict[str, list[str]] = {name: [name] for name in teachers}
    for members in ensembles:
        methods["mean(" + ", ".join(members) + ")"] = members
    rows = []
    for method, members in methods.items():
        pooled = SODMetrics()
        for part in parts:
            metrics = SODMetrics()
            missing = 0
            for gt_path in sorted((gt_root / part / "masks").glob("*.png")):
                paths = [teachers[m] / part / "masks" / gt_path.name for m in members]
                if not all(p.is_file() for p in paths):
                    missing += 1
                    continue
                gt = _read(gt_path)
                preds = [_read(p) for p in paths]
                pred = preds[0] if len(preds) == 1 else combine_masks(preds)[0]
                if pred.shape != gt.shape:
                    raise SystemExit(f"{paths[0]}: size {pred.shape} differs from the mask's "
                                     f"{gt.shape}")
                metrics.step(pred, gt)
                pooled.step(pred, gt)
            rows.append({"method": method, "part": part, "count": len(metrics),
                         "missing": missing, **_pick(metrics)})
        rows.append({"method": method, "part": "all", "count": len(pooled), "missing": 0,
                     **_pick(pooled)})
    return rows


def _pick(metrics: SODMetrics) -> dict[str, float | None]:
    res = metrics.results()
    return {k: res[k] for k in KEYS}


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = ["# Pseudo-label teachers on the dev split", "",
             "Written by `benchmarks/teachers.py` (each teacher's dev-photo labels, written by "
             "`s3od-data pseudo-label` with the flags named in the row, and their means).", "",
             f"- command: `{command}`",
             f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
    for part in dict.fromkeys(r["part"] for r in rows):
        sub = [r for r in rows if r["part"] == part]
        lines += [f"## {part} ({sub[0]['count']} images)", "",
                  "| teacher | " + " | ".join(KEYS) + " |",
                  "|:--|" + "--:|" * len(KEYS)]
        best = {k: (min if k in LOWER_IS_BETTER else max)(
            r[k] for r in sub if r[k] is not None) for k in KEYS}
        for r in sub:
            cells = []
            for k in KEYS:
                v = r[k]
                text = "n/a" if v is None else f"{v:.3f}"
                cells.append(f"**{text}**" if v is not None and v == best[k] else text)
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", type=Path, required=True, help="<part>/masks/*.png ground truth")
    ap.add_argument("--teacher", action="append", default=[], help="NAME=FOLDER (repeat)")
    ap.add_argument("--ensemble", action="append", default=[],
                    help="comma-separated teacher names to average (repeat)")
    ap.add_argument("--out", type=Path, help="markdown report (JSON written beside it)")
    args = ap.parse_args(argv)
    teachers = dict(_parse_teacher(s) for s in args.teacher)
    if not teachers:
        raise SystemExit("give at least one --teacher NAME=FOLDER")
    ensembles = []
    for spec in args.ensemble:
        members = [m.strip() for m in spec.split(",") if m.strip()]
        unknown = [m for m in members if m not in teachers]
        if unknown or len(members) < 2:
            raise SystemExit(f"--ensemble {spec!r}: needs two or more of {sorted(teachers)}")
        ensembles.append(members)
    rows = score(args.gt, teachers, ensembles)
    command = "python benchmarks/teachers.py " + " ".join(
        a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = markdown(rows, command)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
