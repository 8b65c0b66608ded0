"""Segmentation losses and the multi-mask (best-of-N) criterion.

Per-pixel losses take mask *logits* and return per-sample values ``(B,)`` or a scalar, so the
multi-mask criterion can pick, per sample, the candidate that matches the target best.

Published behaviour that is reproduced: the loss weights, the soft IoU with squared sums used to
rank candidates, the all-candidate term ``full_mask_lambda * exp(-decay_rate * epoch)``, and the
IoU head regressed (MSE on sigmoid) towards the measured soft IoU of every candidate.
Published defects that are fixed (each has a switch to get the old behaviour back, see
docs/training.md): the focal loss ran on ``sigmoid(sigmoid(z))``; SSIM broke on single-mask
batches; the IoU head of single-mask models was never trained (now it regresses the IoU of the
one mask, which leaves the mask loss unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the first."""
    return x.flatten(1).mean(1)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return x
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"unknown reduction {reduction!r}")


class FocalLoss(nn.Module):
    """Binary focal loss on logits, ``alpha * (1 - p_t)^gamma * BCE``, averaged per sample.

    ``on_probabilities=True`` reproduces the published model's training, where the loss was fed
    sigmoid outputs as if they were logits (an accidental double sigmoid).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none",
                 on_probabilities: bool = False) -> None:
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        self.on_probabilities = on_probabilities

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(logits) if self.on_probabilities else logits
        bce = F.binary_cross_entropy_with_logits(z.float(), target.float(), reduction="none")
        pt = torch.exp(-bce)
        loss = self.alpha * (1.0 - pt) ** self.gamma * bce
        return _reduce(_per_sample(loss), self.reduction)


class IoULoss(nn.Module):
    """Soft Jaccard loss ``1 - (sum p*y + s) / (sum p + sum y - sum p*y + s)`` per sample."""

    def __init__(self, smooth: float = 1e-6, reduction: str = "none") -> None:
        super().__init__()
        self.smooth, self.reduction = smooth, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float()).flatten(1)
        y = target.float().flatten(1)
        inter = (p * y).sum(1)
        union = p.sum(1) + y.sum(1) - inter
        return _reduce(1.0 - (inter + self.smooth) / (union + self.smooth), self.reduction)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (numerically safe form of BCE on sigmoid outputs)."""

    def __init__(self, reduction: str = "none") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        return _reduce(_per_sample(bce), self.reduction)


