"""s3od-lite v6 building blocks: the full-resolution refined mask head, candidate roles, the
boundary-weighted losses and the teacher ensemble step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from s3od.hub import infer_config, load_checkpoint, save_checkpoint
from s3od.modeling.heads import RefinedMaskHead
from s3od.modeling.segmentation import LiteSegmentation
from synth_sod.data_generation.ensemble import combine_masks, ensemble_labels
from synth_sod.data_generation.sharding import PipelineError
from synth_sod.model_training.loss import (
    BoundaryBCELoss,
    BoundaryIoULoss,
    MultiMaskLoss,
    boundary_weights,
    role_targets,
)

V6 = dict(encoder="lite2", features=16, num_masks=3, mask_upsample_features=8,
          mask_inter_features=4, mask_stride=2, refine_features=6,
          iou_head="mask_statistics", iou_hidden=8)


def _v6(**over: object) -> LiteSegmentation:
    torch.manual_seed(0)
    return LiteSegmentation(**{**V6, **over}).eval()


# ----------------------------------------------------------------------------- model


def test_refined_masks_have_the_input_resolution_and_no_transposed_convolution() -> None:
    model = _v6()
    out = model(torch.randn(2, 3, 96, 128))
    assert out["pred_masks"].shape == (2, 3, 96, 128)
    assert out["pred_iou"].shape == (2, 3)
    # The checkerboard of v5 came from a transposed convolution: none is left in the head.
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.seg_head.modules())


def test_refiner_starts_as_identity_on_the_upsampled_coarse_masks() -> None:
    head = RefinedMaskHead(features=8, num_masks=2, skip_channels=4)
    x, skip, image = torch.randn(1, 8, 8, 8), torch.randn(1, 4, 16, 16), torch.randn(1, 3, 32, 32)
    coarse = F.interpolate(head.coarse(x, skip), size=(32, 32), mode="bilinear",
                           align_corners=False)
    torch.testing.assert_close(head(x, skip, image), coarse)


def test_refiner_sees_the_photo() -> None:
    """Once trained (here: non-zero last layer), a change of the image at full resolution
    changes the masks there, which is how edges can follow the photo."""
    head = RefinedMaskHead(features=8, num_masks=2, skip_channels=4)
    nn.init.normal_(head.refine[-1].weight, std=0.5)
    x, skip = torch.randn(1, 8, 8, 8), torch.randn(1, 4, 16, 16)
    image = torch.zeros(1, 3, 32, 32)
    edited = image.clone()
    edited[..., 20:, 20:] = 3.0
    diff = (head(x, skip, image) - head(x, skip, edited)).abs()[0, 0]
    assert diff[20:, 20:].max() > 1e-3
    assert diff[:10, :10].max() == 0  # far from the edit (beyond the refiner's reach)


def test_refined_head_needs_a_stride_two_skip() -> None:
    with pytest.raises(ValueError, match="mask_stride=2"):
        LiteSegmentation(**{**V6, "mask_stride": 1})


def test_bare_v6_state_dict_is_recognised(tmp_path) -> None:
    model = _v6()
    arch, config = infer_config(model.state_dict())
    assert arch == "lite"
    assert config["refine_features"] == 6 and config["mask_stride"] == 2
    assert config["encoder"] == "lite2" and config["mask_upsample_features"] == 8
    rebuilt = LiteSegmentation(**config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_v6_export_round_trip_keeps_the_outputs(tmp_path) -> None:
    model = _v6()
    path = save_checkpoint(model.state_dict(), tmp_path / "v6.safetensors", "lite",
                           {**V6, "image_size": 96})
    state, arch, stored = load_checkpoint(path)
    assert arch == "lite" and stored["image_size"] == 96
    config = {k: v for k, v in stored.items() if k != "image_size"}
    loaded = LiteSegmentation(**config).eval()
    loaded.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["pred_masks"], model(x)["pred_masks"])


# ----------------------------------------------------------------------------- roles


def _two_parts_with_hole() -> torch.Tensor:
    y = torch.zeros(1, 40, 40)
    y[0, 5:20, 5:20] = 1.0  # the main part (225 px) ...
    y[0, 10:13, 10:13] = 0.0  # ... with a 9-px hole
    y[0, 28:34, 28:34] = 1.0  # a second, smaller part (36 px)
    return y


def test_role_targets_split_parts_and_fill_holes() -> None:
    y = _two_parts_with_hole()
    t = role_targets(y, ["object", "main_component", "filled"])
    assert t.shape == (1, 3, 40, 40)
    torch.testing.assert_close(t[0, 0], y[0])
    assert t[0, 1].sum().item() == 225 - 9  # the second part is gone
    assert t[0, 1, 30, 30] == 0 and t[0, 1, 6, 6] == 1
    assert t[0, 2].sum().item() == 225 + 36  # the hole is filled, both parts stay
    assert t[0, 2, 11, 11] == 1


def test_role_targets_coincide_on_one_solid_object() -> None:
    y = torch.zeros(2, 30, 30)
    y[0, 5:25, 8:20] = 1.0
    t = role_targets(y, ["object", "main_component", "filled"])
    for k in (1, 2):
        torch.testing.assert_close(t[:, k], t[:, 0])


def test_main_component_keeps_the_soft_edge() -> None:
    y = torch.zeros(1, 30, 30)
    y[0, 5:20, 5:20] = 1.0
    y[0, 5:20, 20] = 0.3  # a soft rim (below 0.5) next to the main part
    y[0, 25:28, 25:28] = 1.0
    t = role_targets(y, ["main_component"])
    assert t[0, 0, 10, 20].item() == pytest.approx(0.3)
    assert t[0, 0, 26, 26] == 0


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown candidate roles"):
        MultiMaskLoss([{"name": "bce", "loss": {"type": "bce"}}], candidate_roles=["biggest"])


def test_role_loss_rewards_each_candidate_for_its_own_target() -> None:
    y = _two_parts_with_hole()
    goals = role_targets(y, ["object", "main_component", "filled"])
    loss = MultiMaskLoss([{"name": "bce", "weight": 1.0, "loss": {"type": "bce"}}],
                         iou_head_weight=0.0, candidate_roles=["object", "main_component",
                                                               "filled"])
    right = (goals * 2 - 1) * 8.0  # confident logits of each role's own target
    swapped = right[:, [1, 0, 2]]
    value_right, parts = loss({"pred_masks": right}, y)
    value_swapped, _ = loss({"pred_masks": swapped}, y)
    assert value_right < 0.01 < value_swapped
    assert "bce_roles" in parts and "bce_object" in parts


def test_role_loss_needs_one_role_per_candidate() -> None:
    loss = MultiMaskLoss([{"name": "bce", "loss": {"type": "bce"}}],
                         candidate_roles=["object", "filled"])
    with pytest.raises(ValueError, match="2 candidate roles for a model with 3"):
        loss({"pred_masks": torch.zeros(1, 3, 8, 8)}, torch.zeros(1, 8, 8))


# ----------------------------------------------------------------------------- boundary losses


def test_boundary_weights_peak_on_the_outline() -> None:
    y = torch.zeros(1, 64, 64)
    y[0, 16:48, 16:48] = 1.0
    w = boundary_weights(y, kernel_size=9, strength=5.0)
    assert w[0, 0, 0] == 1.0 and w[0, 32, 32] == 1.0  # far from the edge
    assert w[0, 16, 32] > 2.0  # on the edge
    assert w.max() <= 6.0


def test_boundary_losses_weigh_edge_errors_more_than_plain_ones() -> None:
    y = torch.zeros(1, 64, 64)
    y[0, 16:48, 16:48] = 1.0
    edge_miss = (y * 2 - 1) * 6.0
    edge_miss[0, 16:18, 16:48] = -6.0  # two rows of the outline missed
    inner_miss = (y * 2 - 1) * 6.0
    inner_miss[0, 30:32, 16:48] = -6.0  # the same number of pixels missed inside
    wbce, wiou = BoundaryBCELoss(kernel_size=9), BoundaryIoULoss(kernel_size=9)
    assert wbce(edge_miss, y) > 1.5 * wbce(inner_miss, y)
    assert wiou(edge_miss, y) > 1.5 * wiou(inner_miss, y)


def test_boundary_bce_equals_bce_without_edges() -> None:
    y = torch.ones(2, 16, 16)
    logits = torch.randn(2, 16, 16)
    expected = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean((1, 2))
    torch.testing.assert_close(BoundaryBCELoss()(logits, y), expected)


# ----------------------------------------------------------------------------- ensemble


def test_combine_masks_is_soft_where_teachers_disagree() -> None:
    a = np.zeros((10, 10), np.float32)
    b = np.zeros((10, 10), np.float32)
    a[:, :6] = 1.0
    b[:, :4] = 1.0
    mean, agreement = combine_masks([a, b])
    assert mean[0, 0] == 1.0 and mean[0, 5] == 0.5 and mean[0, 9] == 0.0
    # The mean at 0.5 keeps columns 0-3; teacher a covers 0-5: IoU 4/6.
    assert agreement == pytest.approx(4 / 6)
    weighted, _ = combine_masks([a, b], [3.0, 1.0])
    assert weighted[0, 5] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="weights"):
        combine_masks([a, b], [1.0, -1.0])


def _teacher_folder(root, name: str, masks: dict[str, np.ndarray]) -> None:
    for stem, mask in masks.items():
        for sub in ("images", "masks", "metadata"):
            (root / name / "photos" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*mask.shape, 3), 90, np.uint8)).save(
            root / name / "photos" / "images" / f"{stem}.jpg")
        Image.fromarray((mask * 255).astype(np.uint8), "L").save(
            root / name / "photos" / "masks" / f"{stem}.png")
        (root / name / "photos" / "metadata" / f"{stem}.json").write_text(
            json.dumps({"teacher": name, "source_file": f"/x/{stem}.jpg"}))


def test_ensemble_labels_writes_the_generation_layout_and_reports_gaps(tmp_path) -> None:
    full = np.ones((8, 8), np.float32)
    half = np.zeros((8, 8), np.float32)
    half[:, :4] = 1.0
    _teacher_folder(tmp_path, "u2net", {"a": full, "b": full})
    _teacher_folder(tmp_path, "lite", {"a": half})  # never labelled "b"
    out = tmp_path / "ens"
    manifest = ensemble_labels([tmp_path / "u2net", tmp_path / "lite"], out)
    assert manifest.done == 1
    assert [f["id"] for f in manifest.failed] == ["photos_b"]
    mask = np.asarray(Image.open(out / "photos" / "masks" / "a.png"))
    assert mask[0, 0] == 255 and mask[0, 7] in (127, 128)
    meta = json.loads((out / "photos" / "metadata" / "a.json").read_text())
    assert meta["teachers"] == ["u2net", "lite"] and meta["agreement"] == pytest.approx(0.5)
    assert (out / "photos" / "images" / "a.jpg").is_file()
    again = ensemble_labels([tmp_path / "u2net", tmp_path / "lite"], out)  # resumes
    assert again.done == 0 and again.skipped == 1


def test_ensemble_refuses_its_own_input_as_output(tmp_path) -> None:
    _teacher_folder(tmp_path, "u2net", {"a": np.ones((4, 4), np.float32)})
    _teacher_folder(tmp_path, "lite", {"a": np.ones((4, 4), np.float32)})
    with pytest.raises(PipelineError, match="one of the label folders"):
        ensemble_labels([tmp_path / "u2net", tmp_path / "lite"], tmp_path / "lite")
    with pytest.raises(PipelineError, match="at least two"):
        ensemble_labels([tmp_path / "u2net"], tmp_path / "x")


def test_v6_network_exports_to_onnx_and_matches_pytorch(tmp_path) -> None:
    """The refined head (bilinear resizes, dilated convolution, image guide) survives the ONNX
    exporter: export_onnx verifies ONNX Runtime against PyTorch before writing the file."""
    pytest.importorskip("onnxruntime")
    from s3od.export.exporter import export_onnx

    report = export_onnx(_v6(), tmp_path / "v6.onnx", image_size=64)
    assert report.path.is_file()
    assert max(report.max_abs_diff["network_masks"], report.max_abs_diff["masks"]) < 1e-3


def test_boundary_weights_equal_the_square_window_mean() -> None:
    """The separable box mean gives the same weights as the k x k window it replaces."""
    torch.manual_seed(1)
    y = (torch.rand(3, 37, 53) > 0.6).float()
    k, pad = 9, 4
    square = F.avg_pool2d(F.pad(y.unsqueeze(1), (pad,) * 4, mode="replicate"), k, stride=1)
    expected = (1.0 + 5.0 * (square - y.unsqueeze(1)).abs()).reshape(y.shape)
    torch.testing.assert_close(boundary_weights(y, kernel_size=k), expected)
