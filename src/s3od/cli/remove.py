"""``s3od remove`` and ``s3od models``.

``remove`` runs in three steps: :func:`plan_removal` checks the options and lists the jobs
without loading anything, :func:`run_removal` loads the model once (:func:`s3od.load_remover`)
and runs photos, videos or a stdin/stdout stream, and the :class:`Summary` reports.
"""

from __future__ import annotations

import errno
import glob
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from s3od.cli._shared import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    Job,
    Rendering,
    Summary,
    open_remover,
    parse_color_option,
)
from s3od.cli.app import app, console, fail, progress_bar

if TYPE_CHECKING:
    from s3od.refine import RefineConfig
    from s3od.remover import Remover


#: --all-masks writes ``<name>.mask<i>.png`` for i below this (models have 3 to 6 candidates).
MAX_MASK_FILES = 16


@dataclass
class Inputs:
    """What the inputs expand to: (file, root folder or None) pairs, entries that cannot be
    read (symlink loops, broken links; reported as failed) and symlinked folders (not followed,
    reported)."""

    files: list[tuple[Path, Path | None]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    unfollowed: list[Path] = field(default_factory=list)


def _link_problem(path: Path) -> str | None:
    """Why a symlink cannot be followed, or None when it can."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop"
        return f"broken symlink ({err.strerror or err})"
    return None


def _walk(root: Path, skip: Path | None, found: Inputs) -> None:
    """Images under ``root`` (symlinked folders are listed, not followed), minus ``skip``."""
    for path in sorted(root.rglob("*")):
        if skip is not None and path.is_relative_to(skip):
            continue  # our own output folder inside the input folder: never an input
        if path.is_symlink():
            problem = _link_problem(path)
            if problem == "symlink loop" or (problem and path.suffix.lower() in IMAGE_SUFFIXES):
                found.unreadable.append((path, problem))
                continue
            if path.is_dir():
                found.unfollowed.append(path)
                continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.files.append((path, root))


def _expand(inputs: list[str], output: Path | None = None) -> Inputs:
    """Inputs -> files with their root folder. Folders recurse; globs expand."""
    found = Inputs()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            skip = None
            if output is not None and _inside(output, path):  # as rglob spells paths
                skip = path / output.resolve().relative_to(path.resolve())
            _walk(path, skip, found)
        elif path.exists():
            found.files.append((path, None))
        elif path.is_symlink():
            raise fail(f"cannot read {item}: {_link_problem(path)}")
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise fail(f"no files match {item!r}")
            found.files.extend((p, None) for p in matches if p.is_file())
        else:
            raise fail(f"input not found: {item}")
    return found


def _key(path: Path) -> str:
    """A path as the file system compares it (resolved; case folded, as on macOS/Windows)."""
    return os.path.normcase(str(path.resolve())).casefold()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _photo_jobs(inputs: list[str], output: Path | None, suffix: str) -> tuple[list[Job], Inputs]:
    """Where each photo's output goes: ``-o file`` for one file, else mirrored folders.

    Refuses (before anything runs) any output that would overwrite an input or land in an input
    folder itself; inputs that would share an output name (``a.jpg`` and ``a.png``) get
    distinct names (``a_jpg.png``, ``a_png.png``), which are reported.
    """
    found = _expand(inputs, output)
    files = found.files
    single = len(files) == 1 and len(inputs) == 1 and not Path(inputs[0]).is_dir()
    if output is not None and not (single and output.suffix):
        for item in inputs:
            if Path(item).is_dir() and _key(Path(item)) == _key(output):
                raise fail(f"-o {output} is the input folder: the cut-outs would mix with the "
                           "originals (and replace any with the same name); choose another "
                           "folder")
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
    _distinct_targets(jobs)
    sources = {_key(job.source): job.source for job in jobs}
    for job in jobs:
        if _key(job.target) in sources:
            raise fail(f"{job.source}: its output {job.target} would overwrite the input "
                       f"{sources[_key(job.target)]}; choose another -o")
    return jobs, found


def _distinct_targets(jobs: list[Job]) -> None:
    """Give inputs that would write the same file distinct names, or refuse; report renames."""
    from rich.markup import escape

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(_key(job.target), []).append(job)
    for group in groups.values():
        if len(group) < 2:
            continue
        before = group[0].target
        for job in group:
            ext = job.source.suffix.lower().lstrip(".") or "noext"
            job.target = job.target.with_name(f"{job.target.stem}_{ext}{job.target.suffix}")
        console.print(f"[yellow]note:[/] {len(group)} inputs would all write "
                      f"{escape(str(before))}; writing "
                      + ", ".join(f"{escape(j.source.name)} -> {escape(j.target.name)}"
                                  for j in group))
    seen: dict[str, Job] = {}
    for job in jobs:
        other = seen.setdefault(_key(job.target), job)
        if other is not job:
            raise fail(f"{other.source} and {job.source} would both write {job.target}; run "
                       "them separately or rename one")


def mask_path(target: Path, index: int) -> Path:
    """Where ``--all-masks`` writes candidate ``index`` of ``target``: stable across runs (the
    predicted IoU is in the PNG's ``s3od:iou`` text field, not the name)."""
    return target.with_name(f"{target.stem}.mask{index}.png")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _sigterm_like_sigint() -> Iterator[None]:
    """``kill``, ``docker stop`` and systemd stop a run the way Ctrl-C does: the file being
    written is removed, finished outputs stay, the summary is printed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RemovePlan:
    """Everything ``s3od remove`` settles before a model is loaded."""

    jobs: list[Job]
    rendering: Rendering
    refine: RefineConfig
    fg_estimate: bool
    output: Path | None = None
    videos: bool = False
    stdin: bool = False
    stdout: bool = False
    image_format: str = "PNG"
    save_kwargs: dict[str, Any] = field(default_factory=dict)
    all_masks: bool = False
    batch_size: int = 4
    threshold: float = 0.5
    skip_existing: bool = False
    temporal_smoothing: float = 0.0
    audio: bool = True
    max_pixels: int | None = None
    inputs: Inputs = field(default_factory=Inputs)

    @property
    def removal_options(self) -> dict[str, Any]:
        """Keyword options of :meth:`s3od.remover.Remover.remove_arrays` for photos: every
        candidate at full size with ``--all-masks``, else the predictor's memory policy."""
        return {"refine": self.refine, "fg_estimate": self.fg_estimate,
                "full_size_candidates": True if self.all_masks else None}


@app.command()
def remove(
    inputs: list[str] = typer.Argument(..., help="Image files, folders, globs, or '-' for stdin."),
    output: Path = typer.Option(None, "-o", "--output",
                                help="Output file (one input) or folder; '-' for stdout."),
    model: str = typer.Option(None, "--model", "-m",
                              help="Registry name, hub id, checkpoint path or .onnx file "
                                   "(see `s3od models`)."),
    preprocess: str = typer.Option(
        None, "--preprocess", metavar="FAMILY",
        help="Foreign .onnx models (rembg's files): u2net, u2netp, u2net_human_seg, silueta, "
             "isnet-general-use, isnet-anime or birefnet (default: read from the graph)."),
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
                                   help="Also write every candidate mask as NAME.mask<i>.png "
                                        "(its predicted IoU in the PNG's s3od:iou field)."),
    batch_size: int = typer.Option(4, min=1, help="Images per forward pass."),
    precision: str = typer.Option(
        "auto", help="auto, fp32, bf16 or fp16. auto: bf16 on CPUs with AMX/AVX512-BF16 and "
                     "recent GPUs, fp16 on older GPUs, else fp32 (see docs/speed.md)."),
    compile_model: bool = typer.Option(False, "--compile",
                                       help="torch.compile the model (slow first batch)."),
    threads: int = typer.Option(
        None, min=1, help="CPU threads per forward pass (default: the CPUs this process may "
                          "use, after affinity and cgroup quota; with --ray, the CPUs each "
                          "actor reserved)."),
    skip_existing: bool = typer.Option(False, "--skip-existing",
                                       help="Skip inputs whose output already exists."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Threshold used by --crop."),
    max_pixels: int = typer.Option(
        None, min=1, help="Refuse photos and video frames with more pixels, read from the "
                          "header before decoding (decompression bombs). [178000000: every "
                          "camera up to 150 MP]; raise it for larger panoramas."),
    refine: str = typer.Option("none", "--refine",
                               help="Edges: none, guided (fast guided filter) or matting "
                                    "(trimap matting, needs s3od[edges])."),
    fg_estimate: bool = typer.Option(
        None, "--fg-estimate/--no-fg-estimate",
        help="Estimate foreground colours at soft edges (no halo of the old background). "
             "Default: on for transparent image outputs when s3od[edges] is installed."),
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
        if preprocess:  # the actors read the family from the graph; no way to pass it yet
            raise fail("--preprocess does not apply with --ray: the actors identify a foreign "
                       ".onnx model from its graph")
        from s3od.cli.bulk import remove_on_ray

        return remove_on_ray(
            inputs, output, address=ray, actors=ray_actors, model=model, device=device,
            image_size=image_size, mask_only=mask_only, bg_color=bg_color, bg_image=bg_image,
            crop=crop, fmt=fmt, all_masks=all_masks, batch_size=batch_size,
            skip_existing=skip_existing, threshold=threshold, refine=refine,
            fg_estimate=bool(fg_estimate), precision=precision, compile_model=compile_model,
            threads=threads)
    plan = plan_removal(
        inputs, output, mask_only=mask_only, bg_color=bg_color, bg_image=bg_image, crop=crop,
        fmt=fmt, png_compression=png_compression, all_masks=all_masks, batch_size=batch_size,
        skip_existing=skip_existing, threshold=threshold, refine=refine,
        fg_estimate=fg_estimate, matting_budget=matting_budget,
        temporal_smoothing=temporal_smoothing, audio=audio, max_pixels=max_pixels)
    with _sigterm_like_sigint():
        try:
            remover = open_remover(model, device=device, image_size=image_size,
                                   precision=precision, compile=compile_model, threads=threads,
                                   **({"preprocess": preprocess} if preprocess else {}))
            summary = run_removal(plan, remover)
        except KeyboardInterrupt as err:  # before any photo ran, or a video / stream
            signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
            console.print(f"[red]interrupted ({signal.Signals(signum).name})[/]")
            raise typer.Exit(128 + signum) from None
    if summary is None:  # a stdin/stdout stream: the bytes are the report
        return
    summary.report(len(plan.jobs) + len(plan.inputs.unreadable))
    if summary.interrupted is not None:
        raise typer.Exit(128 + summary.interrupted)
    if summary.failed:
        raise typer.Exit(1)


def plan_removal(inputs: list[str], output: Path | None, *, mask_only: bool,
                 bg_color: str | None, bg_image: Path | None, crop: bool, fmt: str,
                 png_compression: int, all_masks: bool, batch_size: int, skip_existing: bool,
                 threshold: float, refine: str, fg_estimate: bool | None,
                 matting_budget: float, temporal_smoothing: float, audio: bool,
                 max_pixels: int | None = None) -> RemovePlan:
    """Check the options and list the jobs; every refusal happens here, before any loading."""
    from s3od.refine import RefineConfig

    fmt = fmt.lower()
    if fmt not in ("png", "webp"):
        raise fail(f"--format must be png or webp, got {fmt!r}")
    if mask_only and (bg_color is not None or bg_image is not None):
        raise fail("--mask-only writes the mask, which has no background: drop --bg-color / "
                   "--bg-image, or --mask-only")
    rendering = Rendering(mask_only, _background(bg_color, bg_image, max_pixels), crop)
    try:
        config = RefineConfig(mode=refine.lower(), time_budget_s=matting_budget)
    except ValueError as err:
        raise fail(str(err)) from None
    videos = [item for item in inputs if Path(item).suffix.lower() in VIDEO_SUFFIXES]
    if fg_estimate is None:
        fg_estimate = rendering.transparent and not videos and _has_pymatting()
    if (fg_estimate or config.mode == "matting") and not _has_pymatting():
        raise fail("--fg-estimate and --refine matting need pymatting: "
                   "pip install 's3od[edges]'")
    plan = RemovePlan(
        [], rendering, config, fg_estimate, output=output, videos=bool(videos),
        image_format="WEBP" if fmt == "webp" else "PNG",
        save_kwargs={"lossless": True} if fmt == "webp" else {"compress_level": png_compression},
        all_masks=all_masks, batch_size=batch_size, threshold=threshold,
        skip_existing=skip_existing, temporal_smoothing=temporal_smoothing, audio=audio,
        max_pixels=max_pixels)
    if videos:
        if len(videos) != len(inputs):
            raise fail("videos and images cannot be mixed in one call; run them separately")
        from s3od.cli._video import plan_videos

        plan.jobs = plan_videos([Path(v) for v in videos], output, rendering,
                                crop=crop, all_masks=all_masks)
        return plan
    plan.stdin = inputs == ["-"]
    if not plan.stdin and "-" in inputs:
        raise fail("'-' (stdin) cannot be combined with other inputs")
    plan.stdout = output == Path("-") or (plan.stdin and output is None)
    if not plan.stdin:
        plan.jobs, plan.inputs = _photo_jobs(inputs, None if output == Path("-") else output,
                                             f".{fmt}")
        if plan.inputs.unfollowed:
            from rich.markup import escape

            console.print(f"[yellow]note:[/] not following {len(plan.inputs.unfollowed)} "
                          "symlinked folder(s): " + ", ".join(
                              escape(str(p)) for p in plan.inputs.unfollowed[:5]))
        if not plan.jobs and not plan.inputs.unreadable:
            raise fail("no images found in the given inputs")
        if plan.stdout and len(plan.jobs) != 1:
            raise fail("'-o -' (stdout) needs exactly one input")
    return plan


def _background(bg_color: str | None, bg_image: Path | None,
                max_pixels: int | None = None) -> Any:
    """``--bg-color`` or ``--bg-image`` as what :meth:`RemovalResult.render` composites over."""
    if bg_color is not None and bg_image is not None:
        raise fail("give --bg-color or --bg-image, not both")
    if bg_image is None:
        return parse_color_option(bg_color)
    from PIL import Image

    from s3od.errors import S3ODError
    from s3od.imageio import load_image

    try:
        return Image.fromarray(load_image(bg_image, **_limit(max_pixels)))
    except S3ODError as err:
        raise fail(f"--bg-image: {err}") from None


def run_removal(plan: RemovePlan, remover: Remover) -> Summary | None:
    """Run a plan with a loaded remover; ``None`` for a stdin/stdout stream."""
    if plan.videos:
        from s3od.cli._video import run_videos

        return run_videos(plan.jobs, remover, plan.rendering, batch_size=plan.batch_size,
                          refine=plan.refine, fg_estimate=plan.fg_estimate,
                          temporal_smoothing=plan.temporal_smoothing, audio=plan.audio,
                          skip_existing=plan.skip_existing, max_pixels=plan.max_pixels)
    if plan.stdin or plan.stdout:
        _run_stream(plan, remover)
        return None
    return _run_jobs(plan, remover)


def _limit(max_pixels: int | None) -> dict[str, int]:
    """``load_image`` keyword for ``--max-pixels`` (the library default when not given)."""
    return {} if max_pixels is None else {"max_pixels": max_pixels}


def _has_pymatting() -> bool:
    import importlib.util

    return importlib.util.find_spec("pymatting") is not None


def _run_stream(plan: RemovePlan, remover: Remover) -> None:
    """One image from stdin or a file, to stdout or a file."""
    from s3od.errors import S3ODError
    from s3od.imageio import encode_image, load_image, save_image_atomic

    source: Any = sys.stdin.buffer.read() if plan.stdin else plan.jobs[0].source
    try:
        rgb = load_image(source, **_limit(plan.max_pixels))
        result = remover.remove_background(rgb, plan.threshold, **plan.removal_options)
    except S3ODError as err:
        raise fail(f"{'stdin' if plan.stdin else source}: {err}", 1) from None
    image = plan.rendering(result)
    if plan.stdout:
        sys.stdout.buffer.write(encode_image(image, plan.image_format, **plan.save_kwargs))
        sys.stdout.buffer.flush()
    else:
        assert plan.output is not None  # stdin not going to stdout: plan_removal saw an -o
        save_image_atomic(image, plan.output, format=plan.image_format, **plan.save_kwargs)


def _skip_complete(plan: RemovePlan, summary: Summary) -> list[Job]:
    """``--skip-existing``: the jobs still to do. An existing output counts as done only when
    it is a complete image (:func:`s3od.imageio.output_problem`); an empty, truncated or
    undecodable one is redone and a directory in its place is a failure, each said aloud."""
    from rich.markup import escape

    from s3od.imageio import output_problem

    todo, redo = [], []
    for job in plan.jobs:
        if not (job.target.exists() or job.target.is_symlink()):
            todo.append(job)
            continue
        problem = output_problem(job.target)
        if problem is None:
            summary.skipped += 1
        elif job.target.is_dir():
            summary.failed.append((str(job.source), f"output {job.target} {problem}; not "
                                                    "overwritten"))
        else:
            redo.append(f"{escape(job.target.name)} {escape(problem)}")
            todo.append(job)
    if redo:
        console.print(f"[yellow]note:[/] redoing {len(redo)} existing output(s) that are not "
                      "complete: " + "; ".join(redo[:5]) + (" ..." if len(redo) > 5 else ""))
    return todo


def _run_jobs(plan: RemovePlan, remover: Remover) -> Summary:
    """Photos in batches of ``plan.batch_size``; a bad file or batch is recorded, not fatal."""
    from PIL import PngImagePlugin
    from rich.markup import escape

    from s3od.errors import S3ODError
    from s3od.imageio import load_image, save_image_atomic, stale_temp_files

    summary = Summary()
    summary.failed.extend((str(p), reason) for p, reason in plan.inputs.unreadable)
    ours = [job.target for job in plan.jobs]
    if plan.all_masks:
        ours += [mask_path(job.target, i) for job in plan.jobs for i in range(MAX_MASK_FILES)]
    stale = stale_temp_files(ours)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        console.print(f"[yellow]note:[/] removed {len(stale)} temp file(s) an interrupted run "
                      "left: " + ", ".join(escape(p.name) for p in stale[:5])
                      + (" ..." if len(stale) > 5 else ""))
    todo = _skip_complete(plan, summary) if plan.skip_existing else list(plan.jobs)

    def save(job: Job, result: Any) -> None:
        if plan.all_masks:  # masks first: an existing cut-out means its masks are complete
            from s3od.compose import mask_image

            for i, (mask, iou) in enumerate(zip(result.all_masks, result.all_ious, strict=True)):
                info = PngImagePlugin.PngInfo()
                if result.scored:  # a model without an IoU head has no score to write
                    info.add_text("s3od:iou", f"{float(iou):.4f}")
                info.add_text("s3od:best", str(i == result.best_index).lower())
                save_image_atomic(mask_image(mask), mask_path(job.target, i), format="PNG",
                                  pnginfo=info,
                                  compress_level=plan.save_kwargs.get("compress_level", 1))
        save_image_atomic(plan.rendering(result), job.target, format=plan.image_format,
                          **plan.save_kwargs)
        summary.done += 1

    try:
        with progress_bar(disable=len(todo) < 2) as progress:
            task = progress.add_task("removing backgrounds", total=len(todo))
            for start in range(0, len(todo), plan.batch_size):
                chunk, arrays = [], []
                for job in todo[start:start + plan.batch_size]:
                    try:
                        arrays.append(load_image(job.source, **_limit(plan.max_pixels)))
                        chunk.append(job)
                    except S3ODError as err:
                        summary.failed.append((str(job.source), str(err)))
                        progress.advance(task)
                if not chunk:
                    continue
                finished = 0
                try:
                    results = remover.remove_arrays(arrays, plan.threshold,
                                                    **plan.removal_options)
                    for job, result in zip(chunk, results, strict=True):
                        try:
                            save(job, result)
                        except (OSError, ValueError) as err:
                            summary.failed.append((str(job.source),
                                                   f"cannot write {job.target}: {err}"))
                        finished += 1
                        progress.advance(task)
                except Exception as err:  # one bad batch must not lose the rest of the run
                    for job in chunk[finished:]:
                        summary.failed.append((str(job.source), f"inference failed: {err}"))
                    progress.advance(task, len(chunk) - finished)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM through _sigterm_like_sigint
        summary.interrupted = err.signum if isinstance(err, Interrupted) else signal.SIGINT
    return summary



@app.command()
def models() -> None:
    """List the registered models and where each would load from."""
    from rich.console import Console
    from rich.markup import escape

    from s3od.hub import _cached_hub_file
    from s3od.registry import DEFAULT_MODEL, FALLBACK_MODEL, list_models

    out = Console()  # one entry per model: reads at any terminal width, unlike a wide table
    for spec in list_models():
        if spec.bundled_file:
            path = spec.bundled_path()
            status = "available (bundled)" if path and path.is_file() else "missing"
        else:
            cached = spec.hub_repo and _cached_hub_file(spec.hub_repo, spec.hub_filenames)
            status = "available (cached)" if cached else "downloaded on first use"
        tag = " (default)" if spec.name == DEFAULT_MODEL else (
            " (offline default)" if spec.name == FALLBACK_MODEL else "")
        out.print(f"[bold]{spec.name}[/]{tag}: {spec.architecture}, {spec.image_size} px, "
                  f"{status}")
        out.print(f"  {escape(spec.description)}", highlight=False)
        out.print(f"  {escape(spec.source)}", highlight=False)
    out.print("Also: any checkpoint file or folder, any hub id (owner/name, e.g. one made with "
              "`s3od publish`), an .onnx file.", highlight=False)
    _rembg_models(out)


def _rembg_models(out: Any) -> None:
    """The ONNX files in rembg's folder, which ``--model PATH`` runs as foreign models."""
    from rich.markup import escape

    from s3od.foreign import REMBG_HOME_ENV, rembg_home, rembg_models

    folder = rembg_home()
    found = rembg_models(folder)
    if not found:
        out.print(f"rembg folder {escape(str(folder))} (${REMBG_HOME_ENV} or ~/.u2net): "
                  "no .onnx files")
        return
    out.print(f"rembg models in {escape(str(folder))} (run with -m PATH):")
    for path, family in found:
        how = f"{family} preprocessing" if family else "family read from the graph"
        out.print(f"  {escape(path.name)}: {path.stat().st_size / 2**20:.0f} MB, {how}")
