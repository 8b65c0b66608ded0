"""The mask teacher: load it, feed it an image with its FLUX features and concept maps.

The teacher is ``FluxDPTSegmentation`` from the training package (architecture name
``flux_teacher``), called as ``teacher(images, transformer_features, concept_maps)`` with

* ``images``: ``(B, 3, H, W)`` ImageNet-normalised float32 at the generated resolution,
* ``transformer_features``: 4 tensors ``(B, (H/16)·(W/16), 768)``,
* ``concept_maps``: ``{"category": (B, H/16, W/16), "background": (B, H/16, W/16)}``,

returning ``{"pred_masks": (B, N, H, W) logits, "pred_iou": (B, N) logits, ...}``.
:class:`ConceptMapTeacher` (architecture ``concept_map``) is a parameter-light stand-in with the
same interface that turns the concept maps straight into a mask: a baseline for a first round
before any teacher is trained, and what the pipeline tests run with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from s3od.transforms import normalize
from synth_sod.data_generation.concept_attention import ConceptMaps
from synth_sod.data_generation.sharding import PipelineError

TEACHER_ARCHITECTURES = ("flux_teacher", "concept_map")


class ConceptMapTeacher(torch.nn.Module):
    """Mask logits = ``scale · (category − background) + bias``, bilinearly upsampled.

    Needs no training; with the published joint min–max maps a token is "object" when the
    tag map exceeds the background map.
    """

    def __init__(self, scale: float = 8.0, bias: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("bias", torch.tensor(float(bias)))

    def forward(self, images: torch.Tensor, transformer_features: list[torch.Tensor],
                concept_maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        diff = (concept_maps["category"] - concept_maps["background"]).unsqueeze(1).float()
        logits = F.interpolate(diff, size=images.shape[-2:], mode="bilinear",
                               align_corners=False) * self.scale + self.bias
        return {"pred_masks": logits, "pred_iou": logits.new_zeros(logits.shape[0], 1)}


def load_teacher(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the teacher a checkpoint describes and load its weights (strict).

    Checkpoints are those of ``s3od.hub.save_checkpoint`` (architecture and constructor
    parameters stored with the weights), as the training package exports them.
    """
    from s3od.errors import S3ODError
    from s3od.hub import load_checkpoint

    if not Path(path).is_file():
        raise PipelineError(f"teacher checkpoint not found: {path}")
    try:
        state, arch, config = load_checkpoint(path)
    except S3ODError as err:
        raise PipelineError(str(err)) from err
    if arch == "concept_map":
        model: torch.nn.Module = ConceptMapTeacher(**config)
    elif arch == "flux_teacher":
        try:
            from synth_sod.model_training.models import build_training_model
        except ImportError as err:  # pragma: no cover - depends on the training extra
            raise PipelineError(f"the flux_teacher needs the training package: {err}") from err
        model = build_training_model({"architecture": arch, "params": config})
    else:
        raise PipelineError(f"{path}: architecture {arch!r} is not a mask teacher "
                            f"(expected one of {TEACHER_ARCHITECTURES})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PipelineError(f"{path}: weights do not fit {arch}: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    return model.to(device).eval()


@torch.inference_mode()
def predict_mask(teacher: torch.nn.Module, image: np.ndarray, features: list[torch.Tensor],
                 maps: ConceptMaps, index: int = 0) -> np.ndarray:
    """Soft mask ``(H, W)`` float32 in [0, 1] for image ``index`` of a FLUX result.

    ``image`` is ``(H, W, 3)`` uint8 RGB at the generated resolution (no resize, as published).
    With several candidate masks the one with the highest predicted IoU is kept.
    """
    device = next((p.device for p in teacher.parameters()), None) or next(
        (b.device for b in teacher.buffers()), torch.device("cpu"))
    chw = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].to(device)
    feats = [f[index:index + 1].to(device, torch.float32) for f in features]
    concept = {k: v[index:index + 1].to(device, torch.float32)
               for k, v in maps.as_teacher_input().items()}
    out = teacher(normalize(chw), feats, concept)
    logits = out["pred_masks"].float()
    best = 0
    if logits.shape[1] > 1 and "pred_iou" in out:
        best = int(out["pred_iou"][0].float().argmax())
    mask = logits[:, best:best + 1]
    if tuple(mask.shape[-2:]) != image.shape[:2]:
        mask = F.interpolate(mask, size=image.shape[:2], mode="bilinear", align_corners=False)
    return torch.sigmoid(mask)[0, 0].cpu().numpy().astype(np.float32)


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """Soft [0, 1] mask → 8-bit, ``round(p · 255)`` as published."""
    return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)
