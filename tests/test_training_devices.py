"""Device placement and distributed behaviour of the training code, checked on CPU.

No GPU runs here: the ``meta`` device stands in for ``cuda`` (a tensor created without the
input's device lands on the CPU and is caught), and Lightning's logging calls are recorded
instead of run. What a real GPU run proves is in ``tests/test_gpu.py`` (docs/gpu.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("hydra")
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import synth_sod.model_training.train as train_mod  # also registers the config's resolvers
from synth_sod.model_training.lightning_module import SegmentationLightningModule
from synth_sod.model_training.loss import build_loss

CONFIG_MODULE = "synth_sod.model_training.config"
REPO = Path(__file__).resolve().parents[1]


def compose_plain(*overrides: str, name: str = "train") -> dict:
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = compose(config_name=name, overrides=[*overrides, "data_dir=/data"])
    return OmegaConf.to_container(cfg, resolve=True)


def tiny_config(*overrides: str) -> dict:
    return compose_plain("model=dino_tiny", "dataset=folders", "dataset.datasets=[a]",
                         "backend=cpu", *overrides)


class LogRecorder:
    """Stands in for ``LightningModule.log``: keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict]] = []

    def __call__(self, name, value, **kwargs) -> None:
        self.calls.append((name, value, kwargs))


def _meta_batch(bs: int = 2, side: int = 64) -> dict:
    return {"images": torch.empty(bs, 3, side, side, device="meta"),
            "masks": torch.empty(bs, side, side, device="meta")}


@pytest.mark.parametrize("loss", ["focal_iou", "bce_iou_ssim"])
@pytest.mark.parametrize("num_masks", [1, 3])
def test_every_loss_part_is_on_the_device_of_the_loss(loss, num_masks):
    cfg = compose_plain(f"loss={loss}")
    with torch.device("meta"):
        criterion = build_loss(cfg["loss"])
    outputs = {"pred_masks": torch.empty(2, num_masks, 32, 32, device="meta"),
               "pred_iou": torch.empty(2, num_masks, device="meta")}
    total, parts = criterion(outputs, torch.empty(2, 32, 32, device="meta"), epoch=3)
    assert total.device.type == "meta"
    if num_masks > 1:
        assert "full_mask_lambda" in parts
    wrong = {k: v.device for k, v in parts.items() if v.device.type != "meta"}
    assert not wrong, f"loss parts off the loss's device (NCCL cannot reduce them): {wrong}"


def test_full_mask_lambda_value_survives_the_device_fix():
    cfg = compose_plain()
    criterion = build_loss(cfg["loss"])
    outputs = {"pred_masks": torch.zeros(2, 3, 8, 8), "pred_iou": torch.zeros(2, 3)}
    _, parts = criterion(outputs, torch.zeros(2, 8, 8), epoch=2)
    expected = cfg["loss"]["full_mask_lambda"] * torch.exp(torch.tensor(-2.0 * 0.2))
    assert torch.allclose(parts["full_mask_lambda"], expected)


def test_every_logged_value_is_a_tensor_on_the_model_device(monkeypatch):
    """Lightning all-reduces a logged tensor where it lies; on NCCL it must be on the GPU."""
    with torch.device("meta"):
        module = SegmentationLightningModule(tiny_config())
    assert next(module.parameters()).device.type == "meta"
    recorder = LogRecorder()
    monkeypatch.setattr(module, "log", recorder)
    module.training_step(_meta_batch(), 0)
    module.validation_step(_meta_batch(), 0)
    names = {name for name, _, _ in recorder.calls}
    assert {"train_loss_step", "train_full_mask_lambda_epoch", "train_best_iou_step",
            "train_iou_epoch", "val_loss", "val_full_mask_lambda", "val_iou"} <= names
    for name, value, _ in recorder.calls:
        assert isinstance(value, torch.Tensor), f"{name} is logged as {type(value).__name__}"
        assert value.device.type == "meta", f"{name} is logged from {value.device}"


def test_only_epoch_aggregates_are_all_reduced(monkeypatch):
    """A step value logged with sync_dist=True is one blocking all-reduce per micro-batch."""
    module = SegmentationLightningModule(tiny_config())
    recorder = LogRecorder()
    monkeypatch.setattr(module, "log", recorder)
    batch = {"images": torch.randint(0, 255, (2, 3, 64, 64)).float(),
             "masks": (torch.rand(2, 64, 64) > 0.5).float()}
    module.training_step(batch, 0)
    with torch.no_grad():
        module.validation_step(batch, 0)
    assert recorder.calls
    for name, _, kw in recorder.calls:
        if kw.get("on_step"):
            assert not kw.get("sync_dist"), f"{name}: step value all-reduced every micro-batch"
            assert not kw.get("on_epoch"), f"{name}: one call cannot sync only its epoch value"
        if kw.get("on_epoch"):
            assert kw.get("sync_dist"), f"{name}: epoch aggregate not reduced over ranks"
    steps = {n for n, _, kw in recorder.calls if kw.get("on_step")}
    epochs = {n for n, _, kw in recorder.calls if kw.get("on_epoch") and n.startswith("train")}
    assert {n.removesuffix("_step") for n in steps} == {n.removesuffix("_epoch") for n in epochs}


