"""Every training command of the README composes, and its model instantiates (meta device)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra")
pytest.importorskip("lightning")
import torch
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

import synth_sod.model_training.train as train_mod
from synth_sod.model_training.models import build_training_model

REPO = Path(__file__).resolve().parents[1]
CONFIG_MODULE = "synth_sod.model_training.config"

# The README's training commands, verbatim except for the torchrun launcher prefix.
README_COMMANDS = [
    "dataset=synth model=dinob backend=1gpu",
    "dataset=synth model=dinob backend=4gpu",
    "dataset=duts model=dinob",
    "-cn train_teacher dataset=full model=flux_teacher backend=4gpu",
    "dataset=synth model=dinob training_hyperparams.resume=True",
]
OTHER_COMBINATIONS = [
    "model=dinol dataset=hr backend=8gpu",
    "model=dinob dataset=dis backend=2gpu loss=bce_iou_ssim",
    "model=dinob dataset=hf",
    "model=lite dataset=lite_real backend=cpu",
    "model=dino_tiny dataset=folders dataset.datasets=[a,b] backend=cpu",
]


def _compose(command: str):
    args = shlex.split(command)
    name = "train"
    if args[:1] == ["-cn"]:
        name, args = args[1], args[2:]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return compose(config_name=name, overrides=[*args, "data_dir=/data"])


@pytest.mark.parametrize("command", README_COMMANDS + OTHER_COMBINATIONS)
def test_config_composes_and_model_instantiates(command):
    cfg = _compose(command)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["optimizer"]["lr"] > 0
    assert plain["backend"]["devices"] >= 1
    model_cfg = dict(plain["model"], pretrained=False)
    with torch.device("meta"):
        model = build_training_model(model_cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if "model=flux_teacher" in command:
        assert plain["dataset"]["flux_features_dir"]
        # published teacher parameter count less its ViT-L encoder (303,129,600), which
        # use_dino_features=False never runs and which is therefore not built
        assert n == 338_858_434 - 303_129_600
    if "model=dinol" in command:
        assert n == 334_250_946
    if "backend=4gpu" in command:
        assert plain["backend"]["strategy"] == "ddp"  # not the published accidental FSDP


def test_published_hyper_parameters():
    cfg = OmegaConf.to_container(_compose("dataset=synth model=dinob backend=8gpu"),
                                 resolve=True)
    assert cfg["optimizer"]["lr"] == 1e-5 and cfg["optimizer"]["head_lr_multiplier"] == 10
    assert cfg["optimizer"]["weight_decay"] == 0.05
    sched = cfg["scheduler"]
    assert sched["milestones"] == [30]
    assert sched["schedulers"][1]["T_max"] == 170 and sched["schedulers"][1]["eta_min"] == 1e-6
    crit = {c["name"]: c["weight"] for c in cfg["loss"]["criterions"]}
    assert crit == {"focal_loss": 20.0, "iou_loss": 1.0}
    assert cfg["loss"]["iou_head_weight"] == 0.05
    assert cfg["loss"]["full_mask_lambda"] == 0.1 and cfg["loss"]["decay_rate"] == 0.2
    assert cfg["backend"]["accumulate_grad_batches"] == 16
    assert cfg["dataset"]["image_size"] == 1024 and cfg["dataset"]["train_bs"] == 4


def test_readme_backend_placeholder_fails_clearly():
    with pytest.raises(MissingConfigException, match="NUM_GPUs"):
        _compose("dataset=synth model=dinob backend=NUM_GPUs")


def test_missing_data_dir_fails_before_model(tmp_path):
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = compose(config_name="train", overrides=["dataset=duts", "model=dinob",
                                                      f"base_dir={tmp_path}"])
    with pytest.raises(train_mod.ConfigError, match="data_dir is not set"):
        train_mod.run(cfg)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = compose(config_name="train", overrides=[
            "dataset=duts", "model=dinob", f"base_dir={tmp_path}", f"data_dir={tmp_path}"])
    with pytest.raises(train_mod.ConfigError, match="does not exist"):
        train_mod.run(cfg)
    (tmp_path / "data" / "Train_Dataset").mkdir(parents=True)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = compose(config_name="train", overrides=[
            "dataset=duts", "model=dinob", f"base_dir={tmp_path}", f"data_dir={tmp_path}",
            "training_hyperparams.resume=True"])
    with pytest.raises(train_mod.ConfigError, match=r"last\.ckpt does not exist"):
        train_mod.run(cfg)


def test_cfg_job_from_the_command_line(tmp_path):
    """The README's teacher command, through the real module entry point, from another cwd."""
    cmd = [sys.executable, "-m", "synth_sod.model_training.train", "-cn", "train_teacher",
           "dataset=full", "model=flux_teacher", "backend=4gpu", "--cfg", "job"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 0, out.stderr
    assert "architecture: flux_teacher" in out.stdout
    assert "strategy: ddp" in out.stdout
    json.dumps(out.stdout)  # printable
