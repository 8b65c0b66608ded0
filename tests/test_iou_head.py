"""The mask-statistics IoU head (s3od-lite v4) and the head-only training stage behind it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3od.hub import infer_config, save_checkpoint
from s3od.modeling import LiteSegmentation
from s3od.modeling.heads import MaskStatisticsIoUHead

SMALL = {"features": 16, "mask_upsample_features": 16, "mask_inter_features": 8,
         "iou_head": "mask_statistics", "iou_hidden": 16}


def _square(side: int, lo: int, hi: int) -> torch.Tensor:
    m = torch.zeros(side, side)
    m[lo:hi, lo:hi] = 1.0
    return m


def test_statistics_of_known_maps():
    side = 40
    centred = _square(side, 10, 30)                   # 20x20 in the middle: area 0.25
    full = torch.ones(side, side)                     # the whole image, touching every border
    checker = (torch.arange(side)[:, None] + torch.arange(side)[None]) % 2
    probs = torch.stack([centred, full, checker.float()])[None]
    stats = MaskStatisticsIoUHead.mask_statistics(probs)[0]
    area, softness, border, agree, log_area, ragged, centre, spread = stats.T
    assert area.tolist() == pytest.approx([0.25, 1.0, 0.5])
    assert softness.tolist() == pytest.approx([0.0, 0.0, 0.0])      # hard maps
    assert border[0] == 0 and border[1] == 1
    # the centred square against the full image: 400 / 1600; against the checkerboard it
    # shares 200 of its 400 pixels: 200 / (400 + 800 - 200)
    assert agree[0] == pytest.approx((0.25 + 0.2) / 2)
    assert log_area[0] == pytest.approx(math.log(0.25) / 10)
    assert ragged[2] > 10 * ragged[0]                 # a checkerboard is all boundary
    assert centre[0] == pytest.approx(0.0, abs=1e-5) and centre[1] == pytest.approx(0, abs=1e-5)
    assert spread[1] > spread[0] > 0                  # the full map spreads further
    shifted = _square(side, 0, 20)[None, None]         # top-left corner
    corner = MaskStatisticsIoUHead.mask_statistics(shifted)[0, 0]
    assert corner[6] > 0.5 and corner[2] > 0


def test_soft_maps_are_softer():
    soft = torch.full((1, 1, 8, 8), 0.5)
    assert MaskStatisticsIoUHead.mask_statistics(soft)[0, 0, 1] == pytest.approx(1.0)


def test_head_scores_each_candidate_from_its_own_map_and_never_moves_the_masks():
    torch.manual_seed(0)
    head = MaskStatisticsIoUHead(num_masks=3, hidden=16)
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    scores = head(logits)
    assert scores.shape == (2, 3)
    scores.sum().backward()
    assert logits.grad is None                        # detached: ranking cannot change masks
    # Changing one candidate's map changes that candidate's score.
    edited = logits.detach().clone()
    edited[0, 1] = -10.0
    new = head(edited)
    assert not torch.allclose(new[0, 1], scores[0, 1].detach())
    assert torch.allclose(new[1], scores[1].detach())  # the other image is untouched


def test_model_forward_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = LiteSegmentation(**SMALL).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out["pred_iou"].shape == (1, 3)
    arch, config = infer_config(model.state_dict())
    assert arch == "lite" and config["iou_head"] == "mask_statistics"
    assert config["iou_hidden"] == 16 and config["num_masks"] == 3

    from s3od import BackgroundRemoval

    path = save_checkpoint(model.state_dict(), tmp_path / "m.safetensors", "lite", SMALL)
    remover = BackgroundRemoval(path, image_size=64, device="cpu")
    result = remover.remove_background(np.full((48, 80, 3), 120, np.uint8))
    assert len(result.all_ious) == 3 and result.best_index == int(np.argmax(result.all_ious))


def test_unknown_iou_head_is_refused():
    with pytest.raises(ValueError, match="iou_head"):
        LiteSegmentation(features=16, iou_head="pooled")


def test_onnx_export_of_the_mask_statistics_head_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    pytest.importorskip("onnxscript", reason="needs the [onnx] extra")
    from s3od.export import export_onnx

    torch.manual_seed(0)
    model = LiteSegmentation(**SMALL).eval()
    with torch.no_grad():  # make the head's scores differ between candidates and images
        for p in model.seg_head.classifier_head.parameters():
            p.mul_(4)
    report = export_onnx(model, tmp_path / "m.onnx", image_size=64, verify=True)
    # PyTorch against ONNX Runtime: the raw scores, and the IoUs a user gets for real photos.
    assert report.max_abs_diff["network_ious"] < 1e-4
    assert report.max_abs_diff["ious"] < 1e-4


# ----------------------------------------------------------------------------- training


def test_loss_hard_target_with_bce():
    from synth_sod.model_training.loss import MultiMaskLoss, hard_iou

    target = torch.zeros(1, 8, 8)
    target[0, :4] = 1                                  # top half
    logits = torch.full((1, 3, 8, 8), -5.0)
    logits[0, 0, :4] = 5                               # exact
    logits[0, 1] = 5                                   # everything: IoU 0.5
    logits[0, 2, :2] = 5                               # a quarter: IoU 0.5
    assert hard_iou(logits, target)[0].tolist() == pytest.approx([1.0, 0.5, 0.5])
    crit = [{"name": "iou", "loss": {"type": "iou"}, "weight": 0.0}]
    loss = MultiMaskLoss(crit, iou_head_weight=1.0, iou_head_target="hard",
                         iou_head_criterion="bce", full_mask_lambda=0.0)
    pred_iou = torch.zeros(1, 3)
    total, parts = loss({"pred_masks": logits, "pred_iou": pred_iou}, target)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        pred_iou, torch.tensor([[1.0, 0.5, 0.5]]))
    assert parts["mse_ious_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(float(expected), rel=1e-5)  # mask terms weigh 0
    with pytest.raises(ValueError, match="iou_head_target"):
        MultiMaskLoss(crit, iou_head_target="smooth")
    with pytest.raises(ValueError, match="iou_head_criterion"):
        MultiMaskLoss(crit, iou_head_criterion="l1")


def test_head_only_stage_leaves_every_other_tensor_and_bn_statistic_alone():
    """Through Lightning's own fit loop (with validation in between, after which Lightning
    restores per-module training flags): only the IoU head's tensors may change."""
    pl = pytest.importorskip("lightning.pytorch")
    from synth_sod.model_training.lightning_module import SegmentationLightningModule

    from .test_training_devices import compose_plain

    cfg = compose_plain("model=lite_v4", "loss=iou_head_only", "dataset=folders",
                        "dataset.datasets=[a]", "backend=cpu", "scheduler=constant")
    cfg["model"]["params"].update(features=16, mask_upsample_features=16, mask_inter_features=8)
    torch.manual_seed(0)
    module = SegmentationLightningModule(cfg)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("seg_head.classifier_head.") for n in trainable)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    samples = [{"images": torch.randint(0, 255, (3, 64, 64), generator=gen).float(),
                "masks": (torch.rand(64, 64, generator=gen) > 0.5).float()} for _ in range(6)]
    train_loader = torch.utils.data.DataLoader(samples, batch_size=2)
    val_loader = torch.utils.data.DataLoader(samples[:2], batch_size=2)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    assert not module.model.encoder.training                 # frozen parts stay in eval mode
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("seg_head.classifier_head.") for k in changed)