# --------------------------------------------------------------------------- data loading


class _Reseedable:
    def __init__(self) -> None:
        self.seeds: list[int] = []

    def reseed(self, seed: int) -> None:
        self.seeds.append(seed)


def _worker_seed_on_rank(monkeypatch, rank: int, worker_seed: int) -> int:
    from types import SimpleNamespace

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from synth_sod.model_training import data

    dataset = _Reseedable()
    info = SimpleNamespace(seed=worker_seed, dataset=dataset, id=0)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    monkeypatch.setattr(rank_zero_only, "rank", rank, raising=False)
    # Lightning's own worker seeding (global RNGs) is not under test; keep ours isolated.
    monkeypatch.setattr("lightning.fabric.utilities.seed.pl_worker_init_function",
                        lambda *a, **k: None)
    data._worker_init(0)
    assert len(dataset.seeds) == 1
    return dataset.seeds[0]


def test_augmentation_seed_differs_per_rank_and_repeats_per_rank(monkeypatch):
    """Every rank sees the same WorkerInfo.seed; the rank must make their augmentations differ."""
    seeds = {rank: _worker_seed_on_rank(monkeypatch, rank, 123456789) for rank in range(4)}
    assert len(set(seeds.values())) == 4, seeds
    assert _worker_seed_on_rank(monkeypatch, 2, 123456789) == seeds[2]
    assert all(0 <= s < 2**31 for s in seeds.values())
    assert _worker_seed_on_rank(monkeypatch, 0, 123456790) != seeds[0]  # next worker


def test_validation_loader_uses_the_configured_workers():
    from torch.utils.data import TensorDataset

    from synth_sod.model_training.data import build_dataloaders

    data = TensorDataset(torch.zeros(4, 1))
    _, val = build_dataloaders({"num_workers": 6, "train_bs": 2}, data, data)
    assert val.num_workers == 6  # was capped at 1 whatever num_workers said
    _, val = build_dataloaders({"num_workers": 6, "val_num_workers": 2, "train_bs": 2},
                               data, data)
    assert val.num_workers == 2 and val.persistent_workers
    _, val = build_dataloaders({"num_workers": 6, "val_num_workers": 0, "train_bs": 2},
                               data, data)
    assert val.num_workers == 0 and val.worker_init_fn is None


# --------------------------------------------------------------------------- trainer settings


def compose_cfg(*overrides: str, name: str = "train"):
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return compose(config_name=name, overrides=[*overrides, "data_dir=/data"])


