"""``s3od export-onnx``: write an ONNX file and check ONNX Runtime against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from s3od.cli.app import app, console, fail


@app.command("export-onnx")
def export_onnx_command(
    model: str = typer.Argument(None, help="Registry name, hub id or checkpoint path "
                                           "(default: the default model)."),
    output: Path = typer.Option(..., "-o", "--output", help="Target .onnx file."),
    image_size: int = typer.Option(None, help="Square input side baked into the graph "
                                              "(default: the model's)."),
    opset: int = typer.Option(18, min=17, help="ONNX opset (17 or newer)."),
    verify_image: list[Path] = typer.Option(
        None, "--verify-image",
        help="Image(s) to compare ONNX Runtime with PyTorch on (default: two synthetic ones)."),
    tolerance: float = typer.Option(1e-3, min=0.0,
                                    help="Largest accepted mask-probability difference."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Compare ONNX Runtime with PyTorch before writing."),
) -> None:
    """Export a model to ONNX (dynamic batch) and verify it with ONNX Runtime."""
    from s3od.errors import S3ODError
    from s3od.imageio import load_image

    images = []
    for path in verify_image or []:
        try:
            images.append(load_image(path))
        except S3ODError as err:
            raise fail(f"--verify-image {path}: {err}") from None
    try:
        from s3od.export.exporter import export_onnx

        report = export_onnx(model, output, image_size=image_size, opset=opset, verify=verify,
                             verify_images=images or None, tolerance=tolerance)
    except (ImportError, S3ODError, ValueError) as err:
        raise fail(str(err)) from None
    console.print(f"[green]wrote[/] {report.path} ({report.size_bytes / 2**20:.1f} MiB): "
                  f"{report.model_name} ({report.architecture}), {report.image_size}px, "
                  f"opset {report.opset}, dynamic batch, exported in {report.seconds:.1f}s")
    if report.max_abs_diff:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in report.max_abs_diff.items())
        console.print(f"ONNX Runtime vs PyTorch, max abs difference on {len(images) or 2} "
                      f"image(s): {diffs}")
