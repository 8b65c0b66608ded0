"""Test stage: benchmark the best checkpoint on the configured test sets (s3od.evaluation)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from synth_sod.model_training.checkpoints import model_from_checkpoint

log = logging.getLogger(__name__)


def render_text(renderable: object, width: int = 120) -> str:
    """A rich table as plain text, for a log line instead of a print to the terminal."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().rstrip()


def run_test_stage(cfg: DictConfig, checkpoint: str | Path, out_dir: str | Path
                   ) -> list[dict[str, Any]]:
    """Score ``checkpoint`` on every configured test set present under ``input_dir``.

    Sets that are not on disk are reported (logging) and skipped; the table is logged and
    written to ``out_dir/test_results.{csv,json,md}``.
    """
    from s3od import BackgroundRemoval
    from s3od.evaluation import benchmark_model, find_sets, results_table, write_reports
    from s3od.evaluation.errors import DatasetNotFoundError

    ev = cfg.train_stage.evaluation
    wanted = [str(n) for n in (ev.get("datasets") or [])]
    model, _ = model_from_checkpoint(checkpoint)
    if getattr(model, "use_flux_features", False):
        log.info("[test] the FLUX teacher needs FLUX features per image; skipped")
        return []
    if not wanted:
        log.info("[test] no test datasets configured")
        return []
    try:
        available = {s.name.lower(): s.name for s in find_sets(ev.input_dir)}
    except DatasetNotFoundError as err:
        log.warning("[test] skipped: %s", err)
        return []
    present = [available[n.lower()] for n in wanted if n.lower() in available]
    missing = [n for n in wanted if n.lower() not in available]
    if missing:
        log.warning("[test] not found under %s: %s", ev.input_dir, ", ".join(missing))
    if not present:
        return []
    predictor = BackgroundRemoval.from_model(model, image_size=int(ev.image_size))
    rows = benchmark_model(predictor, ev.input_dir, sets=present,
                           name=str(cfg.train_stage.experiment_name),
                           batch_size=int(ev.get("batch_size", 4)))
    paths = write_reports(rows, Path(out_dir) / "test_results")
    log.info("[test] results\n%s", render_text(results_table(
        rows, title=f"test: {Path(checkpoint).name}")))
    log.info("[test] results written to %s", ", ".join(str(p) for p in paths))
    return rows