def test_trainable_prefix_that_names_nothing_is_an_error():
    from synth_sod.model_training.models import train_only

    model = LiteSegmentation(**SMALL)
    with pytest.raises(ValueError, match="names no module"):
        train_only(model, ["seg_head.clasifier_head"])
    frozen = train_only(model, ["seg_head.classifier_head"])
    assert "encoder" in frozen and "seg_head.scratch" in frozen
    assert "seg_head" not in frozen                          # a parent of the trained head


def _two_samples() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    outputs = {"pred_masks": torch.randn(2, 3, 16, 16, generator=gen),
               "pred_iou": torch.randn(2, 3, generator=gen, requires_grad=True)}
    target = (torch.rand(2, 16, 16, generator=gen) > 0.5).float()
    return outputs, target


def test_iou_head_weights_leave_teacher_samples_out_of_the_head_term():
    """Weight 0 for sample 1: the head term is sample 0's alone and sample 1's scores get no
    gradient; the mask terms still use both samples."""
    from synth_sod.model_training.loss import MultiMaskLoss

    crit = MultiMaskLoss([{"name": "bce", "loss": {"type": "bce"}}], iou_head_weight=1.0,
                         iou_head_target="hard", iou_head_criterion="bce")
    outputs, target = _two_samples()
    total, parts = crit(outputs, target, iou_head_weights=torch.tensor([True, False]))
    alone = {"pred_masks": outputs["pred_masks"][:1], "pred_iou": outputs["pred_iou"][:1]}
    _, parts_alone = crit(alone, target[:1])
    _, parts_all = crit(outputs, target)
    assert parts["mse_ious_loss"] == pytest.approx(float(parts_alone["mse_ious_loss"]), rel=1e-6)
    assert parts["mse_ious_loss"] != pytest.approx(float(parts_all["mse_ious_loss"]), rel=1e-3)
    assert parts["bce_best"] == pytest.approx(float(parts_all["bce_best"]))
    total.backward()
    grad = outputs["pred_iou"].grad
    assert torch.all(grad[1] == 0) and torch.all(grad[0] != 0)
    with pytest.raises(ValueError, match="iou_head_weights must have shape"):
        crit(outputs, target, iou_head_weights=torch.ones(3))


