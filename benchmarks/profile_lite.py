"""Where s3od-lite spends its time, and what a narrower decoder would save (issue 9).

For each decoder width and input size: GFLOPs (exact, counted by torch's FlopCounterMode, so
independent of machine load) and CPU milliseconds (one thread, process CPU time, median of a
few passes) per part of the network: encoder stages, the fusion decoder, the mask head's
full-resolution layers and the IoU head. Random weights: time and FLOPs do not depend on them.

Example:
    python benchmarks/profile_lite.py --sizes 512,1024 \
        --widths 64/32/16,64/32/16/2,32/16/8/2 --precision fp32,bf16

A fourth number in a width spec is the mask stride (2: masks at half resolution, upsampled).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

# Parts reported, by module name prefix (first match wins).
PARTS = (
    ("encoder.stem", "encoder stem"),
    ("encoder.stages.0", "encoder stride 2"),
    ("encoder.stages.1", "encoder stride 4"),
    ("encoder.stages.2", "encoder stride 8"),
    ("encoder.stages.3", "encoder stride 16"),
    ("encoder.stages.4", "encoder stride 16"),
    ("encoder.stages.5", "encoder stride 32"),
    ("encoder.stages.6", "encoder stride 32"),
    ("seg_head.scratch.layer", "decoder 3x3 projections"),
    ("seg_head.scratch.refinenet", "decoder fusion blocks"),
    ("seg_head.mask_head.output_conv1", "mask head first conv"),
    ("seg_head.mask_head.upsample_2x", "mask head x2 upsample + conv"),
    ("seg_head.mask_head.mask_heads", "mask head per-mask convs"),
    ("seg_head.classifier_head", "IoU head"),
)


def _part(name: str) -> str | None:
    return next((label for prefix, label in PARTS if name.startswith(prefix)), None)


def profile(widths: tuple[int, ...], size: int, precision: str, repeats: int
            ) -> dict[str, dict[str, float]]:
    """``{part: {"gflops": ..., "ms": ...}}`` for one configuration, plus ``total``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from s3od.modeling import LiteSegmentation
    from s3od.runtime import autocast, prepare_model

    torch.manual_seed(0)
    features, upsample, inter, *rest = widths
    model = LiteSegmentation(features=features, mask_upsample_features=upsample,
                             mask_inter_features=inter,
                             mask_stride=rest[0] if rest else 1).eval()
    device = torch.device("cpu")
    runner, options = prepare_model(model, device, precision, channels_last=True)
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)

    # Leaf-ish modules to time: the parts' own modules, each timed once (no double counting).
    timed: dict[str, Any] = {}
    for name, module in runner.named_modules():
        label = _part(name)
        if (label and not isinstance(module, torch.nn.ModuleList) and name.count(".") <= 3
                and not any(name.startswith(t + ".") for t in timed)):
            timed[name] = module
    totals: dict[str, list[float]] = defaultdict(list)
    current: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}

    def pre(name: str):
        def hook(*_: Any) -> None:
            starts[name] = time.process_time()
        return hook

    def post(name: str):
        def hook(*_: Any) -> None:
            current[_part(name)] += time.process_time() - starts[name]
        return hook

    handles = []
    for name, module in timed.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    with torch.inference_mode(), autocast(device, options.precision):
        runner(x)  # warm-up
        for _ in range(repeats):
            current.clear()
            start = time.process_time()
            runner(x)
            totals["total"].append(time.process_time() - start)
            for label, seconds in current.items():
                totals[label].append(seconds)
        for handle in handles:
            handle.remove()
        counter = FlopCounterMode(display=False)
        with counter:
            runner(x)
    counts = counter.get_flop_counts()
    flops: dict[str, float] = defaultdict(float)
    for name in timed:
        flops[_part(name)] += sum(counts.get(f"{type(runner).__name__}.{name}", {}).values())
    flops["total"] = sum(counts.get("Global", {}).values())
    return {label: {"gflops": flops.get(label, 0.0) / 1e9,
                    "ms": 1e3 * statistics.median(values)}
            for label, values in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--widths", default="64/32/16,48/32/16,32/32/16,32/16/8",
                        help="features/mask_upsample_features/mask_inter_features, comma list")
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    machine = common.machine_description()
    sections = ["# s3od-lite profile (benchmarks/profile_lite.py)", "",
                *(f"- {k}: {v}" for k, v in machine.items() if k != "torch threads"),
                "- torch threads: 1 (CPU time of one core; FLOPs are exact)",
                f"- command: python benchmarks/profile_lite.py {' '.join(sys.argv[1:])}", ""]
    summary = []
    for size in (int(s) for s in args.sizes.split(",")):
        for precision in args.precision.split(","):
            results = {}
            for spec in args.widths.split(","):
                # "F/U/I" or "F/U/I/S": decoder width, mask-head widths, mask stride.
                widths = tuple(int(v) for v in spec.split("/"))
                results[spec] = profile(widths, size, precision, args.repeats)  # type: ignore[arg-type]
                total = results[spec]["total"]
                summary.append({"size": size, "precision": precision, "decoder": spec,
                                "GFLOPs": total["gflops"], "CPU ms": total["ms"],
                                "img/CPU-s": 1e3 / total["ms"]})
                print(f"{size}px {precision} {spec}: {total['gflops']:.1f} GFLOPs, "
                      f"{total['ms']:.0f} ms", file=sys.stderr)
            labels = [label for label in dict.fromkeys(lbl for _, lbl in PARTS)]
            rows = []
            for label in [*labels, "total"]:
                row: dict[str, Any] = {"part": label}
                for spec, res in results.items():
                    cell = res.get(label, {"gflops": 0.0, "ms": 0.0})
                    row[f"{spec} GFLOPs"] = cell["gflops"]
                    row[f"{spec} ms"] = cell["ms"]
                rows.append(row)
            columns = ["part", *(f"{s} {k}" for s in results for k in ("GFLOPs", "ms"))]
            sections += [f"## {size}px, {precision}, batch 1", "",
                         common.markdown_table(rows, columns), ""]
    sections += ["## Summary", "",
                 common.markdown_table(summary, ["size", "precision", "decoder", "GFLOPs",
                                                 "CPU ms", "img/CPU-s"]), "",
                 f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    text = "\n".join(sections) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
