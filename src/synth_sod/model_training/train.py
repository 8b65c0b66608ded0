"""Training entry point: ``python -m synth_sod.model_training.train [overrides]``.

Hydra composes the packaged ``config/`` (so this runs from any directory); paths and data are
checked before the model is built; Lightning does the rest (DDP under torchrun or SLURM).

Progress is reported through :mod:`logging` (INFO), one tagged line per event (``[data]``,
``[model]``, ``[resume]``, ``[train]``, ``[val]``, ``[test]``); Hydra's job logging puts the
lines on stdout and in the run's ``.log`` file.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from s3od.errors import CheckpointError

# ConfigError lives with synth_sod's other errors; re-exported for callers of this module.
from synth_sod.errors import ConfigError as ConfigError
from synth_sod.model_training.config_checks import (
    check_checkpoint_file,
    check_validation_split,
    check_values,
)
from synth_sod.model_training.data import (
    DataConfigError,
    build_dataloaders,
    build_datasets,
    resolve_splits,
)
from synth_sod.model_training.lightning_module import SegmentationLightningModule, epochs_after

log = logging.getLogger(__name__)

if not OmegaConf.has_resolver("epochs_after"):
    OmegaConf.register_new_resolver("epochs_after", epochs_after)


class ProgressPrinter(Callback):
    """One log line every N steps and per validation (a progress bar is unreadable in a nohup
    log)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every = max(1, int(every_n_steps))
        self._t0 = time.time()
        self._last_t = time.time()
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last_t = time.time()
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or not trainer.is_global_zero or step == self._last_step:
            return
        now = time.time()
        rate = (step - self._last_step) / max(now - self._last_t, 1e-6)
        bs = batch["images"].shape[0] * trainer.world_size
        m = trainer.callback_metrics
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]

        def g(k):
            v = m.get(k)
            return float(v) if v is not None else float("nan")

        log.info("[train] epoch %d step %d loss %.4f best_iou %.3f iou@0.5 %.3f lr %s "
                 "%.3f steps/s %.2f img/s elapsed %.1f min", trainer.current_epoch, step,
                 g("train_loss_step"), g("train_best_iou_step"), g("train_iou_step"),
                 " ".join(f"{x:.2e}" for x in lrs), rate, rate * bs, (now - self._t0) / 60)
        self._last_t, self._last_step = now, step

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        keys = ("val_loss", "val_iou", "val_dice", "val_mae", "val_best_iou")
        vals = " ".join(f"{k} {float(m[k]):.4f}" for k in keys if k in m)
        log.info("[val] epoch %d step %d %s elapsed %.1f min", trainer.current_epoch,
                 trainer.global_step, vals, (time.time() - self._t0) / 60)


def checkpoint_dir(cfg: DictConfig) -> Path:
    return Path(cfg.train_stage.save_dir) / str(cfg.train_stage.experiment_name)


def resolve_resume(cfg: DictConfig) -> tuple[str | None, bool]:
    """(checkpoint path, weights_only) from ``training_hyperparams.resume`` / ``train_stage``.

    ``training_hyperparams.resume=True`` continues from this experiment's newest checkpoint:
    ``last.ckpt`` or the ``hpc_ckpt_N.ckpt`` Lightning writes on SLURM's ``SIGUSR1`` before a
    requeue (:func:`latest_checkpoint`); a string is taken as a checkpoint path.
    ``train_stage.checkpoint_path`` (published key) also works, with
    ``train_stage.weights_only`` to restart from weights only.
    """
    resume = cfg.get("training_hyperparams", {}).get("resume", False)
    path = cfg.train_stage.get("checkpoint_path")
    if isinstance(resume, str) and resume.lower() not in ("true", "false", ""):
        path = resume
    elif resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        folder = checkpoint_dir(cfg)
        latest = latest_checkpoint(folder)
        if latest is None:
            raise ConfigError(f"training_hyperparams.resume=True but {folder / 'last.ckpt'} "
                              "does not exist (nor a SLURM requeue checkpoint hpc_ckpt_*.ckpt); "
                              "check base_dir and train_stage.experiment_name")
        path = str(latest)
    if path and not Path(path).is_file():
        raise ConfigError(f"checkpoint to resume from does not exist: {path}")
    return (str(path) if path else None), bool(cfg.train_stage.get("weights_only", False))


