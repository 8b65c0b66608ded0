"""Inference speed, peak memory and quality cost of each optimisation (issue 9).

For every model x input size x batch size, runs the fp32 eager baseline and each optimisation,
every configuration in its own process, on the same real photos, and prints one table:
images/s through ``predict_arrays`` (preprocess + forward + postprocess) and end to end
(decode -> predict -> cut-out -> PNG written), the ratio to the fp32 baseline, the first call
(compilation, oneDNN set-up), peak RSS, and how far the masks move from fp32 (max abs
probability difference, IoU of the thresholded best masks).

Examples:
    python benchmarks/speed.py --models lite --sizes 512 --batches 1,8
    python benchmarks/speed.py --models dinov3-b --sizes 1024 --batches 1 \
        --configs fp32,bf16+cl --images 4 --markdown docs/speed-dinov3.md
    python benchmarks/speed.py --models lite:features=32,mask_upsample_features=16 ...

Timing on a shared machine is noisy: the table records the load average around every row;
``--repeat 2`` runs the configurations twice in alternating order and keeps the faster run.
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

CONFIGS: dict[str, dict[str, Any]] = {
    # The baseline: fp32, NCHW, no compile (inference_mode and SDPA are on in every row).
    "fp32": {"precision": "fp32", "channels_last": False},
    "fp32+cl": {"precision": "fp32", "channels_last": True},
    "bf16": {"precision": "bf16", "channels_last": False},
    "bf16+cl": {"precision": "bf16", "channels_last": True},
    "fp16+cl": {"precision": "fp16", "channels_last": True},
    "auto": {"precision": "auto", "channels_last": None},
    "fp32+cl+compile": {"precision": "fp32", "channels_last": True, "compile": True},
    "bf16+cl+compile": {"precision": "bf16", "channels_last": True, "compile": True},
    # ONNX Runtime on the file from s3od.export (fp32), and int8 through ORT's quantiser.
    "onnx": {"onnx": "fp32"},
    "onnx-int8-dynamic": {"onnx": "int8-dynamic"},
    "onnx-int8-static": {"onnx": "int8-static"},
}
DEFAULT_CONFIGS = "fp32,fp32+cl,bf16,bf16+cl,bf16+cl+compile"
COLUMNS = ["model", "size", "batch", "config", "img/s", "x fp32", "img/CPU-s", "x fp32 CPU",
           "e2e img/s", "first call s", "peak RSS MB", "max |dp|", "min IoU", "min IoU same cand.",
           "best same", "GT IoU", "load"]


# ----------------------------------------------------------------------------- worker


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration: load, warm up, time, compare with the baseline outputs."""
    import numpy as np

    from s3od.imageio import load_image, save_image_atomic
    from s3od.result import RemovalResult

    load_start = os.getloadavg()[0]
    config = CONFIGS[job["config"]]
    start = time.perf_counter()
    if "onnx" in config:
        # Torch is never imported here: the peak RSS is what a torch-free deployment
        # (``pip install s3od[onnx]`` + the exported file) really uses.
        from s3od.export.ort_predictor import OnnxBackgroundRemoval

        threads = int(job.get("threads") or 0) or len(os.sched_getaffinity(0))
        remover: Any = OnnxBackgroundRemoval(job["onnx_path"], image_size=job["size"],
                                             threads=threads)
        runtime = f"onnxruntime {config['onnx']}"
    else:
        import torch

        from s3od import BackgroundRemoval

        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        threads = torch.get_num_threads()

        remover = BackgroundRemoval(job["model_path"], image_size=job["size"], device="cpu",
                                    precision=config["precision"],
                                    channels_last=config["channels_last"],
                                    compile=config.get("compile", False))
        runtime = remover.runtime.describe()
    load_s = time.perf_counter() - start
    paths, batch = job["images"], job["batch"]
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]

    t = time.perf_counter()
    remover.predict_arrays([load_image(p) for p in chunks[0]])
    first_call_s = time.perf_counter() - t

    out_dir = Path(job["out_dir"])
    best: dict[str, float] | None = None
    outputs: list[tuple[np.ndarray, np.ndarray]] = []
    rounds = 0
    while True:
        decode = predict = save = cpu = 0.0
        outputs = []
        for chunk in chunks:
            t0 = time.perf_counter()
            rgbs = [load_image(p) for p in chunk]
            t1, c1 = time.perf_counter(), time.process_time()
            preds = remover.predict_arrays(rgbs)
            t2, cpu = time.perf_counter(), cpu + time.process_time() - c1
            for path, rgb, (masks, ious) in zip(chunk, rgbs, preds, strict=True):
                result = RemovalResult.from_candidates(rgb, masks, ious)
                save_image_atomic(result.rgba_image, out_dir / f"{Path(path).stem}.png",
                                  compress_level=1)  # s3od remove's default
            t3 = time.perf_counter()
            decode, predict, save = decode + t1 - t0, predict + t2 - t1, save + t3 - t2
            outputs.extend(preds)
        rounds += 1
        timing = {"predict_s": predict, "decode_s": decode, "save_s": save, "cpu_s": cpu}
        if best is None or predict < best["predict_s"]:
            best = timing
        if rounds >= job["max_rounds"] or rounds * predict >= job["min_time"]:
            break
    assert best is not None
    n = len(paths)
    steady_batch_s = best["predict_s"] / len(chunks)
    result: dict[str, Any] = {
        "runtime": runtime,
        "weights_sha256": common.short_hash(job["model_path"]),
        "load_s": load_s,
        "first_call_s": first_call_s,
        "first_call_extra_s": first_call_s - steady_batch_s,
        "img_s": n / best["predict_s"],
        # CPU seconds of the predict calls (all threads): steadier than wall time on a busy
        # machine; images per CPU-second is throughput per core when cores are all busy.
        "img_per_cpu_s": n / best["cpu_s"],
        "e2e_img_s": n / (best["predict_s"] + best["decode_s"] + best["save_s"]),
        "decode_ms": 1e3 * best["decode_s"] / n,
        "save_ms": 1e3 * best["save_s"] / n,
        "rounds": rounds,
        "images": n,
        "peak_rss_mb": common.peak_rss_mb(),
        "threads": threads,
        "load": f"{load_start:.1f}-{os.getloadavg()[0]:.1f}",
    }
    if hasattr(remover, "_forward") and hasattr(remover._forward, "seconds"):
        result["compile_s"] = sum(remover._forward.seconds.values())
    # Against the datasets' masks: meaningful for trained weights only.
    gt_iou = common.ground_truth_iou(paths, outputs) if job.get("trained") else None
    if gt_iou is not None:
        result["gt_iou"] = gt_iou
    if job.get("save_npz"):
        np.savez(job["save_npz"], **{f"m{i}": m for i, (m, _) in enumerate(outputs)},
                 **{f"i{i}": s for i, (_, s) in enumerate(outputs)})
    if job.get("baseline_npz"):
        ref = np.load(job["baseline_npz"])
        reference = [(ref[f"m{i}"], ref[f"i{i}"]) for i in range(n)]
        result.update(common.mask_agreement(reference, outputs))
    return result


