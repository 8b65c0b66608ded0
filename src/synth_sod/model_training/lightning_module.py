"""Lightning module: model + multi-mask loss + AdamW (two groups) + constant-then-cosine LR."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from s3od.transforms import normalize
from synth_sod.model_training.loss import build_loss
from synth_sod.model_training.models import (
    build_training_model,
    enable_gradient_checkpointing,
    to_channels_last,
    train_only,
)


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def best_mask_index(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Index of the candidate the IoU head ranks first (0 for single-mask models)."""
    if outputs["pred_masks"].shape[1] == 1 or "pred_iou" not in outputs:
        return torch.zeros(outputs["pred_masks"].shape[0], dtype=torch.long,
                           device=outputs["pred_masks"].device)
    return outputs["pred_iou"].argmax(1)


def mask_metrics(probs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image IoU and Dice at 0.5, and MAE, of ``probs (B,H,W)`` vs ``target (B,H,W)``."""
    pred = probs > 0.5
    gt = target > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    total = pred.flatten(1).sum(1).float() + gt.flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    mae = (probs.float() - target.float()).abs().flatten(1).mean(1)
    return {"iou": iou, "dice": dice, "mae": mae}


class SegmentationLightningModule(pl.LightningModule):
    """``config`` is the whole run config (a DictConfig or its plain-dict form).

    Checkpoints carry ``hyper_parameters["config"]`` as a plain dict (resolved), so the model can
    be rebuilt from a checkpoint alone (see :mod:`synth_sod.model_training.export`).
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        config = _plain(config)
        self.save_hyperparameters({"config": config})
        self.config = config
        model_cfg = config["model"]
        self.model = build_training_model(model_cfg)
        # ``model.trainable``: train these sub-modules only; the rest stays as loaded, with its
        # batch-norm statistics frozen too (see :meth:`on_train_batch_start`).
        trainable = list(model_cfg.get("trainable") or [])
        self._frozen_modules = train_only(self.model, trainable) if trainable else []
        if model_cfg.get("gradient_checkpointing"):
            enable_gradient_checkpointing(self.model)
        self.channels_last = bool(model_cfg.get("channels_last", False))
        if self.channels_last:
            to_channels_last(self.model)
        self.criterion = build_loss(config["loss"])
        # ``loss.iou_head_sources``: only samples of these training sources (by dataset name)
        # teach the IoU head; None: all of them.
        sources = config["loss"].get("iou_head_sources")
        self.iou_head_prefixes = tuple(f"{s}/" for s in sources) if sources else None
        self.uses_flux = bool(getattr(self.model, "use_flux_features", False))
        self._val_sums: dict[str, float] = {}
        self._val_count = 0
        stage = config.get("train_stage", {})
        self.max_images = int(stage.get("max_images", 8))
        self.enable_image_logging = bool(stage.get("enable_image_logging", False))
        self._logged_images: list[torch.Tensor] = []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Frozen parts go back to eval mode before every batch, so their batch-norm running
        statistics keep the loaded values: Lightning switches modules to train mode at the start
        of fitting and restores per-module flags after each validation (measured: without this
        the frozen encoder's statistics drifted during a head-only stage)."""
        modules = dict(self.model.named_modules())
        for name in self._frozen_modules:
            modules[name].eval()

    # ------------------------------------------------------------------ forward

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        images = normalize(batch["images"])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.uses_flux:
            return self.model(images, batch["transformer_features"], batch["concept_maps"])
        return self.model(images)

    def _step(self, batch: Mapping[str, Any], split: str) -> tuple[torch.Tensor, dict]:
        outputs = self(batch)
        target = batch["masks"].float()
        if outputs["pred_masks"].shape[-2:] != target.shape[-2:]:
            # ViT models round the input down to a multiple of the patch size.
            target = torch.nn.functional.interpolate(
                target[:, None], size=outputs["pred_masks"].shape[-2:], mode="bilinear",
                align_corners=False)[:, 0]
        weights = None
        if self.iou_head_prefixes is not None and split == "train":
            # Keys are "<source name>/<id>" (a composite carries its foreground's key).
            weights = torch.tensor([key.startswith(self.iou_head_prefixes)
                                    for key in batch["key"]], device=target.device)
        loss, parts = self.criterion(outputs, target, epoch=self.current_epoch,
                                     iou_head_weights=weights)
        return loss, {"outputs": outputs, "target": target, "parts": parts}

    # ------------------------------------------------------------------ train / val

    def _log_train(self, name: str, value: torch.Tensor, batch_size: int,
                   prog_bar: bool = False) -> None:
        """``<name>_step``: this rank's value, no collective; ``<name>_epoch``: all ranks.

        Logging a step value with ``sync_dist=True`` costs one blocking all-reduce per metric
        and micro-batch (about 20 per step with gradient accumulation on top); the epoch
        aggregate is reduced once, at the end of the epoch. Names are those Lightning gives a
        metric logged with ``on_step=True, on_epoch=True``.
        """
        self.log(f"{name}_step", value, on_step=True, on_epoch=False, prog_bar=prog_bar,
                 batch_size=batch_size, sync_dist=False)
        self.log(f"{name}_epoch", value, on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, info = self._step(batch, "train")
        bs = batch["images"].shape[0]
        self._log_train("train_loss", loss.detach(), bs, prog_bar=True)
        for name, value in info["parts"].items():
            if name != "loss":
                self._log_train(f"train_{name}", value, bs)
        with torch.no_grad():
            outputs = info["outputs"]
            idx = best_mask_index(outputs)
            rows = torch.arange(bs, device=idx.device)
            probs = torch.sigmoid(outputs["pred_masks"][rows, idx].float())
            m = mask_metrics(probs, info["target"])
        self._log_train("train_iou", m["iou"].mean(), bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}
        self._val_count = 0
        self._logged_images = []

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, info = self._step(batch, "val")
        bs = batch["images"].shape[0]
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs,
                 sync_dist=True)
        for name, value in info["parts"].items():
            if name != "loss":
                self.log(f"val_{name}", value, on_step=False, on_epoch=True, batch_size=bs,
                         sync_dist=True)
        outputs = info["outputs"]
        idx = best_mask_index(outputs)
        rows = torch.arange(bs, device=idx.device)
        probs = torch.sigmoid(outputs["pred_masks"][rows, idx].float())
        m = mask_metrics(probs, info["target"])
        for k, v in m.items():
            self.log(f"val_{k}", v.mean(), on_step=False, on_epoch=True, batch_size=bs,
                     sync_dist=True, prog_bar=k == "iou")
        if self.enable_image_logging and len(self._logged_images) < self.max_images:
            self._collect_images(batch, outputs, idx, info["target"])
        return loss

    def on_validation_epoch_end(self) -> None:
        if self._logged_images:
            self._write_image_grid()

    # ------------------------------------------------------------------ images

    def _collect_images(self, batch, outputs, idx, target) -> None:
        images = batch["images"].float() / 255.0
        probs = torch.sigmoid(outputs["pred_masks"].float())
        for b in range(images.shape[0]):
            if len(self._logged_images) >= self.max_images:
                break
            tiles = [images[b]]
            for n in range(probs.shape[1]):
                tile = probs[b, n].expand(3, -1, -1).clone()
                if n == int(idx[b]):
                    tile[1] = torch.maximum(tile[1], torch.full_like(tile[1], 0.25))
                tiles.append(tile)
            tiles.append(target[b].float().expand(3, -1, -1))
            h = min(t.shape[-2] for t in tiles)
            w = min(t.shape[-1] for t in tiles)
            self._logged_images.append(torch.cat([t[:, :h, :w].cpu() for t in tiles], dim=2))

    def _write_image_grid(self) -> None:
        grid = torch.cat(self._logged_images, dim=1).clamp(0, 1)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("val_images", grid, global_step=self.global_step)

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = self.config["optimizer"]
        lr = float(opt_cfg["lr"])
        head_mult = float(opt_cfg.get("head_lr_multiplier", 10.0))
        encoder = getattr(self.model, "encoder", None)
        enc_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        # Frozen parameters stay in their group (AdamW skips tensors without a gradient), so the
        # optimizer state of a checkpoint fits whatever is frozen when the run resumes.
        enc_params = [p for p in self.model.parameters() if id(p) in enc_ids]
        head_params = [p for p in self.model.parameters() if id(p) not in enc_ids]
        groups = [{"params": head_params, "lr": lr * head_mult, "name": "head"}]
        if enc_params:
            groups.insert(0, {"params": enc_params, "lr": lr, "name": "encoder"})
        optimizer = torch.optim.AdamW(
            groups, lr=lr, weight_decay=float(opt_cfg.get("weight_decay", 0.05)),
            betas=tuple(opt_cfg.get("betas", (0.9, 0.999))), eps=float(opt_cfg.get("eps", 1e-8)),
        )
        scheduler = build_scheduler(self.config["scheduler"], optimizer)
        interval = self.config["scheduler"].get("interval", "epoch")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def build_scheduler(cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer):
    """``schedulers`` + ``milestones`` -> SequentialLR (published layout), else one scheduler."""
    cfg = dict(cfg)
    if cfg.get("schedulers"):
        parts = [instantiate(dict(s), optimizer=optimizer) for s in cfg["schedulers"]]
        if len(parts) == 1:
            return parts[0]
        return torch.optim.lr_scheduler.SequentialLR(optimizer, parts,
                                                     milestones=list(cfg["milestones"]))
    if cfg.get("_target_"):
        node = {k: v for k, v in cfg.items() if k != "interval"}
        return instantiate(node, optimizer=optimizer)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def epochs_after(total: Any, constant: Any) -> int:
    """``max(1, total - constant)``: cosine length after the constant phase (Hydra resolver)."""
    return max(1, int(total) - int(constant))