def latest_checkpoint(folder: Path) -> Path | None:
    """The most recently written of ``last.ckpt`` and ``hpc_ckpt_*.ckpt`` in ``folder``.

    On SLURM's ``SIGUSR1`` (``#SBATCH --signal``) Lightning saves ``hpc_ckpt_N.ckpt`` in the
    trainer's ``default_root_dir`` (this folder, see :func:`trainer_kwargs`) and requeues the
    job; ``last.ckpt`` is only rewritten every ``checkpoint.every_n_train_steps``, so the
    requeued job must not fall back to it when the signal's checkpoint is newer.
    """
    found = [p for p in (folder / "last.ckpt", *folder.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def per_device_batch(cfg: DictConfig) -> int:
    """Samples per GPU and step: ``dataset.train_bs`` (1 for FLUX features, see data.py)."""
    return 1 if cfg.dataset.get("flux_features_dir") else int(cfg.dataset.train_bs)


def accumulation(cfg: DictConfig) -> int:
    """``accumulate_grad_batches``: as configured, or derived from
    ``backend.effective_batch_size`` (samples per optimizer step over all GPUs) when set."""
    backend = cfg.backend
    target = backend.get("effective_batch_size")
    if target is None:
        return int(backend.accumulate_grad_batches)
    devices, nodes = backend.devices, backend.get("num_nodes", 1)
    if not isinstance(devices, int) or not isinstance(nodes, int):
        raise ConfigError("backend.effective_batch_size needs backend.devices and "
                          f"backend.num_nodes as numbers (got {devices!r}, {nodes!r})")
    per_step = per_device_batch(cfg) * devices * nodes
    if int(target) < per_step or int(target) % per_step:
        raise ConfigError(f"backend.effective_batch_size={target} is not a multiple of "
                          f"train_bs x devices x num_nodes = {per_step}")
    return int(target) // per_step


def effective_batch_size(cfg: DictConfig) -> int:
    """Samples per optimizer step: per-GPU batch x devices x nodes x accumulation."""
    backend = cfg.backend
    return (per_device_batch(cfg) * int(backend.devices) * int(backend.get("num_nodes", 1))
            * accumulation(cfg))


def cudnn_benchmark(cfg: DictConfig) -> bool | None:
    """``backend.cudnn_benchmark``, except for FLUX-feature data, whose resolution changes from
    image to image (the autotuner would time every new shape); None leaves torch's setting."""
    value = cfg.backend.get("cudnn_benchmark")
    if value and cfg.dataset.get("flux_features_dir"):
        log.info("cudnn_benchmark off: FLUX-feature samples change resolution per image")
        return False
    return value


def validate(cfg: DictConfig) -> None:
    """Fail early and clearly on placeholder or missing paths."""
    raw = OmegaConf.to_container(cfg.dataset, resolve=False)
    ev = OmegaConf.to_container(cfg.train_stage.evaluation, resolve=False)
    uses_data_dir = "data_dir" in str(raw) or (ev.get("enabled") and "data_dir" in str(ev))
    for key in ("data_dir", "base_dir"):
        if key == "data_dir" and not uses_data_dir:
            continue
        value = cfg.get(key)
        if value is None or str(value).startswith("path/to"):
            raise ConfigError(f"{key} is not set: pass {key}=/some/path on the command line "
                              f"or set S3OD_{key.upper()}")
    root = cfg.dataset.get("root")
    if root and not Path(str(root)).expanduser().exists():
        raise ConfigError(f"dataset root {root} does not exist (data_dir={cfg.data_dir})")


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The ``pl.Trainer`` arguments of a run config (callbacks and loggers apart)."""
    backend = cfg.backend
    stage = cfg.train_stage
    kwargs: dict[str, Any] = dict(
        accelerator=backend.accelerator,
        devices=backend.devices,
        num_nodes=backend.get("num_nodes", 1),
        strategy=backend.get("strategy", "auto"),
        precision=backend.precision,
        max_epochs=backend.max_epochs,
        max_steps=backend.get("max_steps", -1),
        accumulate_grad_batches=accumulation(cfg),
        gradient_clip_val=backend.get("gradient_clip_val"),
        log_every_n_steps=stage.get("log_every_n_steps", 50),
        enable_progress_bar=stage.get("progress_bar", True),
        num_sanity_val_steps=stage.get("num_sanity_val_steps", 2),
        limit_train_batches=stage.get("limit_train_batches"),
        limit_val_batches=stage.get("limit_val_batches"),
        val_check_interval=stage.get("val_check_interval"),
        check_val_every_n_epoch=stage.get("check_val_every_n_epoch", 1),
        benchmark=cudnn_benchmark(cfg),
        # where Lightning writes hpc_ckpt_N.ckpt on SLURM's SIGUSR1 (see latest_checkpoint)
        default_root_dir=str(checkpoint_dir(cfg)),
    )
    return {k: v for k, v in kwargs.items() if v is not None}


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list) -> pl.Trainer:
    trainer = pl.Trainer(**trainer_kwargs(cfg), callbacks=callbacks, logger=loggers)
    if trainer.is_global_zero:
        batch = per_device_batch(cfg)
        log.info("[batch] %d per GPU x %d processes x %d accumulated = %d samples per optimizer "
                 "step", batch, trainer.world_size, trainer.accumulate_grad_batches,
                 batch * trainer.world_size * trainer.accumulate_grad_batches)
    return trainer


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy the tensors of ``state`` whose name and shape match; return (count, skipped names).

    For starting a differently shaped model from a trained one (e.g. a narrower decoder on a
    trained encoder): the rest keeps its fresh initialisation.
    """
    own = module.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError("no tensor of the checkpoint matches the model by name and shape")
    module.load_state_dict(matching, strict=False)
    return len(matching), sorted(k for k in own if k not in matching)


def initial_state(path: str) -> dict[str, torch.Tensor]:
    """Lightning state dict of a ``.ckpt``, or of released weights (``.safetensors``, e.g. the
    shipped s3od-lite), whose keys are the bare model's: a new stage can start from either."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return {f"model.{k}": v.float() for k, v in load_file(path).items()}
    from s3od.checkpoint_io import load_torch_checkpoint

    ckpt = load_torch_checkpoint(path)  # weights_only=True: a warm start runs no pickled code
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict; not a Lightning checkpoint")
    return state


def fit_resumable(trainer: pl.Trainer, module: pl.LightningModule, train_loader: Any,
                  val_loader: Any, ckpt_path: str | None) -> None:
    """``trainer.fit``, resuming from ``ckpt_path`` through Lightning's own loader with
    ``weights_only=True`` and the checkpoint allow-list: a resumed ``.ckpt`` runs no pickled
    code; one that tries raises :class:`s3od.errors.UnsafeCheckpointError`."""
    from s3od.checkpoint_io import checkpoint_globals, is_refusal, refused

    try:
        with checkpoint_globals():
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                        ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except pickle.UnpicklingError as err:
        if ckpt_path and is_refusal(err):
            raise refused(ckpt_path, err) from None
        raise


def check_iou_head_sources(cfg: DictConfig, train_set: Any) -> None:
    """``loss.iou_head_sources`` must name training sources: a typo would silently leave the
    IoU head without any training signal."""
    wanted = cfg.loss.get("iou_head_sources")
    if not wanted:
        return
    have = {source.name for source in getattr(train_set, "sources", [])}
    unknown = sorted(set(wanted) - have)
    if unknown:
        raise ValueError(f"loss.iou_head_sources names unknown training sources {unknown}; "
                         f"the training sources are {sorted(have)}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) as configured. Returns a small summary."""
    check_values(cfg)  # bad numbers and names: one line, exit 2, before data or model
    validate(cfg)
    ckpt_path, weights_only = resolve_resume(cfg)
    if ckpt_path:
        check_checkpoint_file(ckpt_path, weights_only, "the checkpoint to resume from")
    torch.set_float32_matmul_precision("medium")
    if cfg.backend.get("num_threads"):
        torch.set_num_threads(int(cfg.backend.num_threads))
    seed = int(cfg.backend.seed)
    pl.seed_everything(seed, workers=True)

    splits = resolve_splits(cfg.dataset, seed=seed)  # data errors surface before the model
    log.info("[data] %s", splits.describe())
    check_validation_split(cfg, splits)
    train_set, val_set = build_datasets(cfg.dataset, splits)
    check_iou_head_sources(cfg, train_set)
    train_loader, val_loader = build_dataloaders(
        cfg.dataset, train_set, val_set, pin_memory=cfg.backend.accelerator != "cpu")

    if ckpt_path and weights_only:
        module = SegmentationLightningModule(cfg)
        state = initial_state(ckpt_path)
        if cfg.train_stage.get("weights_strict", True):
            module.load_state_dict(state)
            log.info("[resume] weights from %s; optimizer and epoch restart", ckpt_path)
        else:
            loaded, skipped = load_matching(module, state)
            log.info("[resume] %d tensors from %s (name and shape match); %d left at their "
                     "initialisation%s", loaded, ckpt_path, len(skipped),
                     f", e.g. {', '.join(skipped[:3])}" if skipped else "")
        ckpt_path = None
    else:
        module = SegmentationLightningModule(cfg)

    stage = cfg.train_stage
    ckpt_dir = checkpoint_dir(cfg)
    monitor = stage.checkpoint.monitor
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=stage.checkpoint.filename, monitor=monitor,
                        mode=stage.checkpoint.mode, save_top_k=stage.checkpoint.save_top_k,
                        auto_insert_metric_name=False),
        # Rolling "last.ckpt", written every N optimizer steps and at each epoch end.
        ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                        every_n_train_steps=stage.checkpoint.every_n_train_steps),
        LearningRateMonitor(logging_interval="step"),
        ProgressPrinter(stage.get("print_every_n_steps", 10)),
    ]
    if stage.early_stopping.get("enabled", True):
        es = {k: v for k, v in stage.early_stopping.items() if k != "enabled"}
        callbacks.append(EarlyStopping(**es))
    log_dir = Path(stage.log_dir)
    loggers: list = []
    try:
        loggers.append(TensorBoardLogger(save_dir=log_dir, name=str(stage.experiment_name),
                                         default_hp_metric=False))
    except ModuleNotFoundError:
        log.warning("tensorboard is not installed: CSV logs only")
    # Same version folder as TensorBoard: logs/<experiment>/version_N/{events,metrics.csv}
    loggers.append(CSVLogger(save_dir=log_dir, name=str(stage.experiment_name),
                             version=loggers[0].version if loggers else None))
    trainer = build_trainer(cfg, callbacks, loggers)
    if trainer.is_global_zero:
        n_params = sum(p.numel() for p in module.model.parameters())
        log.info("[model] %s %.2fM parameters; checkpoints in %s; logs in %s; resume from %s",
                 cfg.model.architecture, n_params / 1e6, ckpt_dir, log_dir, ckpt_path)
    fit_resumable(trainer, module, train_loader, val_loader, ckpt_path)

    summary: dict[str, Any] = {
        "best_checkpoint": callbacks[0].best_model_path or None,
        "last_checkpoint": str(ckpt_dir / "last.ckpt"),
        "global_step": trainer.global_step,
    }
    if stage.evaluation.get("enabled") and trainer.is_global_zero:
        from synth_sod.model_training.evaluate import run_test_stage

        best = summary["best_checkpoint"] or summary["last_checkpoint"]
        try:
            summary["test"] = run_test_stage(cfg, best, log_dir / str(stage.experiment_name))
        except Exception as err:  # checkpoints are saved; report, do not hide the training
            log.error("[test] failed: %s: %s", type(err).__name__, err)
            summary["test_error"] = str(err)
    return summary


@hydra.main(version_base=None, config_path="config", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, DataConfigError, MissingMandatoryValue, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
