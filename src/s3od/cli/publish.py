"""``s3od publish``: a checkpoint -> a Hugging Face hub repository (weights, config, card)."""

from __future__ import annotations

from pathlib import Path

import typer

from s3od.cli.app import app, console, fail


@app.command()
def publish(
    checkpoint: str = typer.Argument(
        ..., metavar="CKPT", help="Checkpoint file (.safetensors, .pt, Lightning .ckpt), "
                                  "folder, registry name or hub id."),
    repo_id: str = typer.Argument(..., metavar="REPO_ID", help="Target hub repo: owner/name."),
    benchmark: Path = typer.Option(
        None, "--benchmark", metavar="RESULTS.json",
        help="Results of `s3od benchmark --out`: metrics for the card's model-index."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    token: str = typer.Option(None, "--token", metavar="TOKEN",
                              help="Hub token (default: HF_TOKEN or `hf auth login`)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Write the folder and card only; upload nothing."),
    output_dir: Path = typer.Option(
        None, "--output-dir", "-o", metavar="DIR",
        help="Keep the repo folder here (with --dry-run, default ./NAME)."),
    license: str = typer.Option(None, "--license", metavar="ID",
                                help="Card licence, e.g. mit, apache-2.0 (default: the "
                                     "registry's; 'other' for your own weights)."),
    dataset: list[str] = typer.Option(None, "--dataset", metavar="ID",
                                      help="Training dataset id for the card (repeatable)."),
    base_model: str = typer.Option(None, "--base-model", metavar="ID",
                                   help="Base model id (default: the DINOv3 backbone)."),
    tag: list[str] = typer.Option(None, "--tag", metavar="TAG",
                                  help="Extra card tag (repeatable)."),
    endpoint: str = typer.Option(None, "--endpoint", metavar="URL",
                                 help="Hub URL (default: HF_ENDPOINT or huggingface.co)."),
) -> None:
    """Export a checkpoint as a hub repo (model.safetensors, config.json, README.md card)
    and upload it.

    Load the result with BackgroundRemoval("REPO_ID") or s3od remove -m REPO_ID.
    """
    import tempfile

    from s3od.errors import S3ODError
    from s3od.publish import (
        CardInfo,
        PretrainedModel,
        _probe,
        _token,
        hub_endpoint,
        read_benchmark,
        upload_folder,
    )

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise fail(f"REPO_ID must be owner/name, got {repo_id!r}")
    try:
        url = hub_endpoint(endpoint)
        if not dry_run:  # fail in a second, before the weights are read
            token = _token(token)
            _probe(url)
        card = CardInfo(repo_id=repo_id, license=license, datasets=list(dataset or []),
                        base_model=base_model, tags=list(tag or []),
                        benchmark=read_benchmark(benchmark) if benchmark else None)
        model = PretrainedModel.from_model(checkpoint, card)
        with tempfile.TemporaryDirectory() as tmp:
            folder = output_dir or (Path(repo_id.split("/")[1]) if dry_run
                                    else Path(tmp) / "repo")
            model.save_pretrained(folder)
            files = ", ".join(sorted(p.name for p in folder.iterdir()))
            console.print(f"[green]wrote[/] {folder}: {files} ({model.resolved.architecture}, "
                          f"{model.resolved.image_size}px"
                          + (f", {len(card.benchmark['results'])} benchmark row(s)"
                             if card.benchmark else "") + ")")
            if dry_run:
                console.print(f"dry run: nothing uploaded; load it with "
                              f"BackgroundRemoval({str(folder)!r})")
                return
            commit = upload_folder(folder, repo_id, private=private, token=token,
                                   endpoint=url)
    except (S3ODError, ValueError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"[green]uploaded[/] {repo_id}: {commit}")
    console.print(f"load it with BackgroundRemoval({repo_id!r}) or s3od remove -m {repo_id}")
