"""The one architecture registry: loading, training and export agree on what a name means."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from s3od.architectures import (
    ARCHITECTURES,
    UnknownArchitectureError,
    architecture_of,
    build_model,
    get_architecture,
    list_architectures,
    register_architecture,
)
from s3od.errors import CheckpointError, S3ODError
from s3od.hub import resolve
from s3od.modeling import LiteSegmentation
from s3od.registry import MODELS

TINY_LITE = {"features": 16, "mask_upsample_features": 8, "mask_inter_features": 8,
             "num_masks": 3}


def test_inference_families_and_their_default_sizes():
    assert {"dpt_dinov3", "lite"} <= set(list_architectures(inference=True))
    assert get_architecture("lite").image_size == 320
    assert get_architecture("dpt_dinov3").image_size == 1024


def test_every_model_spec_names_a_registered_family_and_a_size():
    for spec in MODELS.values():
        family = get_architecture(spec.architecture, inference=True)
        if spec.name != "s3od-lite":
            assert spec.image_size == family.image_size, spec.name
    # The release runs at its last training stage's size; bare lite checkpoints at 320.
    assert MODELS["s3od-lite"].image_size == 384 != get_architecture("lite").image_size


def test_bare_lite_checkpoint_defaults_to_the_registry_size(tmp_path):
    """A lite checkpoint without metadata was loaded at 512 px while the registry said 320."""
    path = tmp_path / "bare.pt"
    torch.save({"state_dict": LiteSegmentation(**TINY_LITE).state_dict()}, path)
    resolved = resolve(path)
    assert resolved.architecture == "lite"
    assert resolved.image_size == 320 == get_architecture("lite").image_size


def test_size_stored_with_the_weights_wins_over_the_family_default(tmp_path):
    path = tmp_path / "sized.pt"
    torch.save({"state_dict": LiteSegmentation(**TINY_LITE).state_dict(),
                "architecture": "lite", "config": {**TINY_LITE, "image_size": 256}}, path)
    resolved = resolve(path)
    assert resolved.image_size == 256 and "image_size" not in resolved.config


def test_unknown_name_is_a_typed_error_that_lists_the_choices():
    with pytest.raises(UnknownArchitectureError, match="lite") as info:
        build_model("resnet_unet")
    assert isinstance(info.value, CheckpointError | ValueError | S3ODError)


def test_training_only_family_is_refused_for_inference_but_builds_for_training():
    from synth_sod.model_training.models import build_training_model

    assert not get_architecture("flux_teacher").inference
    assert "flux_teacher" not in list_architectures(inference=True)
    with pytest.raises(UnknownArchitectureError, match="training-only"):
        build_model("flux_teacher")
    lite = build_training_model({"architecture": "lite", "params": TINY_LITE})
    assert architecture_of(lite) is get_architecture("lite")


def test_training_export_refuses_a_training_only_family(tmp_path, monkeypatch):
    import synth_sod.model_training.export as export

    monkeypatch.setattr(export, "read_lightning_checkpoint", lambda ckpt: (
        {}, {"model": {"architecture": "flux_teacher", "params": {}}}))
    with pytest.raises(ValueError, match="no inference predictor"):
        export.export_checkpoint(tmp_path / "x.ckpt", tmp_path / "x.safetensors")


def test_defaults_apply_under_the_callers_config():
    model = build_model("lite", **TINY_LITE)
    assert isinstance(model, LiteSegmentation) and model.num_masks == 3
    assert architecture_of(torch.nn.Linear(1, 1)) is None


def test_a_name_cannot_be_registered_twice():
    def other_builder(**config):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_architecture("lite", image_size=64)(other_builder)
    assert get_architecture("lite").image_size == 320
    with pytest.raises(TypeError):
        ARCHITECTURES["new"] = get_architecture("lite")  # type: ignore[index]


def test_registry_import_stays_torch_free():
    """``import s3od`` must work for the ONNX Runtime path without loading torch."""
    code = ("import sys, s3od.architectures, s3od.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]


def test_training_export_stores_the_trained_input_size(tmp_path):
    """A release trained at 384 px loaded by path ran at the family default (320): the export
    now writes the training size with the weights, and ``--image-size`` overrides it."""
    from synth_sod.model_training.export import main as export_main

    state = {f"model.{k}": v for k, v in LiteSegmentation(**TINY_LITE).state_dict().items()}
    config = {"model": {"architecture": "lite", "params": dict(TINY_LITE)},
              "dataset": {"image_size": 384}}
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, ckpt)
    out = tmp_path / "lite.safetensors"
    assert export_main([str(ckpt), str(out)]) == 0
    resolved = resolve(out)
    assert resolved.image_size == 384 and "image_size" not in resolved.config
    assert export_main([str(ckpt), str(out), "--image-size", "448"]) == 0
    assert resolve(out).image_size == 448
    assert export_main([str(ckpt), str(out), "--image-size", "-1"]) == 2
