"""Losses of synth_sod.model_training: best-of-N, decay, IoU-head targets, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from synth_sod.model_training.loss import (
    FocalLoss,
    IoULoss,
    MultiMaskLoss,
    SSIMLoss,
    full_mask_weight,
    soft_iou,
)

from .conftest import needs_shared, shared_pairs

FOCAL_IOU = [
    {"name": "focal_loss", "weight": 20.0, "loss": {"type": "focal"}},
    {"name": "iou_loss", "weight": 1.0, "loss": {"type": "iou"}},
]


def _target(b=2, h=16, w=16):
    y = torch.zeros(b, h, w)
    y[:, 4:12, 4:12] = 1.0
    return y


def _logits_for(prob_maps):
    return torch.logit(prob_maps.clamp(1e-4, 1 - 1e-4))


def test_best_of_n_picks_highest_iou_mask():
    y = _target()
    good = y.clone()
    shifted = torch.roll(y, shifts=4, dims=2)
    empty = torch.zeros_like(y)
    # candidate order differs per sample: the good mask is index 2 for sample 0, 0 for sample 1
    probs = torch.stack([torch.stack([shifted[0], empty[0], good[0]]),
                         torch.stack([good[1], shifted[1], empty[1]])])
    logits = _logits_for(probs)
    ious = soft_iou(torch.sigmoid(logits), y)
    assert ious.argmax(1).tolist() == [2, 0]

    crit = MultiMaskLoss(FOCAL_IOU, full_mask_lambda=0.0)
    _, parts = crit({"pred_masks": logits, "pred_iou": torch.zeros(2, 3)}, y)
    # with no all-mask term the loss is the good mask's loss, i.e. nearly zero IoU loss
    assert parts["iou_loss_best"] < 1e-3
    assert parts["iou_loss_full"] > 0.3
    assert parts["best_iou"] > 0.999


def test_best_of_n_gradient_reaches_only_best_mask_without_full_term():
    y = _target(1)
    probs = torch.stack([torch.roll(y[0], 3, 1), y[0] * 0.8, torch.zeros_like(y[0])])[None]
    logits = _logits_for(probs).requires_grad_(True)
    crit = MultiMaskLoss(FOCAL_IOU, iou_head_weight=0.0, full_mask_lambda=0.0)
    loss, _ = crit({"pred_masks": logits}, y)
    loss.backward()
    per_mask = logits.grad.abs().flatten(2).sum(-1)[0]
    assert per_mask[1] > 0 and per_mask[0] == 0 and per_mask[2] == 0


def test_full_mask_decay_schedule():
    assert full_mask_weight(0, 0.1, 0.2) == pytest.approx(0.1)
    assert full_mask_weight(10, 0.1, 0.2) == pytest.approx(0.1 * math.exp(-2.0))
    assert full_mask_weight(10, 0.1, 0.2) == pytest.approx(0.01353, abs=1e-5)
    assert full_mask_weight(20, 0.1, 0.2) == pytest.approx(0.00183, abs=1e-5)
    y = _target()
    logits = torch.randn(2, 3, 16, 16)
    crit = MultiMaskLoss(FOCAL_IOU, iou_head_weight=0.0, full_mask_lambda=0.1, decay_rate=0.2)
    for epoch in (0, 5, 20):
        total, parts = crit({"pred_masks": logits}, y, epoch=epoch)
        lam = full_mask_weight(epoch, 0.1, 0.2)
        expect = sum(w * (parts[f"{n}_best"] + lam * parts[f"{n}_full"])
                     for n, w in (("focal_loss", 20.0), ("iou_loss", 1.0)))
        assert float(total) == pytest.approx(float(expect), rel=1e-5)
        assert float(parts["full_mask_lambda"]) == pytest.approx(lam)


def test_iou_head_targets_are_measured_soft_ious():
    torch.manual_seed(0)
    y = (torch.rand(2, 16, 16) > 0.5).float()
    logits = torch.randn(2, 3, 16, 16)
    pred_iou = torch.randn(2, 3)
    crit = MultiMaskLoss(FOCAL_IOU, iou_head_weight=0.05)
    _, parts = crit({"pred_masks": logits, "pred_iou": pred_iou}, y)
    p = torch.sigmoid(logits)
    manual = torch.zeros(2, 3)
    for b in range(2):
        for n in range(3):
            inter = (p[b, n] * y[b]).sum()
            manual[b, n] = (inter + 1e-6) / ((y[b] ** 2).sum() + (p[b, n] ** 2).sum() - inter
                                             + 1e-6)
    expected = torch.mean((torch.sigmoid(pred_iou) - manual) ** 2)
    assert float(parts["mse_ious_loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_single_mask_uses_plain_loss_and_ssim_variant_works():
    y = _target(3)
    logits = torch.randn(3, 1, 16, 16)
    crit = MultiMaskLoss([
        {"name": "bce_loss", "weight": 30.0, "loss": {"type": "bce"}},
        {"name": "iou_loss", "weight": 0.5, "loss": {"type": "iou"}},
        {"name": "ssim_loss", "weight": 10.0, "loss": {"type": "ssim"}},
    ])
    total, parts = crit({"pred_masks": logits, "pred_iou": torch.zeros(3, 1)}, y)
    # plain (not best-of-N) mask terms; the IoU head still learns the one mask's IoU
    assert set(parts) == {"bce_loss", "iou_loss", "ssim_loss", "mse_ious_loss", "loss"}
    assert torch.isfinite(total)
    assert float(SSIMLoss(reduction="mean")(torch.full((2, 8, 8), 20.0), torch.ones(2, 8, 8))) \
        == pytest.approx(0.0, abs=1e-4)


def test_focal_and_iou_values():
    y = torch.tensor([[1.0, 0.0]])
    z = torch.tensor([[0.0, 0.0]])
    bce = math.log(2)
    expected = 0.25 * (1 - math.exp(-bce)) ** 2 * bce
    assert float(FocalLoss(reduction="mean")(z, y)) == pytest.approx(expected, rel=1e-5)
    published = FocalLoss(reduction="mean", on_probabilities=True)(z, y)
    assert float(published) != pytest.approx(expected, rel=1e-3)  # double sigmoid differs
    assert float(IoULoss(reduction="mean")(torch.tensor([[50.0, -50.0]]), y)) == pytest.approx(
        0.0, abs=1e-5)


@pytest.fixture
def one_thread():
    """Busy shared CPUs make 2-thread OpenMP crawl; one thread is fast and predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@needs_shared
