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


# --------------------------------------------------------------- bad values at start-up (issue 22)


class _Built(Exception):
    """Raised in place of building the model: the run got past every start-up check."""


def _small_folder(root: Path, n: int) -> Path:
    """``n`` tiny image/mask pairs in ``root/small/{images,masks}``."""
    import numpy as np
    from PIL import Image

    for sub in ("images", "masks"):
        (root / "small" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((20, 24, 3), 40 * (i % 5), np.uint8)).save(
            root / "small" / "images" / f"{i}.png")
        Image.fromarray(np.full((20, 24), 255, np.uint8)).save(
            root / "small" / "masks" / f"{i}.png")
    return root / "small"


def _run_small(tmp_path: Path, monkeypatch, *overrides: str, n: int = 12):
    """``train.run`` on a tiny folder source; model construction raises :class:`_Built`."""
    _small_folder(tmp_path, n)

    def no_model(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(train_mod, "SegmentationLightningModule", no_model)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = compose(config_name="train", overrides=[
            "dataset=folders", "model=dino_tiny", "backend=cpu", "dataset.datasets=[small]",
            "dataset.num_workers=0", "dataset.image_size=64", f"data_dir={tmp_path}",
            f"base_dir={tmp_path / 'runs'}", *overrides])
    return train_mod.run(cfg)


@pytest.mark.parametrize(("override", "key"), [
    ("dataset.train_bs=0", "dataset.train_bs"),
    ("dataset.train_bs=true", "dataset.train_bs"),
    ("dataset.train_bs=2.5", "dataset.train_bs"),
    ("dataset.val_bs=-1", "dataset.val_bs"),
    ("dataset.image_size=abc", "dataset.image_size"),
    ("dataset.image_size=0", "dataset.image_size"),
    ("dataset.image_size=1000000", "dataset.image_size"),
    ("dataset.num_workers=-2", "dataset.num_workers"),
    ("backend.max_epochs=-5", "backend.max_epochs"),
    ("backend.max_epochs=0", "backend.max_epochs"),
    ("backend.max_epochs=ten", "backend.max_epochs"),
    ("+backend.max_steps=0", "backend.max_steps"),
    ("dataset.val_split=1.5", "dataset.val_split"),
    ("dataset.val_split=1.0", "dataset.val_split"),
    ("dataset.val_split=-0.1", "dataset.val_split"),
    ("optimizer.lr=nan", "optimizer.lr"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-1e-4", "optimizer.lr"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("optimizer.weight_decay=nan", "optimizer.weight_decay"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),
    ("backend.precision=fp8", "backend.precision"),
    ("backend.precision=true", "backend.precision"),
    ("backend.accumulate_grad_batches=0", "backend.accumulate_grad_batches"),
    ("backend.devices=0", "backend.devices"),
    ("backend.devices=many", "backend.devices"),
])
def test_bad_values_stop_at_start_up_with_one_line(tmp_path, monkeypatch, override, key):
    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the values were checked")

    monkeypatch.setattr(train_mod, "resolve_splits", no_data)
    with pytest.raises(train_mod.ConfigError) as err:
        _run_small(tmp_path, monkeypatch, override)
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_good_values_pass_the_start_up_checks(tmp_path, monkeypatch):
    """The checks refuse only what is wrong: precision aliases, -1 epochs, explicit lists."""
    for overrides in (("backend.precision=bf16-mixed", "backend.max_epochs=-1"),
                      ("backend.precision=32", "backend.devices=auto", "optimizer.lr=0.5"),
                      ("dataset.val_split=0.5", "backend.precision=16-mixed")):
        with pytest.raises(_Built):
            _run_small(tmp_path, monkeypatch, *overrides)


def test_resume_path_that_is_no_checkpoint_is_refused(tmp_path, monkeypatch):
    torch_file = tmp_path / "real.ckpt"
    torch.save({"state_dict": {}}, torch_file)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    garbage_st = tmp_path / "w.safetensors"
    garbage_st.write_bytes(b"\xff" * 64)
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(weights))
    import zipfile

    other_zip = tmp_path / "other.ckpt"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    cases = [(f"train_stage.checkpoint_path={text}", "not a checkpoint"),
             (f"training_hyperparams.resume={tmp_path}", "resume from"),
             (f"train_stage.checkpoint_path={garbage_st}", "header is malformed"),
             (f"train_stage.checkpoint_path={other_zip}", "without a torch checkpoint"),
             (f"train_stage.checkpoint_path={weights}", "weights_only=true")]
    for override, expected in cases:
        with pytest.raises(train_mod.ConfigError, match=expected) as err:
            _run_small(tmp_path, monkeypatch, override)
        assert "\n" not in str(err.value)
    # real files get through the check (the model build is where the run is stopped here)
    for overrides in ((f"train_stage.checkpoint_path={torch_file}",),
                      (f"train_stage.checkpoint_path={weights}",
                       "train_stage.weights_only=true")):
        with pytest.raises(_Built):
            _run_small(tmp_path, monkeypatch, *overrides)


def test_validation_split_rounding_to_zero_is_caught_before_the_model(tmp_path, monkeypatch):
    """12 samples x 0.05 = 0 validation samples: the checkpoint monitor (val_iou) would fail
    after a whole epoch; the run stops at start-up instead."""
    with pytest.raises(train_mod.DataConfigError, match="no validation samples") as err:
        _run_small(tmp_path, monkeypatch, "dataset.val_split=0.05")
    assert "small=12" in str(err.value) and "val_iou" in str(err.value)
    with pytest.raises(_Built):  # 12 x 0.1 = 1 validation sample: fine
        _run_small(tmp_path, monkeypatch, "dataset.val_split=0.1")
    with pytest.raises(_Built):  # nothing monitors validation: training without it is allowed
        _run_small(tmp_path, monkeypatch, "dataset.val_split=0.05",
                   "train_stage.checkpoint.monitor=null",
                   "train_stage.early_stopping.enabled=false")


def test_bad_value_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "synth_sod.model_training.train", "dataset=folders",
           "model=dino_tiny", "backend=cpu", "dataset.datasets=[small]", "dataset.train_bs=0",
           f"data_dir={tmp_path}", f"base_dir={tmp_path / 'runs'}"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and "dataset.train_bs=0" in lines[0]
