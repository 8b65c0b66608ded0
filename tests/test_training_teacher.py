"""FLUX teacher: feature files -> dataset -> Lightning step; unused DINO parts stay frozen."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lightning")
cv2 = pytest.importorskip("cv2")
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from synth_sod.model_training.data import (  # noqa: E402
    DataConfigError,
    FluxFeatureDataset,
    scan_folder,
)
from synth_sod.model_training.flux_teacher import FluxDPTSegmentation  # noqa: E402
from synth_sod.model_training.lightning_module import SegmentationLightningModule  # noqa: E402

TINY_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                "num_attention_heads": 2, "num_register_tokens": 4, "patch_size": 16}
TEACHER_PARAMS = {"encoder_config": TINY_ENCODER, "layer_indices": [1, 2, 3, 4], "features": 16,
                  "out_channels": [8, 16, 32, 32], "num_masks": 1,
                  "flux_feature_dims": [24, 24, 24, 24]}


def _make_set(root, n=3, grid=(4, 5), dim=24):
    (root / "DUTS-TR" / "images").mkdir(parents=True)
    (root / "DUTS-TR" / "masks").mkdir()
    feats = root / "flux" / "features"
    feats.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
        mask = np.zeros((50, 70), np.uint8)
        mask[10:40, 20:50] = 255
        cv2.imwrite(str(root / "DUTS-TR" / "images" / f"im{i}.jpg"), img)
        cv2.imwrite(str(root / "DUTS-TR" / "masks" / f"im{i}.png"), mask)
        if i == n - 1:
            continue  # one image without features is dropped
        arrays = {"category": rng.random(grid, dtype=np.float32),
                  "background": rng.random(grid, dtype=np.float32)}
        for k in range(4):
            arrays[f"layer_{k}"] = rng.standard_normal((grid[0] * grid[1], dim)).astype(
                np.float16)
        np.savez_compressed(feats / f"DUTS-TR_im{i}.npz", **arrays)
    return root


def test_flux_feature_dataset_and_training_step(tmp_path):
    root = _make_set(tmp_path)
    ds = FluxFeatureDataset([scan_folder(root / "DUTS-TR")], root / "flux")
    assert len(ds) == 2
    item = ds[0]
    assert item["images"].shape == (3, 64, 80)  # 16 x the 4x5 concept grid
    assert item["masks"].shape == (64, 80)
    assert [f.shape for f in item["transformer_features"]] == [(20, 24)] * 4

    config = {
        "model": {"architecture": "flux_teacher", "pretrained": False, "params": TEACHER_PARAMS},
        "loss": {"criterions": [
            {"name": "focal_loss", "weight": 20.0, "loss": {"type": "focal"}},
            {"name": "iou_loss", "weight": 1.0, "loss": {"type": "iou"}}]},
        "optimizer": {"lr": 1e-3}, "scheduler": {"schedulers": []},
    }
    module = SegmentationLightningModule(config)
    assert module.uses_flux
    batch = next(iter(DataLoader(ds, batch_size=1)))
    out = module(batch)
    assert out["pred_masks"].shape == (1, 1, 64, 80)
    loss, info = module._step(batch, "train")
    assert set(info["parts"]) == {"focal_loss", "iou_loss", "mse_ious_loss", "loss"}
    loss.backward()
    model = module.model
    assert model.encoder is None  # the ViT never runs with use_dino_features=False
    assert all(p.grad is None for p in model.seg_head.projects.parameters())
    assert model.seg_head.fusion_modules[0].flux_projection[0].weight.grad is not None
    # every trainable parameter receives a gradient: DDP needs no find_unused_parameters
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_dino_branch_variant_runs_encoder():
    torch.manual_seed(0)
    model = FluxDPTSegmentation(**{**TEACHER_PARAMS, "use_dino_features": True})
    x = torch.randn(1, 3, 64, 64)
    feats = [torch.randn(1, 16, 24) for _ in range(4)]
    maps = {"category": torch.rand(1, 4, 4), "background": torch.rand(1, 4, 4)}
    out = model(x, feats, maps)
    out["pred_masks"].sum().backward()
    assert next(model.encoder.parameters()).grad is not None


def test_missing_feature_folder_is_clear(tmp_path):
    root = _make_set(tmp_path)
    with pytest.raises(DataConfigError, match="does not exist"):
        FluxFeatureDataset([scan_folder(root / "DUTS-TR")], tmp_path / "nope")


def test_unused_encoder_is_not_built_and_published_weights_still_load(tmp_path):
    """use_dino_features=False: no ViT on the device; checkpoints holding one load anyway."""
    from s3od.hub import save_checkpoint
    from s3od.modeling.encoders.dinov3 import build_dinov3, load_dinov3_config
    from synth_sod.data_generation.teacher import load_teacher

    torch.manual_seed(0)
    model = FluxDPTSegmentation(**TEACHER_PARAMS)
    assert model.encoder is None
    assert not any(k.startswith("encoder.") for k in model.state_dict())
    vit = build_dinov3(load_dinov3_config(TINY_ENCODER))
    published = {**model.state_dict(),
                 **{f"encoder.{k}": v for k, v in vit.state_dict().items()}}
    fresh = FluxDPTSegmentation(**TEACHER_PARAMS)
    fresh.load_state_dict(published, strict=True)  # encoder.* dropped, the rest must fit
    key = "seg_head.fusion_modules.0.flux_projection.0.weight"
    assert torch.equal(fresh.state_dict()[key], published[key])
    # through the Lightning module too (checkpoint keys carry the "model." prefix)
    module = SegmentationLightningModule({
        "model": {"architecture": "flux_teacher", "params": TEACHER_PARAMS},
        "loss": {"criterions": [{"name": "iou_loss", "loss": {"type": "iou"}}]},
        "optimizer": {"lr": 1e-3}, "scheduler": {"schedulers": []}})
    module.load_state_dict({f"model.{k}": v for k, v in published.items()}, strict=True)
    # and the data-generation loader, from a checkpoint file
    path = save_checkpoint(published, tmp_path / "teacher.safetensors", "flux_teacher",
                           TEACHER_PARAMS)
    loaded = load_teacher(path)
    assert loaded.encoder is None
    assert torch.equal(loaded.state_dict()[key], published[key])
