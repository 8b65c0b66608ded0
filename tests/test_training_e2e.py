"""Train a tiny DINOv3 model through the real entry point, resume, test stage, export, predict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightning")
pytest.importorskip("hydra")
import torch

from .conftest import SHARED, SHARED_DATA, needs_shared

REPO = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "synth_sod.model_training.train",
        "model=dino_tiny", "dataset=folders", "backend=cpu", "backend.num_threads=1",
        f"data_dir={SHARED}", f"base_dir={tmp_path / 'run'}",
        "dataset.datasets=[data/sod-bsds300,data/s3od-fixture]", "dataset.val_split=0.05",
        "dataset.image_size=64", "dataset.train_bs=4", "dataset.val_bs=4",
        "dataset.num_workers=0", "dataset.copy_paste.p=0.5",
        "optimizer.lr=1e-3", "scheduler.constant_epochs=1",
        "train_stage.experiment_name=tiny", "train_stage.progress_bar=false",
        "train_stage.limit_train_batches=2", "train_stage.limit_val_batches=1",
        "train_stage.num_sanity_val_steps=0", "train_stage.print_every_n_steps=1",
        "train_stage.checkpoint.every_n_train_steps=1",
        f"train_stage.evaluation.input_dir={SHARED_DATA}",
        "train_stage.evaluation.datasets=[s3od-fixture]",
        "train_stage.evaluation.image_size=64",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                         env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@needs_shared
def test_train_resume_test_stage_export_predict(tmp_path):
    first = _train(tmp_path, "backend.max_epochs=1", "train_stage.enable_image_logging=true")
    assert "[train] epoch 0 step 2" in first.stdout
    assert "[val] epoch 0" in first.stdout
    ckpt_dir = tmp_path / "run" / "checkpoints" / "tiny"
    last = ckpt_dir / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    # test stage ran the evaluation API on the configured set and wrote its table
    results = tmp_path / "run" / "logs" / "tiny" / "test_results.csv"
    assert results.is_file() and "s3od-fixture" in results.read_text()
    assert list((tmp_path / "run" / "logs" / "tiny").glob("version_0/events.out.tfevents.*"))
    assert (tmp_path / "run" / "logs" / "tiny" / "version_0" / "metrics.csv").is_file()

    second = _train(tmp_path, "backend.max_epochs=2", "training_hyperparams.resume=True",
                    "train_stage.evaluation.enabled=false")
    assert "Restored all states" in second.stdout + second.stderr
    assert "[train] epoch 1 step 4" in second.stdout
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4

    from s3od import BackgroundRemoval
    from synth_sod.model_training.export import main as export_main

    image_path = sorted((SHARED_DATA / "sod-bsds300" / "images").glob("*.jpg"))[0]
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    probs = []
    for name, extra in (("tiny.safetensors", ["--dtype", "fp16"]), ("tiny.pt", [])):
        out = tmp_path / name
        assert export_main([str(last), str(out), "--name", "tiny", *extra]) == 0
        remover = BackgroundRemoval(str(out), image_size=64, device="cpu")
        result = remover.remove_background(image)
        assert result.predicted_mask.shape == (image.height, image.width)
        assert result.all_masks.shape[0] == 3 and result.all_ious.shape == (3,)
        probs.append(result.predicted_mask)
    # fp16 and fp32 exports of the same weights predict (nearly) the same mask
    assert np.abs(probs[0].astype(np.float32) - probs[1].astype(np.float32)).mean() < 0.05
    pt = torch.load(tmp_path / "tiny.pt", map_location="cpu", weights_only=True)
    assert pt["architecture"] == "dpt_dinov3" and "seg_head.projects.0.weight" in pt["state_dict"]
    assert not any(k.startswith("model.") for k in pt["state_dict"])


def test_export_rejects_bad_input(tmp_path, capsys):
    from synth_sod.model_training.export import main as export_main

    assert export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.pt")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
@needs_shared
def test_ddp_two_processes_gloo(tmp_path):
    """Two CPU processes with DDP (gloo) through Lightning's own launcher."""
    out = _train(tmp_path, "backend.max_epochs=1", "backend.devices=2", "backend.strategy=ddp",
                 "train_stage.evaluation.enabled=false", timeout=600)
    assert "[train] epoch 0 step 2" in out.stdout
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "tiny" / "last.ckpt",
                      map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2


def test_load_matching_copies_same_shape_tensors_only():
    """``weights_strict=false``: a narrower decoder starts from a trained model's encoder."""
    from s3od.modeling import LiteSegmentation
    from synth_sod.model_training.train import load_matching

    torch.manual_seed(0)
    trained = LiteSegmentation(features=32)
    narrow = LiteSegmentation(features=16)
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    loaded, skipped = load_matching(narrow, trained.state_dict())
    after, source = narrow.state_dict(), trained.state_dict()
    enc = "encoder.stem.conv.weight"
    assert torch.equal(after[enc], source[enc])
    assert "seg_head.scratch.layer1_rn.weight" in skipped
    assert torch.equal(after["seg_head.scratch.layer1_rn.weight"],
                       before["seg_head.scratch.layer1_rn.weight"])
    assert loaded == sum(1 for k in after if k not in skipped)
    assert all(k.startswith("seg_head.") for k in skipped)
    with pytest.raises(ValueError, match="no tensor"):
        load_matching(narrow, {"unrelated.weight": torch.zeros(1)})
