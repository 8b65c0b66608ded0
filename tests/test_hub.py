"""Checkpoint formats and model resolution (files, folders, hub cache, offline fallback)."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from s3od import BackgroundRemoval, CheckpointError, ModelNotFoundError
from s3od.hub import infer_config, load_checkpoint, resolve, save_checkpoint
from s3od.modeling import DPTSegmentation, LiteSegmentation

SMALL_VIT = {  # head_dim 64 like the published models, so infer_config can recover the heads
    "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256,
    "num_hidden_layers": 12, "num_register_tokens": 4, "patch_size": 16, "key_bias": False,
}
SMALL_HEAD = {"features": 16, "out_channels": (8, 8, 16, 16)}


@pytest.fixture(scope="module")
def small_vit() -> DPTSegmentation:
    torch.manual_seed(0)
    return DPTSegmentation(SMALL_VIT, **SMALL_HEAD).eval()


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x)["pred_masks"], b.eval()(x)["pred_masks"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_round_trip(tmp_path, small_vit, suffix):
    path = save_checkpoint(small_vit.state_dict(), tmp_path / f"m{suffix}", "dpt_dinov3",
                           {"encoder_config": SMALL_VIT, **SMALL_HEAD})
    state, arch, config = load_checkpoint(path)
    assert arch == "dpt_dinov3" and config["features"] == 16
    assert set(state) == set(small_vit.state_dict())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # shareable, not mkstemp's 0600
    _same_output(BackgroundRemoval(path, image_size=64, device="cpu").model, small_vit)


def test_published_format_without_metadata_is_inferred(tmp_path, small_vit):
    path = tmp_path / "s3od.pt"
    torch.save({"state_dict": small_vit.state_dict()}, path)  # exactly what export_model.py wrote
    arch, config = infer_config(load_checkpoint(path)[0])
    assert arch == "dpt_dinov3"
    assert config["encoder_config"]["num_attention_heads"] == 2
    assert config["out_channels"] == [8, 8, 16, 16] and config["num_masks"] == 3
    _same_output(BackgroundRemoval(tmp_path, image_size=64, device="cpu").model, small_vit)


def test_lightning_checkpoint_prefix_and_nested_block_names(tmp_path, small_vit):
    nested = {("model." + k).replace("encoder.layer.", "encoder.model.layer."): v
              for k, v in small_vit.state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": nested, "epoch": 3}, path)
    model = BackgroundRemoval(path, image_size=64, device="cpu").model
    _same_output(model, small_vit)


def test_fp16_checkpoint_loads_into_fp32_model(tmp_path):
    model = LiteSegmentation(features=16).eval()
    path = save_checkpoint(model.state_dict(), tmp_path / "h.safetensors", "lite",
                           {"features": 16}, dtype=torch.float16)
    state, _, _ = load_checkpoint(path)
    assert state["encoder.stem.conv.weight"].dtype == torch.float16
    assert state["encoder.stem.bn.num_batches_tracked"].dtype == torch.int64
    loaded = BackgroundRemoval(path, image_size=64, device="cpu").model
    assert next(loaded.parameters()).dtype == torch.float32


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = save_checkpoint(LiteSegmentation(features=16).state_dict(), tmp_path / "x.pt", "lite",
                           {"features": 32})
    with pytest.raises(CheckpointError, match="do not fit"):
        BackgroundRemoval(path, image_size=64)


def test_unresolvable_ids_name_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a file or folder"):
        resolve(str(tmp_path / "missing.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no checkpoint in folder"):
        resolve(tmp_path / "empty")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        resolve(tmp_path / "garbage.pt")


def test_hub_id_offline_not_cached_fails_fast(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="someone/nothing"):
        resolve("someone/nothing")


def _fake_hub_cache(root, repo: str, filename: str, payload_path) -> None:
    """The on-disk layout huggingface_hub uses: refs/main -> snapshots/<rev>/<file>."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(payload_path.read_bytes())


def test_hub_id_is_loaded_from_the_cache_offline(monkeypatch, tmp_path, small_vit):
    from huggingface_hub import constants

    ckpt = save_checkpoint(small_vit.state_dict(), tmp_path / "s3od.safetensors", "dpt_dinov3",
                           {"encoder_config": SMALL_VIT, **SMALL_HEAD})
    _fake_hub_cache(tmp_path / "cache", "someone/tiny-s3od", "s3od.safetensors", ckpt)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    resolved = resolve("someone/tiny-s3od")
    assert resolved.architecture == "dpt_dinov3" and "snapshots" in resolved.source


def test_default_offline_falls_back_to_bundled_lite(monkeypatch, tmp_path, caplog,
                                                    tiny_lite_checkpoint):
    from huggingface_hub import constants

    from s3od import registry

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    lite = registry.MODELS["s3od-lite"]
    monkeypatch.setattr(type(lite), "bundled_path", lambda self: tiny_lite_checkpoint)
    with caplog.at_level(logging.INFO, logger="s3od"):
        resolved = resolve(None)
    assert resolved.name == "s3od-lite" and resolved.architecture == "lite"
    assert "bundled s3od-lite" in caplog.text and "not cached" in caplog.text


def test_default_prefers_published_model_when_cached(monkeypatch, tmp_path, small_vit):
    from huggingface_hub import constants

    from s3od import registry

    ckpt = tmp_path / "s3od.pt"
    torch.save({"state_dict": small_vit.state_dict()}, ckpt)
    _fake_hub_cache(tmp_path / "cache", "okupyn/s3od", "s3od.pt", ckpt)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    # the published file has no metadata: the registry's config is used for it
    spec = registry.MODELS["s3od"]
    monkeypatch.setitem(spec.config, "encoder_config", SMALL_VIT)
    monkeypatch.setitem(spec.config, "features", 16)
    monkeypatch.setitem(spec.config, "out_channels", (8, 8, 16, 16))
    resolved = resolve(None)
    assert resolved.name == "s3od" and resolved.image_size == 1024
