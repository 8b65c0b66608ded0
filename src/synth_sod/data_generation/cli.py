"""``s3od-data``: one subcommand per pipeline step, thin over the step functions.

Flags accept both spellings, ``--image-dir`` and the published ``--image_dir``, so the commands
of the published README run verbatim through the script shims (``generate_captions.py`` ...),
``python -m synth_sod.data_generation.<module>`` and ``s3od-data <step>``. Every step takes
``--num-shards N --shard-index I`` (or reads torchrun / SLURM variables) and resumes.

Layering: this module is the only one that knows the commands. It imports the step modules
inside the command bodies (``s3od-data --help`` stays fast) and no step module imports it; a
step module that should also run as ``python -m`` ends with ``run_as_step("<command>")`` from
:mod:`synth_sod.data_generation.module_entry`. Adding a step = one library module plus one
``@app.command()`` here (docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from s3od.cli.app import fail

app = typer.Typer(name="s3od-data", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="S3OD synthetic data: captions, tags, prompts, FLUX features, "
                       "generation, filtering, mining and parquet export.")

NUM_SHARDS = typer.Option(None, "--num-shards", "--num_shards", min=1,
                          help="Split the work into N shards (default: torchrun/SLURM or 1).")
SHARD_INDEX = typer.Option(None, "--shard-index", "--shard_index", min=0,
                           help="Which shard this process runs (0-based).")
MAX_TASKS = typer.Option(None, "--max-tasks", "--max_tasks", min=1,
                         help="Shard count for a SLURM array without SLURM_ARRAY_TASK_COUNT "
                              "(published flag).")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _shard(num_shards: int | None, shard_index: int | None, max_tasks: int | None = None):
    from synth_sod.data_generation.sharding import resolve_shard

    return resolve_shard(num_shards, shard_index, max_tasks=max_tasks)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise fail(f"{what} must be comma-separated integers, got {text!r}") from None


def _report(manifest) -> None:
    from s3od.cli.app import console

    console.print(f"{manifest.step} {manifest.shard.tag}: {manifest.done} done, "
                  f"{manifest.skipped} already complete, {len(manifest.failed)} failed "
                  f"(manifest: {manifest.path})")
    if manifest.failed:
        raise typer.Exit(1)


class _Step:
    """Run a step body and turn expected errors into a clean message and exit code 2."""

    def __enter__(self) -> _Step:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        from s3od.errors import S3ODError  # also the base of synth_sod's PipelineError

        if isinstance(exc, S3ODError):
            raise fail(str(exc)) from None


def _describe(kind: str, image_dir: list[Path], output_file: Path, backend: str,
              model: str | None,
              base_url: str | None, concurrency: int, save_interval: int,
              num_shards: int | None, shard_index: int | None) -> None:
    from s3od.cli.app import console
    from synth_sod.data_generation.captions import describe_images
    from synth_sod.data_generation.llm import make_client

    _setup_logging()
    with _Step():
        shard = _shard(num_shards, shard_index)
        if backend == "auto":
            http = base_url or os.environ.get("OPENAI_API_KEY") or os.environ.get(
                "OPENAI_BASE_URL")
            backend = "openai" if http else "transformers"
        model = model or ("gpt-4o" if backend == "openai" else "google/gemma-3-4b-it")
        client = make_client(backend, model, base_url)
        out = describe_images(kind, image_dir, output_file, client, shard=shard,
                              concurrency=1 if backend == "transformers" else concurrency,
                              save_interval=save_interval)
        console.print(f"{kind}s written to {out}")


IMAGE_DIR = typer.Option(..., "--image-dir", "--image_dir", "--data-folder", "--data_folder",
                         help="Folder of real images (searched recursively; repeatable).")
BACKEND = typer.Option("auto", "--backend",
                       help="'transformers' (local VLM, as published), 'openai' (any "
                            "chat-completions endpoint: OPENAI_API_KEY, --base-url) or 'auto' "
                            "(openai when OPENAI_API_KEY or OPENAI_BASE_URL is set).")
VLM_MODEL = typer.Option(None, "--model", "--model-id", "--model_id",
                         help="Model id (default: google/gemma-3-4b-it locally, gpt-4o over "
                              "HTTP).")
BASE_URL = typer.Option(None, "--base-url", "--base_url", help="Chat-completions server root.")
CONCURRENCY = typer.Option(8, "--concurrency", min=1, help="Requests in flight (openai backend).")
SAVE_INTERVAL = typer.Option(50, "--save-interval", "--save_interval", min=1,
                             help="Rewrite the output file every N answers.")


@app.command()
def captions(image_dir: list[Path] = IMAGE_DIR,
             output_file: Path = typer.Option(..., "--output-file", "--output_file",
                                              "--output-path", "--output_path"),
             backend: str = BACKEND, model: str | None = VLM_MODEL, base_url: str | None = BASE_URL,
             concurrency: int = CONCURRENCY, save_interval: int = SAVE_INTERVAL,
             num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX) -> None:
    """Step 1a: a one-or-two-sentence caption per real image -> JSON list."""
    _describe("caption", image_dir, output_file, backend, model, base_url, concurrency,
              save_interval, num_shards, shard_index)


@app.command()
def tags(image_dir: list[Path] = IMAGE_DIR,
         output_file: Path = typer.Option(..., "--output-file", "--output_file", "--output-path",
                                          "--output_path"),
         backend: str = BACKEND, model: str | None = VLM_MODEL, base_url: str | None = BASE_URL,
         concurrency: int = CONCURRENCY, save_interval: int = SAVE_INTERVAL,
         num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX) -> None:
    """Step 1b: a one-or-two-word object tag per real image -> JSON list."""
    _describe("tag", image_dir, output_file, backend, model, base_url, concurrency,
              save_interval, num_shards, shard_index)


CONFIG_PATH = typer.Option("generation_config.yaml", "--config-path", "--config_path",
                           "--config", help="YAML config (a bare name also resolves next to "
                                            "the package).")
OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. save_path=/data/out")


@app.command()
def prompts(config_path: str = CONFIG_PATH, overrides: list[str] | None = OVERRIDES,
            concurrency: int = typer.Option(4, "--concurrency", min=1),
            num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX,
            max_tasks: int | None = MAX_TASKS) -> None:
    """Step 2: LLM scene prompts per class -> <save_path>/<class>/prompts.txt."""
    from synth_sod.data_generation.generate import GenerationConfig, select_classes
    from synth_sod.data_generation.llm import make_client
    from synth_sod.data_generation.prompts import generate_prompts, load_class_weights

    _setup_logging()
    with _Step():
        cfg = GenerationConfig.from_yaml(config_path, overrides or [])
        cfg.check_paths(need_model=False, need_teacher=False)
        shard = _shard(num_shards, shard_index, max_tasks or cfg.max_tasks)
        client = make_client(cfg.llm_backend, cfg.llm_model, cfg.llm_base_url)
        manifest = generate_prompts(select_classes(cfg), cfg.save_path, client,
                                    num_prompts=cfg.num_prompts,
                                    weights=load_class_weights(cfg.class_weights_path),
                                    use_all_existing=cfg.use_all_existing_prompts, shard=shard,
                                    concurrency=concurrency)
    _report(manifest)


@app.command()
def features(caption_file: Path = typer.Option(..., "--caption-file", "--caption_file"),
             tag_file: Path = typer.Option(..., "--tag-file", "--tag_file"),
             save_folder: Path = typer.Option(..., "--save-folder", "--save_folder"),
             model_path: str = typer.Option(..., "--model-path", "--model_path",
                                            help="FLUX.1-dev-family folder (diffusers layout)."),
             device: str | None = typer.Option(None, "--device"),
             dtype: str = typer.Option("bfloat16", "--dtype"),
             offload: str = typer.Option("none", "--offload",
                                         help="none | model | sequential CPU offload."),
             lora_path: str | None = typer.Option(None, "--lora-path", "--lora_path"),
             feature_blocks: str = typer.Option("4,16,27,36", "--feature-blocks"),
             concept_layers: str = typer.Option(",".join(map(str, range(18))),
                                                "--concept-layers"),
             feature_dim: int = typer.Option(768, "--feature-dim"),
             schedule_steps: int = typer.Option(50, "--schedule-steps", min=1),
             seed: int = typer.Option(42, "--seed"),
             concept_token: str = typer.Option("first", "--concept-token"),
             num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX,
             max_tasks: int | None = MAX_TASKS) -> None:
    """Step 3: FLUX block features + concept maps of real images -> <save_folder>/features/*.npz."""
    from synth_sod.data_generation.features import extract_real_features

    _setup_logging()
    with _Step():
        manifest = extract_real_features(
            caption_file, tag_file, save_folder, model_path,
            shard=_shard(num_shards, shard_index, max_tasks), device=device, dtype=dtype,
            offload=offload, lora_path=lora_path,
            feature_blocks=_ints(feature_blocks, "--feature-blocks") or [],
            concept_layers=_ints(concept_layers, "--concept-layers") or [],
            feature_dim=feature_dim, schedule_steps=schedule_steps, seed=seed,
            concept_token=concept_token)
    _report(manifest)


@app.command()
def generate(config_path: str = CONFIG_PATH, overrides: list[str] | None = OVERRIDES,
             num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX,
             max_tasks: int | None = MAX_TASKS) -> None:
    """Step 4: prompts -> FLUX images -> teacher masks (+ metadata) per class."""
    from synth_sod.data_generation.generate import GenerationConfig, run_generation

    _setup_logging()
    with _Step():
        cfg = GenerationConfig.from_yaml(config_path, overrides or [])
        manifest = run_generation(cfg, _shard(num_shards, shard_index,
                                              max_tasks or cfg.max_tasks))
    _report(manifest)


@app.command("filter")
def filter_(config_path: str = typer.Option("filtering_config.yaml", "--config-path",
                                            "--config_path", "--config"),
            overrides: list[str] | None = OVERRIDES,
            num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX,
            max_tasks: int | None = MAX_TASKS) -> None:
    """Step 5: flip-consistency and VLM filters; survivors to a flat images/ + masks/ folder."""
    from synth_sod.data_generation.filtering import FilteringConfig, run_filtering

    with _Step():
        cfg = FilteringConfig.from_yaml(config_path, overrides or [])
        _setup_logging(cfg.log_level)
        manifest = run_filtering(cfg, _shard(num_shards, shard_index,
                                             max_tasks or cfg.max_tasks))
    _report(manifest)


@app.command()
def mine(input_dir: Path = typer.Option(..., "--input-dir", "--input_dir"),
         model_path: str = typer.Option(..., "--model-path", "--model_path",
                                        help="Student: s3od model name, hub id or checkpoint."),
         output_dir: Path = typer.Option(Path("results"), "--output-dir", "--output_dir"),
         img_size: int | None = typer.Option(None, "--img-size", "--img_size"),
         min_samples: int = typer.Option(20, "--min-samples", "--min_samples", min=0),
         max_samples: int = typer.Option(100, "--max-samples", "--max_samples", min=0),
         max_val_samples: int = typer.Option(10, "--max-val-samples", "--max_val_samples", min=1),
         device: str | None = typer.Option(None, "--device"),
         num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX) -> None:
    """Step 6: per-category student scores -> class weights for the next generation round."""
    from s3od.cli.app import console
    from synth_sod.data_generation.mining import mine_categories, student_predictor

    _setup_logging()
    with _Step():
        if min_samples > max_samples:
            raise fail("--min-samples must not exceed --max-samples")
        weights = mine_categories(input_dir, student_predictor(model_path, img_size, device),
                                  output_dir, min_samples=min_samples, max_samples=max_samples,
                                  max_val_samples=max_val_samples,
                                  shard=_shard(num_shards, shard_index),
                                  settings={"model_path": model_path})
    console.print(f"class weights: {weights}" if weights else
                  "scores saved; class weights are written once every shard has finished")


@app.command()
def export(input_dir: Path = typer.Option(..., "--input-dir", "--input_dir"),
           output_dir: Path = typer.Option(..., "--output-dir", "--output_dir"),
           rows_per_file: int = typer.Option(1000, "--rows-per-file", min=1),
           row_group_size: int = typer.Option(100, "--row-group-size", min=1),
           num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX) -> None:
    """Step 7: parquet shards (image, mask, caption, category, id) for `datasets`."""
    from synth_sod.data_generation.export import export_parquet

    _setup_logging()
    with _Step():
        manifest = export_parquet(input_dir, output_dir, rows_per_file=rows_per_file,
                                  row_group_size=row_group_size,
                                  shard=_shard(num_shards, shard_index))
    _report(manifest)


@app.command("pseudo-label")
def pseudo_label_(
        image_dir: list[Path] = typer.Option(..., "--image-dir", "--image_dir",
                                             help="Photos: <dir>/<source>/images, <dir>/images "
                                                  "or images directly in <dir> (repeatable)."),
        output_dir: Path = typer.Option(..., "--output-dir", "--output_dir",
                                        help="Writes <source>/{images,masks,metadata}: the "
                                             "generation layout `filter` and `export` read."),
        teacher: str = typer.Option(..., "--teacher",
                                    help="An .onnx saliency model (rembg preprocessing, e.g. "
                                         "u2net.onnx) or any model s3od loads (registry name, "
                                         "hub id, checkpoint)."),
        tta: str = typer.Option("none", "--tta", help="Teacher test-time augmentation: none, "
                                                      "flip."),
        scales: str | None = typer.Option(None, "--scales",
                                          help="Extra teacher input scales, e.g. 0.75,1.25 "
                                               "(models with a dynamic input size)."),
        teacher_size: int | None = typer.Option(None, "--teacher-size", min=16,
                                                help="Teacher input side (default: its own)."),
        device: str | None = typer.Option(None, "--device", help="Device of an s3od teacher."),
        threads: int | None = typer.Option(None, "--threads", min=1,
                                           help="ONNX Runtime threads of an .onnx teacher."),
        limit: int | None = typer.Option(None, "--limit", min=1,
                                         help="Only the first N photos (in sorted order)."),
        num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX) -> None:
    """Teacher pseudo-labels for photos without masks (distil a teacher into a student)."""
    from synth_sod.data_generation.pseudo_label import (
        TTA,
        check_output_dir,
        load_teacher,
        pseudo_label,
    )

    if tta not in ("none", "flip"):
        raise fail(f"--tta must be 'none' or 'flip', got {tta!r}")
    try:
        scale_list = tuple(float(x) for x in (scales or "").split(",") if x.strip())
    except ValueError:
        raise fail(f"--scales must be comma-separated numbers, got {scales!r}") from None
    _setup_logging()
    with _Step():
        # cheap checks first: a bad flag must not wait for a teacher of hundreds of MB to load
        augment = TTA(flip=tta == "flip", scales=scale_list)
        check_output_dir(image_dir, output_dir)
        shard = _shard(num_shards, shard_index)
        model = load_teacher(teacher, size=teacher_size, device=device, threads=threads)
        manifest = pseudo_label(image_dir, output_dir, model, tta=augment, shard=shard,
                                limit=limit)
    _report(manifest)


@app.command()
def ensemble(
        label_dir: list[Path] = typer.Option(..., "--label-dir", "--label_dir",
                                             help="A teacher's pseudo-label folder (repeat, "
                                                  "at least two)."),
        output_dir: Path = typer.Option(..., "--output-dir", "--output_dir",
                                        help="Writes the averaged labels in the same layout."),
        weight: list[float] | None = typer.Option(None, "--weight",
                                                  help="Weight of each --label-dir, in order "
                                                       "(default: equal)."),
        num_shards: int | None = NUM_SHARDS, shard_index: int | None = SHARD_INDEX) -> None:
    """Average several teachers' pseudo-labels: soft where they disagree."""
    from synth_sod.data_generation.ensemble import ensemble_labels

    _setup_logging()
    with _Step():
        manifest = ensemble_labels(label_dir, output_dir, weights=weight or None,
                                   shard=_shard(num_shards, shard_index))
    _report(manifest)


def main() -> None:
    """Console-script entry point (``s3od-data``)."""
    app()


def run_step(step: str) -> None:
    """Entry of the script shims and ``python -m`` modules: ``s3od-data <step> <argv>``."""
    app(args=[step, *sys.argv[1:]], prog_name=Path(sys.argv[0]).name)
