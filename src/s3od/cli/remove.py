"""``s3od remove`` and ``s3od models``."""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from s3od.cli.app import app, console, fail

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif"}
# Kept in sync with s3od.video.io.VIDEO_SUFFIXES (not imported here: PyAV is optional).
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv"}
#: Above this many pixels, candidate masks other than the best stay at network resolution.
LARGE_IMAGE_PIXELS = 16_000_000


@dataclass
class Job:
    """One input and where its output goes."""

    source: Path
    target: Path


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _expand(inputs: list[str]) -> list[tuple[Path, Path | None]]:
    """Inputs -> (file, root folder or None). Folders recurse; globs expand."""
    out: list[tuple[Path, Path | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            out.extend((p, path) for p in files)
        elif path.exists():
            out.append((path, None))
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise fail(f"no files match {item!r}")
            out.extend((p, None) for p in matches if p.is_file())
        else:
            raise fail(f"input not found: {item}")
    return out


def _plan(inputs: list[str], output: Path | None, suffix: str) -> list[Job]:
    files = _expand(inputs)
    single = len(files) == 1 and len(inputs) == 1 and not Path(inputs[0]).is_dir()
    jobs = []
    for src, root in files:
        if single and output is not None and output.suffix:
            target = output
        else:
            base = output if output is not None else (root.parent / f"{root.name}_nobg"
                                                      if root else src.parent)
            rel = src.relative_to(root) if root else Path(src.name)
            name = rel.with_suffix(suffix) if output is not None or root else Path(
                f"{rel.stem}_nobg{suffix}")
            target = base / name
        jobs.append(Job(src, target))
    return jobs


def _render(result, mask_only: bool, bg_color: str | None, bg_image, crop: bool):
    if mask_only:
        image = result.mask_image()
    elif bg_image is not None:
        image = result.composite(bg_image)
    elif bg_color is not None:
        image = result.composite(bg_color)
    else:
        image = result.rgba_image
    return result.crop(image) if crop else image


@app.command()
def remove(
    inputs: list[str] = typer.Argument(..., help="Image files, folders, globs, or '-' for stdin."),
    output: Path = typer.Option(None, "-o", "--output",
                                help="Output file (one input) or folder; '-' for stdout."),
    model: str = typer.Option(None, "--model", "-m",
                              help="Registry name, hub id or checkpoint path (see `s3od models`)."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: best available)."),
    image_size: int = typer.Option(None, help="Network input size (default: the model's)."),
    mask_only: bool = typer.Option(False, "--mask-only", help="Write the soft mask (greyscale)."),
    bg_color: str = typer.Option(None, help="Composite over a colour: name, #rrggbb or r,g,b."),
    bg_image: Path = typer.Option(None, help="Composite over this background image."),
    crop: bool = typer.Option(False, "--crop", help="Crop to the object's bounding box."),
    fmt: str = typer.Option("png", "--format", help="png or webp (both keep alpha)."),
    png_compression: int = typer.Option(
        1, min=0, max=9,
        help="zlib level of PNG outputs: 1 encodes cut-outs ~2.4x faster than 6 (PIL's "
             "default) for ~12% more bytes (benchmarks/png_encode.py); 9 for the smallest."),
    all_masks: bool = typer.Option(False, "--all-masks",
                                   help="Also write every candidate mask, named by its IoU."),
    batch_size: int = typer.Option(4, min=1, help="Images per forward pass."),
    precision: str = typer.Option(
        "auto", help="auto, fp32, bf16 or fp16. auto: bf16 on CPUs with AMX/AVX512-BF16 and "
                     "recent GPUs, fp16 on older GPUs, else fp32 (see docs/speed.md)."),
    compile_model: bool = typer.Option(False, "--compile",
                                       help="torch.compile the model (slow first batch)."),
    skip_existing: bool = typer.Option(False, "--skip-existing",
                                       help="Skip inputs whose output already exists."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Threshold used by --crop."),
    refine: str = typer.Option("none", "--refine",
                               help="Edges: none, guided (fast guided filter) or matting "
                                    "(trimap matting, needs s3od\\[edges])."),
    fg_estimate: bool = typer.Option(
        None, "--fg-estimate/--no-fg-estimate",
        help="Estimate foreground colours at soft edges (no halo of the old background). "
             "Default: on for transparent image outputs when s3od\\[edges] is installed."),
    matting_budget: float = typer.Option(30.0, min=0.0,
                                         help="Seconds of matting per image (--refine matting)."),
    temporal_smoothing: float = typer.Option(
        0.0, min=0.0, max=0.95,
        help="Video: moving average of the mask against flicker (0 off, 0.5-0.8 typical); "
             "restarts at scene cuts."),
    audio: bool = typer.Option(True, "--audio/--no-audio", help="Video: keep the audio track."),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS",
                            help="Run on a Ray cluster (auto, ray://head:10001, local): inputs "
                                 "and -o may be object-store URIs, --format may be parquet, "
                                 "--skip-existing resumes. See docs/bulk-ray.md."),
    ray_actors: int = typer.Option(2, min=1, help="With --ray: model copies (actor pool size)."),
) -> None:
    """Cut out the main object of each image or video.

    Videos (.mp4, .mov, .webm, .mkv ...) are written as .webm (VP9 with alpha), .mov (ProRes 4444
    with alpha) or, with --bg-color/--bg-image/--mask-only, .mp4 (H.264), chosen by -o's suffix.
    """
    if ray is not None:
        from s3od.cli.bulk import remove_on_ray

        return remove_on_ray(
            inputs, output, address=ray, actors=ray_actors, model=model, device=device,
            image_size=image_size, mask_only=mask_only, bg_color=bg_color, bg_image=bg_image,
            crop=crop, fmt=fmt, all_masks=all_masks, batch_size=batch_size,
            skip_existing=skip_existing, threshold=threshold, refine=refine,
            fg_estimate=bool(fg_estimate))
    from s3od.errors import S3ODError
    from s3od.imageio import encode_image, load_image, save_image_atomic
    from s3od.refine import RefineConfig

    fmt = fmt.lower()
    if fmt not in ("png", "webp"):
        raise fail(f"--format must be png or webp, got {fmt!r}")
    color = None
    if bg_color is not None:
        from s3od.compose import parse_color

        try:
            color = parse_color(bg_color)
        except ValueError as err:
            raise fail(str(err)) from None
    background = None
    if bg_image is not None:
        try:
            from PIL import Image

            background = Image.fromarray(load_image(bg_image))
        except S3ODError as err:
            raise fail(f"--bg-image: {err}") from None
    save_kwargs: dict[str, Any] = ({"lossless": True} if fmt == "webp"
                                   else {"compress_level": png_compression})
    out_fmt = "WEBP" if fmt == "webp" else "PNG"
    try:
        config = RefineConfig(mode=refine.lower(), time_budget_s=matting_budget)
    except ValueError as err:
        raise fail(str(err)) from None
    transparent = not mask_only and bg_color is None and bg_image is None
    videos = [item for item in inputs if Path(item).suffix.lower() in VIDEO_SUFFIXES]
    if fg_estimate is None:
        fg_estimate = transparent and not videos and _has_pymatting()
    if (fg_estimate or config.mode == "matting") and not _has_pymatting():
        raise fail("--fg-estimate and --refine matting need pymatting: "
                   "pip install 's3od\\[edges]'")

    if videos:
        if len(videos) != len(inputs):
            raise fail("videos and images cannot be mixed in one call; run them separately")
        from s3od.cli._video import remove_videos

        bg = color if color is not None else background
        summary = remove_videos(
            [Path(v) for v in videos], output, model=model, device=device,
            image_size=image_size, batch_size=batch_size, refine=config,
            fg_estimate=fg_estimate, temporal_smoothing=temporal_smoothing, background=bg,
            mask_only=mask_only, audio=audio, skip_existing=skip_existing, crop=crop,
            all_masks=all_masks)
        _report(summary, len(videos))
        if summary.failed:
            raise typer.Exit(1)
        return

    def choose(arrays: list) -> object:
        """Post-processing for a batch: the published path unless an edge option is set or
        a photo is so large that full-size candidate masks would waste memory."""
        from s3od.refine import postprocess

        large = any(a.shape[0] * a.shape[1] > LARGE_IMAGE_PIXELS for a in arrays)
        return postprocess(config, fg_estimate, full_size_candidates=all_masks or not large)

    stdin_mode = inputs == ["-"]
    if not stdin_mode and "-" in inputs:
        raise fail("'-' (stdin) cannot be combined with other inputs")
    jobs = [] if stdin_mode else _plan(inputs, None if output == Path("-") else output, f".{fmt}")
    if not stdin_mode and not jobs:
        raise fail("no images found in the given inputs")

    from s3od.export.ort_predictor import load_remover

    try:
        remover = load_remover(model, image_size=image_size, device=device,  # *.onnx: ORT
                               precision=precision, compile=compile_model)
    except (S3ODError, ValueError, ImportError) as err:
        raise fail(str(err)) from None
    runtime = getattr(remover, "runtime", None)
    console.print(f"[dim]model {remover.model_name} ({remover.source}), "
                  f"{remover.image_size}px, {remover.device}"
                  f"{', ' + runtime.describe() if runtime else ''}[/]")

    if stdin_mode:
        data = sys.stdin.buffer.read()
        try:
            result = _remove_one(remover, data, threshold, choose)
        except S3ODError as err:
            raise fail(f"stdin: {err}", 1) from None
        image = _render(result, mask_only, bg_color, background, crop)
        payload = encode_image(image, out_fmt, **save_kwargs)
        if output is None or output == Path("-"):
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
        else:
            save_image_atomic(image, output, format=out_fmt, **save_kwargs)
        return

    if output == Path("-"):
        if len(jobs) != 1:
            raise fail("'-o -' (stdout) needs exactly one input")
        try:
            result = _remove_one(remover, jobs[0].source, threshold, choose)
        except S3ODError as err:
            raise fail(f"{jobs[0].source}: {err}", 1) from None
        image = _render(result, mask_only, bg_color, background, crop)
        sys.stdout.buffer.write(encode_image(image, out_fmt, **save_kwargs))
        return

    summary = _run_jobs(remover, jobs, batch_size, threshold, skip_existing, all_masks,
                        lambda r: _render(r, mask_only, bg_color, background, crop),
                        out_fmt, save_kwargs, choose)
    _report(summary, len(jobs))
    if summary.failed:
        raise typer.Exit(1)


def _has_pymatting() -> bool:
    import importlib.util

    return importlib.util.find_spec("pymatting") is not None


def _remove_one(remover, source, threshold: float, choose):
    """One image through the same post-processing choice as the batch path."""
    from s3od.imageio import load_image

    rgb = load_image(source)
    return next(remover._flush([rgb], threshold, choose([rgb])))


def _run_jobs(remover, jobs, batch_size, threshold, skip_existing, all_masks, render, out_fmt,
              save_kwargs, choose=lambda arrays: None) -> Summary:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from s3od.errors import S3ODError
    from s3od.imageio import load_image, save_image_atomic
    from s3od.result import RemovalResult

    summary = Summary()
    todo = []
    for job in jobs:
        if skip_existing and job.target.exists():
            summary.skipped += 1
        else:
            todo.append(job)

    def save(job, result):
        save_image_atomic(render(result), job.target, format=out_fmt, **save_kwargs)
        if all_masks:
            from s3od.compose import mask_image

            for i, (mask, iou) in enumerate(zip(result.all_masks, result.all_ious, strict=True)):
                name = f"{job.target.stem}.mask{i}_iou{iou:.3f}.png"
                save_image_atomic(mask_image(mask), job.target.with_name(name), format="PNG",
                                  compress_level=save_kwargs.get("compress_level", 1))
        summary.done += 1

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=len(todo) < 2) as progress:
        task = progress.add_task("removing backgrounds", total=len(todo))
        for start in range(0, len(todo), batch_size):
            chunk, arrays = [], []
            for job in todo[start:start + batch_size]:
                try:
                    arrays.append(load_image(job.source))
                    chunk.append(job)
                except S3ODError as err:
                    summary.failed.append((str(job.source), str(err)))
                    progress.advance(task)
            if not chunk:
                continue
            post = choose(arrays)
            try:
                predictions = (remover.predict_arrays(arrays) if post is None else
                               remover.predict_arrays(arrays,
                                                      full_resolution=not post.needs_low_res))
            except Exception as err:  # one bad batch must not lose the rest of the run
                for job in chunk:
                    summary.failed.append((str(job.source), f"inference failed: {err}"))
                progress.advance(task, len(chunk))
                continue
            for job, rgb, (masks, ious) in zip(chunk, arrays, predictions, strict=True):
                try:
                    save(job, remover._result(rgb, masks, ious, threshold) if post is None else
                         RemovalResult(**post.finish(rgb, masks, ious), threshold=threshold))
                except OSError as err:
                    summary.failed.append((str(job.source), f"cannot write {job.target}: {err}"))
                progress.advance(task)
    return summary


def _report(summary: Summary, total: int) -> None:
    console.print(f"[green]done {summary.done}[/], skipped {summary.skipped}, "
                  f"[{'red' if summary.failed else 'green'}]failed {len(summary.failed)}[/] "
                  f"of {total}")
    for source, reason in summary.failed:
        console.print(f"  [red]x[/] {source}: {reason}")


@app.command()
def models() -> None:
    """List the registered models and where each would load from."""
    from rich.table import Table

    from s3od.hub import _cached_hub_file
    from s3od.registry import DEFAULT_MODEL, FALLBACK_MODEL, list_models

    table = Table(title="s3od models")
    for col in ("name", "architecture", "input", "weights", "available", "description"):
        table.add_column(col)
    for spec in list_models():
        if spec.bundled_file:
            path = spec.bundled_path()
            status = "yes (bundled)" if path and path.is_file() else "missing"
        else:
            status = ("yes (cached)" if _cached_hub_file(spec.hub_repo, spec.hub_filenames)
                      else "download")
        tag = " (default)" if spec.name == DEFAULT_MODEL else (
            " (offline default)" if spec.name == FALLBACK_MODEL else "")
        table.add_row(spec.name + tag, spec.architecture, str(spec.image_size), spec.source,
                      status, spec.description)
    from rich.console import Console

    Console().print(table)