# ----------------------------------------------------------------------------- driver


def prepare_onnx(model_path: Path, key: str, size: int, kind: str, folder: Path,
                 calibration: list[Path]) -> Path:
    """Export once per model and size (s3od.export), then quantise with ONNX Runtime."""
    from s3od.export import export_onnx

    stem = f"{key.replace(':', '_').replace(',', '_').replace('=', '')}-{size}"
    fp32 = folder / f"{stem}.onnx"
    if not fp32.is_file():
        export_onnx(model_path, fp32, image_size=size, verify=False)
    if kind == "fp32":
        return fp32
    target = folder / f"{stem}-{kind}.onnx"
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = folder / f"{stem}-prep.onnx"
    if not prepped.is_file():
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    if kind == "int8-dynamic":
        quantize_dynamic(str(prepped), str(target), weight_type=QuantType.QInt8)
    else:
        quantize_static(str(prepped), str(target), _CalibrationReader(calibration, size),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
    return target


class _CalibrationReader:
    """Feeds preprocessed photos (not the evaluation ones) to ORT's static quantiser."""

    def __init__(self, paths: list[Path], size: int) -> None:
        from s3od.imageio import load_image
        from s3od.transforms import preprocess_arrays

        self.batches = iter([{"images": preprocess_arrays([load_image(p)], size)[0]}
                             for p in paths])

    def get_next(self) -> dict[str, Any] | None:
        return next(self.batches, None)


def calibration_images(exclude: list[Path], count: int) -> list[Path]:
    pool = sorted(common.SHARED_DATA.glob("*/images/*.jpg"))
    return [p for p in pool if p not in exclude][::7][:count]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lite,dinov3-b",
                        help="comma list: lite, dinov3-b, lite:features=32, "
                             "NAME=weights.safetensors")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"comma list from: {', '.join(CONFIGS)} (fp32 is always run first)")
    parser.add_argument("--images", type=int, default=8,
                        help="real photos per configuration (also the quality set)")
    parser.add_argument("--min-time", type=float, default=0.0,
                        help="repeat the timed pass until this many seconds (per config)")
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, keep the fastest")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where checkpoints/ONNX files are cached (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw rows here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    configs = ["fp32", *[c for c in configs if c != "fp32"]]
    machine = common.machine_description()
    images, source = common.quality_images(args.images)
    with tempfile.TemporaryDirectory(prefix="s3od-speed-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run_all(args, configs, images, work, Path(tmp))
    common.write_report("speed.py", "s3od inference speed", machine, images, source, rows,
                        COLUMNS, args.markdown, args.json)
    return 0


def run_all(args: argparse.Namespace, configs: list[str], images: list[Path], work: Path,
            tmp: Path) -> list[dict[str, Any]]:
    rows = []
    script = Path(__file__).resolve()
    for spec in args.models.split(","):
        model_path, weights = common.build_checkpoint(spec, work)
        key = spec.split("=", 1)[0] if "=" in spec and model_path.is_file() and \
            spec.endswith(str(model_path)) else spec
        print(f"# {key}: {weights} ({model_path})", file=sys.stderr)
        for size in (int(s) for s in args.sizes.split(",")):
            onnx_paths: dict[str, Path] = {}
            for name in configs:
                kind = CONFIGS[name].get("onnx")
                if kind:
                    onnx_paths[name] = prepare_onnx(model_path, key, size, kind, work,
                                                    calibration_images(images, 16))
            for batch in (int(b) for b in args.batches.split(",")):
                baseline_npz = tmp / f"baseline-{len(rows)}.npz"
                group: dict[str, dict[str, Any]] = {}
                order = [c for r in range(args.repeat)
                         for c in (configs if r % 2 == 0 else [configs[0], *configs[:0:-1]])]
                for name in order:
                    out_dir = tmp / "out" / name
                    out_dir.mkdir(parents=True, exist_ok=True)
                    job = {"model_path": str(model_path), "size": size, "batch": batch,
                           "config": name, "images": [str(p) for p in images],
                           "out_dir": str(out_dir), "min_time": args.min_time,
                           "max_rounds": args.max_rounds, "threads": args.threads,
                           "onnx_path": str(onnx_paths.get(name, "")),
                           "trained": "trained" in weights}
                    if name == "fp32":
                        job["save_npz"] = str(baseline_npz)
                    elif baseline_npz.is_file():
                        job["baseline_npz"] = str(baseline_npz)
                    res = common.run_worker(script, job, args.timeout)
                    print(f"  {key} {size}px b{batch} {name}: "
                          f"{res.get('img_s', float('nan')):.3g} img/s {res.get('error', '')}",
                          file=sys.stderr)
                    if name not in group or res.get("img_s", 0) > group[name].get("img_s", 0):
                        group[name] = res
                hashes = {r.get("weights_sha256") for r in group.values()} - {None}
                if len(hashes) > 1:
                    print(f"  warning: the weights changed during {key} {size}px b{batch}: "
                          f"{sorted(hashes)}; rerun", file=sys.stderr)
                base = group.get("fp32", {})
                for name in configs:
                    res = group[name]
                    row = {"model": key, "size": size, "batch": batch, "config": name,
                           "weights": weights, **res}
                    if "error" in res:
                        row["img/s"] = "error: " + res["error"][:80]
                    else:
                        row.update(_display(res, base))
                    rows.append(row)
    return rows


def _display(res: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    out = {"img/s": res["img_s"], "e2e img/s": res["e2e_img_s"],
           "img/CPU-s": res["img_per_cpu_s"],
           "first call s": res["first_call_s"], "peak RSS MB": res["peak_rss_mb"],
           "load": res["load"], "GT IoU": res.get("gt_iou", "")}
    if base.get("img_s"):
        out["x fp32"] = res["img_s"] / base["img_s"]
        out["x fp32 e2e"] = res["e2e_img_s"] / base["e2e_img_s"]
        out["x fp32 CPU"] = res["img_per_cpu_s"] / base["img_per_cpu_s"]
    if "max_abs_prob" in res:
        out.update({"max |dp|": res["max_abs_prob"], "min IoU": res["min_iou"],
                    "min IoU same cand.": res.get("min_iou_same", ""),
                    "best same": res["same_best"]})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