class SSIMLoss(nn.Module):
    """``1 - mean SSIM`` with an 11x11 Gaussian window (sigma 1.5), on sigmoid probabilities.

    Accepts ``(B, H, W)`` or ``(B, 1, H, W)``: the published version required 4-D input and
    failed on single-mask batches.
    """

    def __init__(self, window_size: int = 11, sigma: float = 1.5, reduction: str = "none") -> None:
        super().__init__()
        self.reduction = reduction
        self.pad = window_size // 2
        coords = torch.arange(window_size, dtype=torch.float32) - window_size // 2
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("window", (g[:, None] @ g[None, :])[None, None], persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(logits.float())
        y = target.float()
        if x.ndim == 3:
            x, y = x.unsqueeze(1), y.unsqueeze(1)
        b, c, h, w = x.shape
        x, y = x.reshape(b * c, 1, h, w), y.reshape(b * c, 1, h, w)
        win = self.window.to(x.dtype)
        mu_x = F.conv2d(x, win, padding=self.pad)
        mu_y = F.conv2d(y, win, padding=self.pad)
        sxx = F.conv2d(x * x, win, padding=self.pad) - mu_x**2
        syy = F.conv2d(y * y, win, padding=self.pad) - mu_y**2
        sxy = F.conv2d(x * y, win, padding=self.pad) - mu_x * mu_y
        c1, c2 = 0.01**2, 0.03**2
        ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / (
            (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
        )
        per = 1.0 - ssim.reshape(b, c * h * w).mean(1)
        return _reduce(per, self.reduction)


def boundary_weights(target: torch.Tensor, kernel_size: int = 31,
                     strength: float = 5.0) -> torch.Tensor:
    """``1 + strength * |local mean - target|``: large near the object's outline, 1 elsewhere.

    Plain BCE and IoU count an edge pixel like any other, and an object's inside outnumbers its
    outline by far, so a model that blurs every edge loses little. The local mean differs from
    the target only within half a window of an edge, thin parts included.
    """
    y = target.float()
    y4 = y.unsqueeze(1) if y.ndim == 3 else y
    pad = kernel_size // 2
    # A box mean is separable: a column mean of row means costs 2k per pixel instead of k^2
    # (the square window made this the most expensive operation of a training step).
    padded = F.pad(y4, (pad, pad, pad, pad), mode="replicate")
    local = F.avg_pool2d(F.avg_pool2d(padded, (kernel_size, 1), stride=1), (1, kernel_size),
                         stride=1)
    return (1.0 + strength * (local - y4).abs()).reshape(y.shape)


class BoundaryBCELoss(nn.Module):
    """BCE weighted by :func:`boundary_weights` (the weighted-BCE half of F3Net's structure
    loss), normalised by the weights' sum per sample."""

    def __init__(self, kernel_size: int = 31, strength: float = 5.0,
                 reduction: str = "none") -> None:
        super().__init__()
        self.kernel_size, self.strength, self.reduction = kernel_size, strength, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = boundary_weights(target, self.kernel_size, self.strength)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        per = (w * bce).flatten(1).sum(1) / w.flatten(1).sum(1)
        return _reduce(per, self.reduction)


class BoundaryIoULoss(nn.Module):
    """Soft IoU loss with every pixel weighted by :func:`boundary_weights`."""

    def __init__(self, kernel_size: int = 31, strength: float = 5.0, smooth: float = 1.0,
                 reduction: str = "none") -> None:
        super().__init__()
        self.kernel_size, self.strength = kernel_size, strength
        self.smooth, self.reduction = smooth, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = boundary_weights(target, self.kernel_size, self.strength).flatten(1)
        p = torch.sigmoid(logits.float()).flatten(1)
        y = target.float().flatten(1)
        inter = (w * p * y).sum(1)
        union = (w * (p + y)).sum(1) - inter
        return _reduce(1.0 - (inter + self.smooth) / (union + self.smooth), self.reduction)


LOSSES: dict[str, type[nn.Module]] = {
    "focal": FocalLoss,
    "iou": IoULoss,
    "bce": BCELoss,
    "ssim": SSIMLoss,
    "boundary_bce": BoundaryBCELoss,
    "boundary_iou": BoundaryIoULoss,
}

#: What each candidate of a role-trained model draws (``MultiMaskLoss(candidate_roles=...)``).
CANDIDATE_ROLES = ("object", "main_component", "filled")


def role_targets(target: torch.Tensor, roles: Sequence[str]) -> torch.Tensor:
    """``(B, H, W)`` soft target -> ``(B, len(roles), H, W)``, one target per candidate role.

    - ``object``: the target itself (everything the annotator or teacher kept);
    - ``main_component``: only the largest connected part of the object (at 0.5), with its soft
      edge: the answer when extra regions are a second object or attached clutter;
    - ``filled``: the object with enclosed holes filled: the answer when a hole is a see-through
      gap the user wants kept solid.

    On a photo with one solid object all three are the same mask, so the candidates differ only
    where the photo is ambiguous in one of these two ways.
    """
    from scipy import ndimage

    unknown = sorted(set(roles) - set(CANDIDATE_ROLES))
    if unknown:
        raise ValueError(f"unknown candidate roles {unknown}; expected {list(CANDIDATE_ROLES)}")
    y = target.detach().float()
    if y.ndim == 4:
        y = y[:, 0]
    out = y.unsqueeze(1).repeat(1, len(roles), 1, 1)
    if set(roles) == {"object"}:
        return out
    binary = (y > 0.5).cpu().numpy()
    structure = np.ones((3, 3), dtype=bool)
    for b in range(len(binary)):
        fg = binary[b]
        if not fg.any():
            continue
        for k, role in enumerate(roles):
            if role == "main_component":
                labels, count = ndimage.label(fg, structure=structure)
                if count <= 1:
                    continue
                sizes = np.bincount(labels.ravel())[1:]
                keep = labels == (1 + int(sizes.argmax()))
                # Keep the soft edge of that part: grow it by a few pixels before masking.
                near = ndimage.binary_dilation(keep, structure=structure, iterations=3)
                out[b, k] = y[b] * torch.from_numpy(near).to(y.device, y.dtype)
            elif role == "filled":
                filled = ndimage.binary_fill_holes(fg)
                if filled.sum() > fg.sum():
                    out[b, k] = torch.maximum(
                        y[b], torch.from_numpy(filled).to(y.device, y.dtype))
    return out.to(target.dtype)


def soft_iou(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Ranking IoU of each candidate: ``(sum yp + e) / (sum y^2 + sum p^2 - sum yp + e)``.

    ``probs (B, N, H, W)``, ``target (B, H, W)`` -> ``(B, N)``. Squared sums as published.
    """
    p = probs.float().flatten(2)
    y = target.float().flatten(1).unsqueeze(1)
    inter = (p * y).sum(-1)
    return (inter + eps) / ((y * y).sum(-1) + (p * p).sum(-1) - inter + eps)


def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of each candidate at threshold 0.5 (``logits (B, N, H, W)``, ``target (B, H, W)``):
    the quantity an evaluation ranks the candidates by. An empty prediction of an empty mask
    scores 1."""
    pred = logits > 0
    gt = (target > 0.5).unsqueeze(1)
    inter = (pred & gt).flatten(2).sum(-1).float()
    union = (pred | gt).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``(B,)`` values with per-sample weights; 0 (with a graph) when all weights are 0."""
    if weights is None:
        return per_sample.mean()
    w = weights.to(per_sample)
    return (per_sample * w).sum() / w.sum().clamp_min(1.0)


def full_mask_weight(epoch: int, full_mask_lambda: float, decay_rate: float) -> float:
    """Weight of the all-candidate term: ``full_mask_lambda * exp(-decay_rate * epoch)``."""
    return float(full_mask_lambda) * math.exp(-float(decay_rate) * float(epoch))


class MultiMaskLoss(nn.Module):
    """Weighted sum of mask criteria, best-of-N when the model predicts several candidates.

    ``criterions``: list of ``{"name", "loss": {"type", ...kwargs}, "weight"}``. The IoU-head term
    (``iou_head_weight``, published 0.05) regresses ``sigmoid(pred_iou)`` onto the measured soft
    IoU of every candidate. ``iou_rank_weight`` (0 as published) adds a ranking term: softmax
    cross-entropy of the IoU logits against the candidate that is truly best, because a regressor
    that is right on average can still rank the three candidates of one image wrongly, and the
    ranking is what picks the mask users get.

    ``iou_head_target`` ("soft" as published, or "hard": IoU at 0.5, what evaluations rank by)
    and ``iou_head_criterion`` ("mse" on ``sigmoid(pred_iou)`` as published, or "bce": binary
    cross-entropy on the logits, steeper far from the target) choose the regression. s3od-lite
    v4 trains its mask-statistics head with hard + bce (``loss=iou_head_only``).

    ``forward(..., iou_head_weights=w)`` weights the IoU-head terms per sample (``(B,)``, e.g. 0
    for samples whose mask came from a teacher): the head should learn which candidate matches
    a human mask, not which one imitates the teacher best (see ``iou_head_sources``).

    ``candidate_roles`` (e.g. ``["object", "main_component", "filled"]``, s3od-lite v6)
    replaces best-of-N: candidate k always learns :func:`role_targets`' k-th target, so the
    candidates coincide unless the photo is ambiguous in that way, instead of differing by a
    few edge pixels whichever way the best-of-N choice fell. The IoU head still learns each
    candidate's IoU against the real target: the pick is judged by that.
    """

    def __init__(
        self,
        criterions: Sequence[Mapping[str, Any]],
        iou_head_weight: float = 0.05,
        full_mask_lambda: float = 0.1,
        decay_rate: float = 0.2,
        iou_rank_weight: float = 0.0,
        iou_rank_temperature: float = 0.1,
        iou_head_target: str = "soft",
        iou_head_criterion: str = "mse",
        candidate_roles: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.candidate_roles = tuple(candidate_roles) if candidate_roles else None
        if self.candidate_roles:
            role_targets(torch.zeros(1, 1, 1), self.candidate_roles)  # validates the names
        if iou_head_target not in ("soft", "hard"):
            raise ValueError(f"iou_head_target must be 'soft' or 'hard', got {iou_head_target!r}")
        if iou_head_criterion not in ("mse", "bce"):
            raise ValueError(
                f"iou_head_criterion must be 'mse' or 'bce', got {iou_head_criterion!r}")
        self.iou_head_target = iou_head_target
        self.iou_head_criterion = iou_head_criterion
        self.names: list[str] = []
        self.weights: list[float] = []
        mods = []
        for spec in criterions:
            spec = dict(spec)
            loss_spec = dict(spec.get("loss", {}))
            kind = loss_spec.pop("type")
            if kind not in LOSSES:
                raise ValueError(f"unknown loss type {kind!r}; expected one of {sorted(LOSSES)}")
            loss_spec["reduction"] = "none"
            mods.append(LOSSES[kind](**loss_spec))
            self.names.append(str(spec["name"]))
            self.weights.append(float(spec.get("weight", 1.0)))
        if not mods:
            raise ValueError("the loss needs at least one criterion")
        self.criterions = nn.ModuleList(mods)
        self.iou_head_weight = float(iou_head_weight)
        self.full_mask_lambda = float(full_mask_lambda)
        self.decay_rate = float(decay_rate)
        self.iou_rank_weight = float(iou_rank_weight)
        self.iou_rank_temperature = float(iou_rank_temperature)

    def _iou_head_term(self, pred_iou: torch.Tensor, logits: torch.Tensor,
                       target: torch.Tensor, soft: torch.Tensor,
                       weights: torch.Tensor | None) -> torch.Tensor:
        """The IoU head's regression loss against the configured target, averaged over the
        samples with their ``weights`` (all 1 when None)."""
        if self.iou_head_target == "hard":
            with torch.no_grad():
                goal = hard_iou(logits.detach(), target)
        else:
            goal = soft
        if self.iou_head_criterion == "bce":
            per = F.binary_cross_entropy_with_logits(pred_iou.float(), goal, reduction="none")
        else:
            per = F.mse_loss(torch.sigmoid(pred_iou.float()), goal, reduction="none")
        return _weighted_mean(per.reshape(len(per), -1).mean(1), weights)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor, epoch: int = 0,
        iou_head_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = outputs["pred_masks"]
        if iou_head_weights is not None and iou_head_weights.shape != logits.shape[:1]:
            raise ValueError(f"iou_head_weights must have shape ({logits.shape[0]},), got "
                             f"{tuple(iou_head_weights.shape)}")
        if target.ndim == 4:
            target = target[:, 0]
        b, n = logits.shape[:2]
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if n == 1:
            z = logits[:, 0]
            for name, w, crit in zip(self.names, self.weights, self.criterions, strict=True):
                value = crit(z, target).mean()
                parts[name] = value.detach()
                total = total + w * value
            if self.iou_head_weight and "pred_iou" in outputs:
                # Published code skipped this, leaving the IoU head of single-mask models
                # untrained (random scores, and parameters without gradient under DDP).
                with torch.no_grad():
                    ious = soft_iou(torch.sigmoid(logits), target)
                mse = self._iou_head_term(outputs["pred_iou"], logits, target, ious,
                                          iou_head_weights)
                total = total + self.iou_head_weight * mse
                parts["mse_ious_loss"] = mse.detach()
            parts["loss"] = total.detach()
            return total, parts

        with torch.no_grad():
            ious = soft_iou(torch.sigmoid(logits), target)
            best = ious.argmax(1)
        if self.candidate_roles:
            if len(self.candidate_roles) != n:
                raise ValueError(f"{len(self.candidate_roles)} candidate roles for a model with "
                                 f"{n} candidates")
            goals = role_targets(target, self.candidate_roles)
            flat = logits.reshape(b * n, *logits.shape[2:])
            for name, w, crit in zip(self.names, self.weights, self.criterions, strict=True):
                per = crit(flat, goals.reshape_as(flat)).reshape(b, n)
                total = total + w * per.mean()
                parts[f"{name}_roles"] = per.mean().detach()
                parts[f"{name}_object"] = per[:, 0].mean().detach()
            return self._head_terms(outputs, logits, target, ious, best, iou_head_weights,
                                    total, parts, 0.0)
        lam = full_mask_weight(epoch, self.full_mask_lambda, self.decay_rate)
        flat = logits.reshape(b * n, *logits.shape[2:])
        flat_target = target.unsqueeze(1).expand(b, n, *target.shape[1:]).reshape_as(flat)
        rows = torch.arange(b, device=logits.device)
        for name, w, crit in zip(self.names, self.weights, self.criterions, strict=True):
            per = crit(flat, flat_target).reshape(b, n)
            best_term = per[rows, best].mean()
            full_term = per.mean()
            total = total + w * (best_term + lam * full_term)
            parts[f"{name}_best"] = best_term.detach()
            parts[f"{name}_full"] = full_term.detach()
        return self._head_terms(outputs, logits, target, ious, best, iou_head_weights, total,
                                parts, lam)

    def _head_terms(self, outputs: Mapping[str, torch.Tensor], logits: torch.Tensor,
                    target: torch.Tensor, ious: torch.Tensor, best: torch.Tensor,
                    iou_head_weights: torch.Tensor | None, total: torch.Tensor,
                    parts: dict[str, torch.Tensor], lam: float,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """IoU-head regression and ranking terms, and the logged summaries (multi-mask)."""
        if self.iou_head_weight and "pred_iou" in outputs:
            mse = self._iou_head_term(outputs["pred_iou"], logits, target, ious,
                                      iou_head_weights)
            total = total + self.iou_head_weight * mse
            parts["mse_ious_loss"] = mse.detach()
        if self.iou_rank_weight and "pred_iou" in outputs:
            # Scores on the IoU scale, sharpened by the temperature, so the term ranks the same
            # quantity the MSE regresses; targets are the best candidate by measured IoU.
            scores = torch.sigmoid(outputs["pred_iou"].float()) / self.iou_rank_temperature
            rank = _weighted_mean(F.cross_entropy(scores, best, reduction="none"),
                                  iou_head_weights)
            total = total + self.iou_rank_weight * rank
            parts["iou_rank_loss"] = rank.detach()
        parts["best_iou"] = ious.max(1).values.mean().detach()
        parts["gt_ious"] = ious.mean().detach()
        # On the loss's device: Lightning all-reduces every logged tensor where it lies, and
        # NCCL has no CPU backend (a CPU tensor here stopped every multi-GPU run at step 1).
        parts["full_mask_lambda"] = total.new_tensor(lam)
        parts["loss"] = total.detach()
        return total, parts


def build_loss(cfg: Mapping[str, Any]) -> MultiMaskLoss:
    """From the ``loss`` config group."""
    return MultiMaskLoss(
        criterions=cfg["criterions"],
        iou_head_weight=cfg.get("iou_head_weight", 0.05),
        full_mask_lambda=cfg.get("full_mask_lambda", 0.1),
        decay_rate=cfg.get("decay_rate", 0.2),
        iou_rank_weight=cfg.get("iou_rank_weight", 0.0),
        iou_rank_temperature=cfg.get("iou_rank_temperature", 0.1),
        iou_head_target=cfg.get("iou_head_target", "soft"),
        iou_head_criterion=cfg.get("iou_head_criterion", "mse"),
        candidate_roles=cfg.get("candidate_roles"),
    )