def _docs_batch_table() -> dict[str, tuple[int, int, int]]:
    """backend -> (accumulation, samples per step at train_bs 4, at train_bs 8) in the docs."""
    import re

    text = (REPO / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| `(\dgpu)` \| \d+ \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
    return {name: tuple(int(x) for x in rest) for name, *rest in rows}


def test_effective_batch_size_of_every_backend_is_the_documented_one():
    table = _docs_batch_table()
    assert set(table) == {"1gpu", "2gpu", "4gpu", "8gpu"}
    for backend, (accumulate, at4, at8) in table.items():
        synth = compose_cfg(f"backend={backend}", "dataset=synth")
        duts = compose_cfg(f"backend={backend}", "dataset=duts")
        assert synth.dataset.train_bs == 4 and duts.dataset.train_bs == 8
        assert train_mod.accumulation(synth) == accumulate
        assert (train_mod.effective_batch_size(synth), train_mod.effective_batch_size(duts)) == (
            at4, at8), backend


@pytest.mark.parametrize("backend,accumulate", [("2gpu", 32), ("4gpu", 16), ("8gpu", 8)])
def test_effective_batch_size_option_keeps_it_fixed_across_gpu_counts(backend, accumulate):
    cfg = compose_cfg(f"backend={backend}", "dataset=synth", "backend.effective_batch_size=256")
    assert train_mod.trainer_kwargs(cfg)["accumulate_grad_batches"] == accumulate
    assert train_mod.effective_batch_size(cfg) == 256


def test_effective_batch_size_must_divide():
    cfg = compose_cfg("backend=8gpu", "dataset=synth", "backend.effective_batch_size=100")
    with pytest.raises(train_mod.ConfigError, match="not a multiple of"):
        train_mod.trainer_kwargs(cfg)
    cfg = compose_cfg("backend=cpu", "dataset=synth", "backend.effective_batch_size=4",
                      "backend.devices=auto")
    with pytest.raises(train_mod.ConfigError, match="as numbers"):
        train_mod.accumulation(cfg)


@pytest.mark.parametrize("backend", ["1gpu", "2gpu", "4gpu", "8gpu"])
def test_gpu_backends_turn_on_the_cudnn_autotuner_and_offer_bf16(backend):
    cfg = compose_cfg(f"backend={backend}", "dataset=synth")
    assert train_mod.trainer_kwargs(cfg)["benchmark"] is True
    assert train_mod.trainer_kwargs(cfg)["precision"] == "32"  # published default kept
    bf16 = compose_cfg(f"backend={backend}", "dataset=synth", "backend.precision=bf16-mixed")
    assert train_mod.trainer_kwargs(bf16)["precision"] == "bf16-mixed"


def test_cudnn_autotuner_stays_off_for_variable_sized_flux_features():
    cfg = compose_cfg("dataset=full", "model=flux_teacher", "backend=4gpu", name="train_teacher")
    assert train_mod.trainer_kwargs(cfg)["benchmark"] is False
    assert "benchmark" not in train_mod.trainer_kwargs(compose_cfg("backend=cpu"))


# --------------------------------------------------------------------------- SLURM requeue


def _touch(path, mtime: float) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_resume_takes_the_requeue_checkpoint_when_it_is_newer(tmp_path):
    cfg = compose_cfg(f"base_dir={tmp_path}", "train_stage.experiment_name=exp",
                      "training_hyperparams.resume=True")
    folder = train_mod.checkpoint_dir(cfg)
    _touch(folder / "hpc_ckpt_1.ckpt", 1_000)
    # only the SIGUSR1 checkpoint: a requeue right after the first signal
    assert train_mod.resolve_resume(cfg)[0] == str(folder / "hpc_ckpt_1.ckpt")
    _touch(folder / "last.ckpt", 2_000)
    _touch(folder / "hpc_ckpt_2.ckpt", 3_000)
    assert train_mod.resolve_resume(cfg)[0] == str(folder / "hpc_ckpt_2.ckpt")
    _touch(folder / "last.ckpt", 4_000)  # trained on after the signal, then killed
    assert train_mod.resolve_resume(cfg)[0] == str(folder / "last.ckpt")


def test_lightning_saves_the_requeue_checkpoint_where_resume_looks(tmp_path):
    import lightning.pytorch as pl

    cfg = compose_cfg(f"base_dir={tmp_path}", "train_stage.experiment_name=exp", "backend=cpu")
    trainer = pl.Trainer(**train_mod.trainer_kwargs(cfg), logger=False,
                         enable_checkpointing=False)
    # the path Lightning's SIGUSR1 handler saves to (SignalConnector._slurm_sigusr_handler_fn)
    saved = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
    folder = train_mod.checkpoint_dir(cfg)
    assert Path(saved).parent == folder
    _touch(Path(saved), 5_000)
    resumed = compose_cfg(f"base_dir={tmp_path}", "train_stage.experiment_name=exp",
                          "backend=cpu", "training_hyperparams.resume=True")
    assert train_mod.resolve_resume(resumed)[0] == saved


def test_slurm_script_resumes_when_only_the_requeue_checkpoint_exists(tmp_path):
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\necho "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "S3OD_DATA_DIR": str(tmp_path), "S3OD_BASE_DIR": str(tmp_path / "base"),
           "SLURM_JOB_NUM_NODES": "2", "EXPERIMENT": "exp"}
    script = REPO / "scripts" / "train_multinode.slurm"

    def submitted() -> str:
        out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                             check=True)
        return out.stdout

    assert "training_hyperparams.resume=false" in submitted()
    _touch(tmp_path / "base" / "checkpoints" / "exp" / "hpc_ckpt_1.ckpt", 1_000)
    assert "training_hyperparams.resume=true" in submitted()


# --------------------------------------------------------------------------- bf16-mixed


class _RandomPairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, side: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, side, side), generator=g).float()
        yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.masks = torch.stack([((yy - side / 2) ** 2 + (xx - side / 2 - i) ** 2
                                   < (side / 4) ** 2).float() for i in range(n)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"images": self.images[i], "masks": self.masks[i]}


def _fit_losses(precision: str, steps: int = 4) -> list[float]:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    class Losses(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.values.append(float(outputs["loss"]))

    cfg = compose_cfg("model=dino_tiny", "dataset=folders", "dataset.datasets=[a]",
                      "backend=cpu", f"backend.precision={precision}",
                      f"+backend.max_steps={steps}", "train_stage.progress_bar=false",
                      "train_stage.num_sanity_val_steps=0")
    pl.seed_everything(0)
    module = SegmentationLightningModule(cfg)
    losses = Losses()
    trainer = pl.Trainer(**train_mod.trainer_kwargs(cfg), logger=False, callbacks=[losses],
                         enable_checkpointing=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(_RandomPairs(), batch_size=2)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == steps
    return losses.values


def test_bf16_mixed_trains_like_fp32():
    """The bf16-mixed option through the real Trainer (CPU autocast; the GPU suite runs the
    CUDA one): same start, same data, the loss follows the fp32 run."""
    fp32, bf16 = _fit_losses("32"), _fit_losses("bf16-mixed")
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert fp32 != bf16  # autocast really ran in bf16
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= 0.05 * abs(a), (fp32, bf16)
