"""Every checkpoint loader refuses pickled code (issue 22, item 1).

A ``.ckpt``/``.pt`` is a pickle: with ``weights_only=False`` reading one can run any function
it names. Each loader of the repository gets a file whose payload would create a marker file
when unpickled, and must raise ``UnsafeCheckpointError`` without creating it; real Lightning
checkpoints (plain dicts, or hyperparameters kept as omegaconf objects) still load.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from s3od.errors import CheckpointError, UnsafeCheckpointError


class _Payload:
    """Unpickling this runs ``open(marker, "w")`` through ``exec``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _lightning_shaped(payload: object) -> dict:
    """What a Lightning checkpoint looks like, with ``payload`` where the config goes."""
    return {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.6",
            "state_dict": {"model.head.weight": torch.zeros(2, 2)},
            "hyper_parameters": {"config": payload}}


@pytest.fixture()
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint whose unpickling would create ``marker``, marker)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.ckpt"
    torch.save(_lightning_shaped(_Payload(marker)), path)
    return path, marker


def test_the_payload_is_live(tmp_path: Path):
    """Unpickled without the guard, the payload does run: so a loader that leaves no marker
    refused it, rather than the payload being inert."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_helper_refuses_and_names_the_global(hostile):
    from s3od.checkpoint_io import load_torch_checkpoint

    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*exec.*nothing in it"):
        load_torch_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_library_loader_refuses(hostile, suffix):
    from s3od.hub import load_checkpoint

    path, marker = hostile
    path = path.rename(path.with_suffix(suffix))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_cli_model_refuses_without_traceback(hostile, tmp_path):
    from typer.testing import CliRunner

    from s3od.cli import app

    path, marker = hostile
    photo = Path(__file__).resolve().parents[1] / "assets" / "samples" / "cat.jpg"
    out = CliRunner().invoke(app, ["remove", str(photo), "-o", str(tmp_path / "o.png"),
                                   "--model", str(path)])
    assert out.exit_code != 0
    assert "refusing to load" in out.output and "Traceback" not in out.output
    assert not marker.exists() and not (tmp_path / "o.png").exists()


def test_export_refuses(hostile, tmp_path, capsys):
    from synth_sod.model_training.export import export_checkpoint, main

    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError):
        export_checkpoint(path, tmp_path / "x.safetensors")
    assert main([str(path), str(tmp_path / "x.safetensors")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_evaluation_loader_refuses(hostile, tmp_path):
    from omegaconf import OmegaConf

    from synth_sod.model_training.evaluate import run_test_stage

    path, marker = hostile
    cfg = OmegaConf.create({"train_stage": {"experiment_name": "x", "evaluation": {
        "input_dir": str(tmp_path), "datasets": ["DUTS-TE"], "image_size": 64}}})
    with pytest.raises(UnsafeCheckpointError):
        run_test_stage(cfg, path, tmp_path / "out")
    assert not marker.exists()


def test_warm_start_refuses(hostile):
    """``train_stage.checkpoint_path=... train_stage.weights_only=true`` reads through
    :func:`initial_state`."""
    pytest.importorskip("lightning")
    from synth_sod.model_training.train import initial_state

    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError):
        initial_state(str(path))
    assert not marker.exists()


def test_not_a_checkpoint_is_a_checkpoint_error(tmp_path):
    from synth_sod.model_training.checkpoints import read_lightning_checkpoint
    from synth_sod.model_training.train import initial_state

    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a synth_sod training checkpoint"):
        read_lightning_checkpoint(plain)
    torch.save([1, 2], plain)
    with pytest.raises(CheckpointError, match="no state_dict"):
        initial_state(str(plain))


# ----------------------------------------------------------------------------- Lightning resume

pl = pytest.importorskip("lightning.pytorch")


class _Tiny(pl.LightningModule):
    """The smallest module a Trainer fits; its hyperparameters are an omegaconf config, as
    trainers that call ``save_hyperparameters(cfg)`` with a Hydra config store them."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _index):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(root: Path, steps: int):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(root), enable_checkpointing=False)


def _loader():
    data = torch.utils.data.TensorDataset(torch.ones(4, 2))
    return torch.utils.data.DataLoader(data, batch_size=2)


def test_resume_refuses(hostile, tmp_path):
    """``training_hyperparams.resume=...`` goes through Lightning's loader: weights_only."""
    from synth_sod.model_training.train import fit_resumable

    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError):
        fit_resumable(_trainer(tmp_path, 1), _Tiny(), _loader(), None, str(path))
    assert not marker.exists()


def test_lightning_checkpoint_with_omegaconf_loads_and_resumes(tmp_path):
    """The allow-list covers what a real Lightning checkpoint holds, omegaconf included."""
    from omegaconf import DictConfig, OmegaConf

    from s3od.checkpoint_io import load_torch_checkpoint
    from synth_sod.model_training.train import fit_resumable

    config = OmegaConf.create({"model": {"features": 16, "sizes": [1, 2.5, "x", None, True]},
                               "lr": "${model.features}"})
    trainer = _trainer(tmp_path, 2)
    fit_resumable(trainer, _Tiny(config), _loader(), None, None)
    path = tmp_path / "saved.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_torch_checkpoint(path)
    saved = ckpt["hyper_parameters"]["config"]
    assert isinstance(saved, DictConfig) and saved.lr == 16 and saved.model.sizes[1] == 2.5
    resumed = _trainer(tmp_path, 3)
    fit_resumable(resumed, _Tiny(config), _loader(), None, str(path))
    assert resumed.global_step == 3  # continued from step 2, not from 0


def _unguarded_loads(path: Path) -> list[int]:
    """Lines of ``torch.load(...)`` calls in ``path`` without ``weights_only=True``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"):
            guarded = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                          and k.value.value is True for k in node.keywords)
            if not guarded:
                lines.append(node.lineno)
    return lines


def test_every_torch_load_in_the_repository_is_weights_only():
    """No ``torch.load`` in src, tests, benchmarks, scripts or docs relies on the default
    (``weights_only=False`` before torch 2.6) or asks for unpickling."""
    root = Path(__file__).resolve().parents[1]
    offenders = {str(p.relative_to(root)): lines
                 for folder in ("src", "tests", "benchmarks", "scripts", "docs")
                 if (root / folder).is_dir() for p in sorted((root / folder).rglob("*.py"))
                 if (lines := _unguarded_loads(p))}
    assert offenders == {}
