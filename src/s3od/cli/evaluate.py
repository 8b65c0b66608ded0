"""``s3od eval`` (score saved predictions) and ``s3od benchmark`` (run a model, then score it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from s3od.cli.app import app, console, fail, progress_bar

_SHOWN_SKIPS = 5


def _split_sets(sets: list[str] | None) -> list[str] | None:
    """``--sets A,B --sets C`` -> ``[A, B, C]``."""
    if not sets:
        return None
    names = [n.strip() for item in sets for n in item.split(",") if n.strip()]
    return names or None


def _parse_pred(spec: str) -> tuple[str | None, Path]:
    """``NAME=DIR`` or ``DIR`` (a folder whose own name holds ``=`` is taken as a folder)."""
    if "=" in spec and not Path(spec).exists():
        name, _, folder = spec.partition("=")
        if name.strip() and folder.strip():
            return name.strip(), Path(folder.strip())
    return None, Path(spec)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display with one bar per ``model / set`` label."""
    tasks: dict[str, Any] = {}
    with progress_bar() as progress:

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        yield update


def _show(rows: list[dict[str, Any]], out: Path | None, title: str) -> None:
    """Print the table (stdout), problems (stderr), write reports; exit 1 if nothing scored."""
    from rich.console import Console

    from s3od.evaluation.report import results_table, write_reports

    out_console = Console()
    if not out_console.is_terminal:  # a pipe or a file: print the whole table, never squeezed
        out_console = Console(width=200)
    out_console.print(results_table(rows, title=title))
    try:
        written = write_reports(rows, out) if out is not None else []
    except OSError as err:
        raise fail(f"cannot write the reports to {out}: {err}") from None
    for row in rows:
        label = f"{row['model']} / {row['set']}"
        if row["error"]:
            console.print(f"[yellow]warning:[/] {label}: {row['error']}")
        skipped = row["skipped"]
        if skipped:
            console.print(f"[yellow]{label}: {len(skipped)} file(s) not scored[/]")
            for item in skipped[:_SHOWN_SKIPS]:
                console.print(f"  {item['file']}: {item['reason']}", markup=False,
                              highlight=False)
            if len(skipped) > _SHOWN_SKIPS:
                where = written[1] if written else "the JSON report (--out)"
                console.print(f"  ... and {len(skipped) - _SHOWN_SKIPS} more, listed in {where}")
    for path in written:
        console.print(f"wrote {path}")
    if not any(row["count"] for row in rows):
        raise fail("nothing could be scored", code=1)


@app.command("eval")
def eval_command(
    pred: list[str] = typer.Option(
        ..., "--pred", "-p",
        help="Folder of predictions, or NAME=FOLDER; repeat to compare several methods."),
    gt: Path = typer.Option(
        ..., "--gt", help="Ground truth: a mask folder, one set, or a root of several sets."),
    sets: list[str] = typer.Option(
        None, "--sets", help="Only these sets of a multi-set --gt (repeat or comma-separate)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Also write OUT.csv, OUT.json and OUT.md."),
    hce: bool = typer.Option(
        None, "--hce/--no-hce", help="Human correction effort (default: DIS sets only; slow)."),
    resize_any: bool = typer.Option(
        False, "--resize-any",
        help="Resize predictions even when their aspect ratio differs from the mask's."),
) -> None:
    """Score saved predictions (from s3od or any other tool) against ground-truth masks."""
    from s3od.errors import S3ODError
    from s3od.evaluation.api import evaluate_folder

    specs = [_parse_pred(p) for p in pred]
    names = [n or folder.resolve().name for n, folder in specs]
    if len(set(names)) != len(names):
        raise fail("two --pred share a name; give them names with NAME=FOLDER")
    rows: list[dict[str, Any]] = []
    try:
        with _progress() as update:
            for name, (_, folder) in zip(names, specs, strict=True):
                rows.extend(evaluate_folder(folder, gt, name=name, sets=_split_sets(sets),
                                            hce=hce, resize_any=resize_any,
                                            on_progress=update))
    except (S3ODError, OSError) as err:
        raise fail(str(err)) from None
    _show(rows, out, title="Saliency evaluation")


@app.command("benchmark")
def benchmark_command(
    data: Path = typer.Option(
        ..., "--data", help="A benchmark set or a root of sets (e.g. DUTS-TE, ECSSD, DIS-TE1)."),
    model: str = typer.Option(
        None, "--model", "-m", help="Model name, hub id or checkpoint path (default: s3od)."),
    sets: list[str] = typer.Option(
        None, "--sets", help="Only these sets (repeat or comma-separate)."),
    save_pred: Path = typer.Option(
        None, "--save-pred", help="Also save predictions as SAVE_PRED/<set>/<stem>.png."),
    batch_size: int = typer.Option(8, min=1, help="Images per forward pass."),
    image_size: int = typer.Option(None, help="Network input size (default: the model's)."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: best available)."),
    preprocess: str = typer.Option(None, "--preprocess", metavar="FAMILY",
                                   help="Foreign .onnx models: u2net, isnet-anime, birefnet ... "
                                        "(default: read from the graph)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Also write OUT.csv, OUT.json and OUT.md."),
    hce: bool = typer.Option(
        None, "--hce/--no-hce", help="Human correction effort (default: DIS sets only; slow)."),
) -> None:
    """Run a model over benchmark sets in batches and score its predictions."""
    from s3od.errors import S3ODError
    from s3od.evaluation.api import benchmark_model
    from s3od.evaluation.datasets import find_sets

    try:
        find_sets(data, _split_sets(sets))  # fail on a bad --data before loading the model
        runner: Any = model
        if preprocess:  # a foreign ONNX model with an explicit family
            from s3od.loading import load_remover

            runner = load_remover(model, preprocess=preprocess, image_size=image_size,
                                  device=device)
        with _progress() as update:
            rows = benchmark_model(runner, data, sets=_split_sets(sets), save_pred=save_pred,
                                   batch_size=batch_size, image_size=image_size, device=device,
                                   hce=hce, on_progress=update)
    except (S3ODError, OSError, ValueError) as err:
        raise fail(str(err)) from None
    _show(rows, out, title="Saliency benchmark")
