"""``s3od remove --ray ADDRESS``: the remove command's options, run on a Ray cluster.

Not a command of its own: :func:`s3od.cli.remove.remove` hands over here when ``--ray`` is set.
"""

from __future__ import annotations

from pathlib import Path

import typer

from s3od.cli._shared import parse_color_option
from s3od.cli.app import console, fail


def remove_on_ray(
    inputs: list[str],
    output: Path | None,
    *,
    address: str,
    actors: int,
    model: str | None,
    device: str | None,
    image_size: int | None,
    mask_only: bool,
    bg_color: str | None,
    bg_image: Path | None,
    crop: bool,
    fmt: str,
    all_masks: bool,
    batch_size: int,
    skip_existing: bool,
    threshold: float,
    refine: str = "none",
    fg_estimate: bool = False,
    precision: str = "fp32",
    compile_model: bool = False,
    threads: int | None = None,
) -> None:
    """Validate the options that make sense on a cluster, run the pipeline, print a summary."""
    from s3od.errors import S3ODError

    fmt = fmt.lower()
    if fmt not in ("png", "webp", "parquet"):
        raise fail(f"--format must be png, webp or parquet with --ray, got {fmt!r}")
    if output is None or str(output) == "-":
        raise fail("--ray needs -o/--output: a folder or an object-store prefix (s3://...)")
    if "-" in inputs:
        raise fail("--ray reads files, folders or object-store prefixes, not stdin")
    if all_masks or bg_image is not None or fg_estimate or refine.lower() != "none":
        raise fail("--all-masks, --bg-image, --refine and --fg-estimate are not supported "
                   "with --ray")
    if "://" not in str(output):
        for item in inputs:
            if "://" not in item and Path(item).is_dir() and (
                    Path(item).resolve() == Path(output).resolve()):
                raise fail(f"-o {output} is the input folder: the outputs would mix with the "
                           "originals (and replace any with the same name); choose another "
                           "folder")
    color = parse_color_option(bg_color)
    try:
        from s3od.bulk.pipeline import RenderOptions, remove_backgrounds_ray

        summary = remove_backgrounds_ray(
            inputs, str(output), model=model, image_size=image_size, device=device,
            precision=precision, compile=compile_model, output_format=fmt,  # type: ignore[arg-type]
            render=RenderOptions(mask_only, color, crop, threshold),
            resume=skip_existing, batch_size=batch_size, num_actors=actors, address=address,
            threads=threads)
    except (ImportError, S3ODError, ValueError) as err:
        raise fail(str(err)) from None
    console.print(f"[green]done {summary.done}[/], skipped {summary.skipped}, "
                  f"[{'red' if summary.failed else 'green'}]failed {len(summary.failed)}[/] "
                  f"of {summary.total} in {summary.seconds:.1f}s -> {summary.output}")
    for source, reason in summary.failed:
        console.print(f"  [red]x[/] {source}: {reason}")
    if summary.failed:
        raise typer.Exit(1)
