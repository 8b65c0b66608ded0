"""Device placement and distributed behaviour of the training code, checked on CPU.

No GPU runs here: the ``meta`` device stands in for ``cuda`` (a tensor created without the
input's device lands on the CPU and is caught), and Lightning's logging calls are recorded
instead of run. What a real GPU run proves is in ``tests/test_gpu.py`` (docs/gpu.md).
"""

from __future__ import annotations

import pytest

pytest.importorskip("lightning")
pytest.importorskip("hydra")
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import synth_sod.model_training.train as train_mod  # noqa: F401 (registers config resolvers)
from synth_sod.model_training.lightning_module import SegmentationLightningModule
from synth_sod.model_training.loss import build_loss

CONFIG_MODULE = "synth_sod.model_training.config"


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
