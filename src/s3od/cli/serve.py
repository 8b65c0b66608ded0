"""``s3od serve`` (HTTP API) and ``s3od demo`` (Gradio UI): flags -> settings -> library."""

from __future__ import annotations

import typer

from s3od.cli.app import app, console, fail


def _missing_extra(extra: str, err: ImportError) -> typer.Exit:
    return fail(f"{err.name or err} is not installed: pip install 's3od[{extra}]'")


@app.command()
def serve(
    model: str = typer.Option(None, "--model", "-m",
                              help="Registry name, hub id, checkpoint path or .onnx file (see "
                                   "`s3od models`)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the server."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: best available)."),
    image_size: int = typer.Option(None, help="Network input size (default: the model's)."),
    preprocess: str = typer.Option(None, "--preprocess", metavar="FAMILY",
                                   help="Foreign .onnx models: u2net, isnet-anime, birefnet ... "
                                        "(default: read from the graph)."),
    threads: int = typer.Option(None, min=1,
                                help="CPU threads per forward pass (default: the CPUs this "
                                     "process may use, after affinity and cgroup quota)."),
    precision: str = typer.Option(None, help="auto, fp32, bf16 or fp16 (auto: bf16 on CPUs "
                                             "with AMX/AVX512-BF16, fp16/bf16 on GPUs). [auto]"),
    compile_model: bool = typer.Option(None, "--compile/--no-compile",
                                       help="torch.compile at start-up (slow start). [off]"),
    max_batch: int = typer.Option(None, min=1, max=64,
                                  help="Batch concurrent requests into one forward pass (pays "
                                       "off on GPUs; keep --max-concurrency above it). [1]"),
    batch_window_ms: float = typer.Option(None, min=0,
                                          help="How long a request waits for a batch. [10]"),
    max_upload_bytes: int = typer.Option(None, min=1, help="Largest body accepted. [20 MiB]"),
    max_pixels: int = typer.Option(None, min=1,
                                   help="Largest width*height, checked before decoding. [4096²]"),
    request_timeout: float = typer.Option(None, min=0.001,
                                          help="Seconds per request, from arrival, before a "
                                               "504. [60]"),
    upload_timeout: float = typer.Option(None, min=0.001,
                                         help="Seconds to receive the body before a 408; a "
                                              "slow upload holds no inference slot. [20]"),
    max_concurrency: int = typer.Option(None, min=1, help="Requests processed at once. [4]"),
    max_queue: int = typer.Option(None, min=0, help="Requests waiting; beyond -> 503. [64]"),
    api_key: str = typer.Option(None, envvar="S3OD_API_KEY", show_envvar=True,
                                help="Require this key on /v1/* (Bearer or X-API-Key)."),
    cors_origin: list[str] = typer.Option(None, "--cors-origin",
                                          help="Allow browser calls from this origin "
                                               "(repeatable). CORS is off by default."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve background removal over HTTP (FastAPI + uvicorn). Every flag also reads S3OD_<FLAG>.

    Endpoints: POST /v1/remove, POST /v1/masks, GET /v1/models, GET /healthz, docs at /docs.
    """
    try:
        import uvicorn

        from s3od.serving.app import create_app, remover_for
        from s3od.serving.settings import ServerSettings
    except ImportError as err:
        raise _missing_extra("server", err) from None
    from pydantic import ValidationError

    from s3od.errors import S3ODError

    try:
        settings = ServerSettings.from_env(
            model=model, device=device, image_size=image_size, threads=threads,
            preprocess=preprocess,
            precision=precision, compile=compile_model, max_batch=max_batch,
            batch_window_ms=batch_window_ms,
            max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
            request_timeout_s=request_timeout, upload_timeout_s=upload_timeout,
            max_concurrency=max_concurrency,
            max_queue=max_queue, api_key=api_key, cors_origins=tuple(cors_origin or ()) or None)
    except ValidationError as err:
        raise fail(f"invalid setting: {err}") from None
    try:
        remover = remover_for(settings)
    except (S3ODError, ValueError, ImportError) as err:
        raise fail(str(err)) from None
    console.print(f"[dim]{remover.describe()}; max batch {settings.max_batch}; "
                  f"auth {'on' if settings.api_key else 'off'}[/]")
    uvicorn.run(create_app(settings, remover), host=host, port=port, log_level=log_level,
                workers=1)


@app.command()
def demo(
    model: str = typer.Option(None, "--model", "-m",
                              help="Model to start with (the UI can switch to any registered)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(7860, min=0, max=65535, help="TCP port."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: best available)."),
    image_size: int = typer.Option(None, help="Network input size (default: the model's)."),
) -> None:
    """Open the Gradio demo: upload, compare candidate masks, download the cut-out."""
    try:
        from s3od.serving.demo import launch_demo
    except ImportError as err:
        raise _missing_extra("demo", err) from None
    from s3od.errors import S3ODError

    try:
        launch_demo(model, host=host, port=port, device=device, image_size=image_size)
    except (S3ODError, ValueError) as err:
        raise fail(str(err)) from None