def test_loss_goes_down_on_a_fixed_real_batch(one_thread):
    import cv2

    from s3od.modeling import LiteSegmentation
    from s3od.transforms import normalize

    images, masks = [], []
    for img_path, mask_path in shared_pairs("sod-bsds300", limit=4):
        img = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB)
        images.append(cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        masks.append(cv2.resize(mask, (64, 64), interpolation=cv2.INTER_AREA))
    x = normalize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    y = torch.from_numpy(np.stack(masks)).float() / 255.0
    torch.manual_seed(0)
    model = LiteSegmentation(features=16, mask_upsample_features=16, mask_inter_features=8)
    crit = MultiMaskLoss(FOCAL_IOU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("model_cfg", [
    {"architecture": "lite", "params": {"features": 16, "mask_upsample_features": 16,
                                        "mask_inter_features": 8}},
    {"architecture": "dpt_dinov3", "params": {
        "encoder_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                           "num_attention_heads": 2, "num_register_tokens": 4},
        "layer_indices": [1, 2, 3, 4], "features": 16, "out_channels": [8, 16, 32, 32],
        "num_masks": 3}},
])
def test_every_trainable_parameter_gets_a_gradient(model_cfg, one_thread):
    """What DDP (without find_unused_parameters) requires."""
    from synth_sod.model_training.models import build_training_model

    torch.manual_seed(0)
    model = build_training_model(model_cfg)
    out = model(torch.randn(2, 3, 64, 64))
    loss, _ = MultiMaskLoss(FOCAL_IOU)(out, _target(2, 64, 64))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_iou_rank_term_pulls_the_truly_best_candidate_up():
    """The ranking term is lower when the head scores the best candidate highest, and its
    gradient raises the best candidate's score and lowers the others'."""
    y = _target(b=1)
    probs = torch.stack([torch.stack([torch.roll(y[0], 4, 1), y[0], torch.zeros_like(y[0])])])
    logits = _logits_for(probs)  # candidate 1 is the truly best
    crit = MultiMaskLoss(FOCAL_IOU, iou_head_weight=0.0, iou_rank_weight=1.0)
    right = torch.tensor([[0.0, 2.0, -2.0]])
    wrong = torch.tensor([[2.0, 0.0, -2.0]], requires_grad=True)
    _, good = crit({"pred_masks": logits, "pred_iou": right}, y)
    total, bad = crit({"pred_masks": logits, "pred_iou": wrong}, y)
    assert good["iou_rank_loss"] < bad["iou_rank_loss"]
    total.backward()
    assert wrong.grad[0, 1] < 0 < wrong.grad[0, 0]  # descent raises 1, lowers 0
    off = MultiMaskLoss(FOCAL_IOU, iou_head_weight=0.0)
    _, parts = off({"pred_masks": logits, "pred_iou": wrong.detach()}, y)
    assert "iou_rank_loss" not in parts  # published behaviour unless asked for