def test_only_the_named_sources_teach_the_iou_head():
    """``loss.iou_head_sources``: the training step weights samples by their key's source."""
    from synth_sod.model_training.lightning_module import SegmentationLightningModule

    from .test_training_devices import compose_plain

    cfg = compose_plain("model=lite_v4", "loss=bce_iou_head", "dataset=folders",
                        "dataset.datasets=[a]", "backend=cpu", "scheduler=constant",
                        "+loss.iou_head_sources=[real-a,real-b]")
    cfg["model"]["params"].update(features=16, mask_upsample_features=16, mask_inter_features=8)
    module = SegmentationLightningModule(cfg)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, outputs, target, epoch=0, iou_head_weights=None):
            seen.append(iou_head_weights)
            return outputs["pred_masks"].sum() * 0, {}

    module.criterion = Spy()
    batch = {"images": torch.zeros(4, 3, 32, 32), "masks": torch.zeros(4, 32, 32),
             "key": ["real-a/1", "pseudo-unlabeled/imagenet/2", "real-b/3", "real-ab/4"]}
    module._step(batch, "train")
    module._step(batch, "val")
    assert seen[0].tolist() == [True, False, True, False]
    assert seen[1] is None                             # validation reports every sample


def test_iou_head_sources_must_name_training_sources():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from synth_sod.model_training.train import check_iou_head_sources

    train_set = SimpleNamespace(sources=[SimpleNamespace(name="real-a"),
                                         SimpleNamespace(name="pseudo-unlabeled")])
    good = OmegaConf.create({"loss": {"iou_head_sources": ["real-a"]}})
    check_iou_head_sources(good, train_set)
    bad = OmegaConf.create({"loss": {"iou_head_sources": ["real-a", "rael-b"]}})
    with pytest.raises(ValueError, match=r"unknown training sources \['rael-b'\]"):
        check_iou_head_sources(bad, train_set)
