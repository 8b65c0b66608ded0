"""Start-up checks of the composed training config's values, before any data or model is touched.

Hydra accepts any override (``dataset.train_bs=0``, ``dataset.image_size=abc``,
``optimizer.lr=nan``); without these checks such a value fails deep inside a DataLoader, the
Trainer or the optimizer, sometimes only after an epoch. Each check raises
:class:`~synth_sod.errors.ConfigError` with one line naming the key, the value and what is
allowed; ``train.py`` prints it and exits with code 2.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synth_sod.errors import ConfigError, DataConfigError

#: ``backend.precision`` values Lightning 2 accepts (its own list when it can be read).
PRECISIONS_FALLBACK = ("transformer-engine", "transformer-engine-float16", "16-true",
                       "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true",
                       "16", "32", "64", "bf16")
#: Image sides outside this range are typos: 0 cannot be resized to, 10**6 would allocate TBs.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 16384


def known_precisions() -> tuple[str, ...]:
    """The precision names of the installed Lightning (fallback: those of Lightning 2.x)."""
    try:
        from typing import get_args

        from lightning.fabric.plugins.precision.precision import (
            _PRECISION_INPUT_STR,
            _PRECISION_INPUT_STR_ALIAS,
        )
    except ImportError:  # pragma: no cover - depends on the Lightning version
        return PRECISIONS_FALLBACK
    names = tuple(str(x) for kind in (_PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS)
                  for x in get_args(kind))
    return names or PRECISIONS_FALLBACK


def _get(section: Any, key: str) -> Any:
    return section.get(key) if isinstance(section, Mapping) or hasattr(section, "get") else None


def _int(where: str, value: Any, *, low: int, high: int | None = None,
         also: tuple[int, ...] = ()) -> None:
    """An integer (not a bool, not a float) in ``[low, high]`` or one of ``also``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}={value!r} is not an integer")
    if value in also:
        return
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"from {low} to {high}"
        extra = f" (or {', '.join(map(str, also))})" if also else ""
        raise ConfigError(f"{where}={value} is out of range: must be {allowed}{extra}")


def _number(where: str, value: Any, *, low: float, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    """A finite real number (not a bool) in the given interval."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}={value!r} is not a number")
    if not math.isfinite(value):
        raise ConfigError(f"{where}={value} is not a finite number")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        span = f"{left}{low}, {high if high is not None else 'inf'}{right}"
        raise ConfigError(f"{where}={value} is out of range: must be in {span}")


def check_values(cfg: Any) -> None:
    """Check every value the run reads that Hydra would let through unchecked.

    Raises:
        ConfigError: the first bad value, named by its key.
    """
    dataset, backend, optimizer = cfg.get("dataset"), cfg.get("backend"), cfg.get("optimizer")
    if dataset is not None:
        for key in ("train_bs", "val_bs"):
            if _get(dataset, key) is not None:
                _int(f"dataset.{key}", _get(dataset, key), low=1, high=65536)
        for key in ("image_size", "val_image_size"):
            if _get(dataset, key) is not None:
                _int(f"dataset.{key}", _get(dataset, key), low=MIN_IMAGE_SIZE,
                     high=MAX_IMAGE_SIZE)
        for key in ("num_workers", "val_num_workers"):
            if _get(dataset, key) is not None:
                _int(f"dataset.{key}", _get(dataset, key), low=0, high=1024)
        if _get(dataset, "val_split") is not None:
            _number("dataset.val_split", _get(dataset, "val_split"), low=0.0, high=1.0,
                    high_open=True)
        if _get(dataset, "crop_p") is not None:
            _number("dataset.crop_p", _get(dataset, "crop_p"), low=0.0, high=1.0)
        if _get(dataset, "debug_subset_fraction"):
            _number("dataset.debug_subset_fraction", _get(dataset, "debug_subset_fraction"),
                    low=0.0, high=1.0, low_open=True)
    if backend is not None:
        _int("backend.max_epochs", _get(backend, "max_epochs"), low=1, also=(-1,))
        if _get(backend, "max_steps") is not None:
            _int("backend.max_steps", _get(backend, "max_steps"), low=1, also=(-1,))
        precision = _get(backend, "precision")
        names = known_precisions()
        if str(precision) not in names or isinstance(precision, bool | float):
            raise ConfigError(f"backend.precision={precision!r} is not a precision Lightning "
                              f"knows; use one of {', '.join(names)}")
        for key in ("accumulate_grad_batches", "num_nodes"):
            if _get(backend, key) is not None:
                _int(f"backend.{key}", _get(backend, key), low=1)
        devices = _get(backend, "devices")
        if isinstance(devices, bool):
            raise ConfigError(f"backend.devices={devices!r} is not a device count, list or "
                              "'auto'")
        if isinstance(devices, int):
            _int("backend.devices", devices, low=1, also=(-1,))
        elif isinstance(devices, str) and devices.strip() != "auto" and not re.fullmatch(
                r"-?\d+|\d+(\s*,\s*\d+)*\s*,?", devices.strip()):
            raise ConfigError(f"backend.devices={devices!r} is not a device count, list or "
                              "'auto'")
        if _get(backend, "effective_batch_size") is not None:
            _int("backend.effective_batch_size", _get(backend, "effective_batch_size"), low=1)
        if _get(backend, "gradient_clip_val") is not None:
            _number("backend.gradient_clip_val", _get(backend, "gradient_clip_val"), low=0.0)
        if _get(backend, "seed") is not None:
            _int("backend.seed", _get(backend, "seed"), low=0, high=2**32 - 1)
        if _get(backend, "num_threads") is not None:
            _int("backend.num_threads", _get(backend, "num_threads"), low=1)
    if optimizer is not None:
        _number("optimizer.lr", _get(optimizer, "lr"), low=0.0, low_open=True)
        if _get(optimizer, "head_lr_multiplier") is not None:
            _number("optimizer.head_lr_multiplier", _get(optimizer, "head_lr_multiplier"),
                    low=0.0, low_open=True)
        if _get(optimizer, "weight_decay") is not None:
            _number("optimizer.weight_decay", _get(optimizer, "weight_decay"), low=0.0)
        if _get(optimizer, "eps") is not None:
            _number("optimizer.eps", _get(optimizer, "eps"), low=0.0, low_open=True)
        betas = _get(optimizer, "betas")
        if betas is not None:
            if isinstance(betas, str) or not hasattr(betas, "__len__") or len(betas) != 2:
                raise ConfigError(f"optimizer.betas={betas!r} must be two numbers")
            for i, beta in enumerate(betas):
                _number(f"optimizer.betas[{i}]", beta, low=0.0, high=1.0, high_open=True)


def check_checkpoint_file(path: str | Path, weights_only: bool, where: str) -> None:
    """Refuse a resume path that is no checkpoint, from its container only (nothing unpickled).

    A ``.ckpt``/``.pt`` (torch's zip format with a ``data.pkl``) resumes a run; a
    ``.safetensors`` (header length + JSON header) holds weights only, so it needs
    ``train_stage.weights_only=true``.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{where} {path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = path.stat().st_size
            if path.suffix.lower() == ".safetensors":
                if len(head) < 8:
                    raise ConfigError(f"{where} {path} is not a checkpoint: too short for a "
                                      ".safetensors file")
                (length,) = struct.unpack("<Q", head)
                if not 2 <= length <= min(size - 8, 100 << 20):
                    raise ConfigError(f"{where} {path} is not a checkpoint: its .safetensors "
                                      "header is malformed")
                try:
                    header = json.loads(fh.read(length))
                except ValueError:
                    header = None
                if not isinstance(header, dict):
                    raise ConfigError(f"{where} {path} is not a checkpoint: its .safetensors "
                                      "header is not a JSON object")
                if not weights_only:
                    raise ConfigError(f"{where} {path} holds weights only (.safetensors): "
                                      "add train_stage.weights_only=true to start from them, "
                                      "or resume from a .ckpt")
                return
    except OSError as err:
        raise ConfigError(f"{where} {path} cannot be read: {err.strerror or err}") from None
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{where} {path} is not a checkpoint (not a .ckpt/.pt file saved by "
                          "torch, nor a .safetensors file)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ConfigError(f"{where} {path} is not a checkpoint: {err}") from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise ConfigError(f"{where} {path} is a zip archive without a torch checkpoint inside")


def check_validation_split(cfg: Any, splits: Any) -> None:
    """A run whose monitored metrics come from validation needs validation samples.

    A small folder with ``val_split`` 0.1 gets ``int(n * 0.1) = 0`` validation samples; the
    run would train a whole epoch and then fail in the checkpoint callback looking for
    ``val_iou``.
    """
    if sum(len(s) for s in splits.val):
        return
    stage = cfg.get("train_stage") or {}
    monitors = []
    checkpoint = _get(stage, "checkpoint") or {}
    if _get(checkpoint, "monitor"):
        monitors.append(f"train_stage.checkpoint.monitor={_get(checkpoint, 'monitor')}")
    early = _get(stage, "early_stopping") or {}
    if _get(early, "enabled") is not False and _get(early, "monitor"):
        monitors.append(f"train_stage.early_stopping.monitor={_get(early, 'monitor')}")
    if not monitors:
        return
    sizes = ", ".join(f"{s.name}={len(s)}" for s in splits.train) or "-"
    val_split = _get(cfg.get("dataset") or {}, "val_split")
    raise DataConfigError(
        f"no validation samples: dataset.val_split={val_split} of the training samples "
        f"({sizes}) rounds down to 0, but {' and '.join(monitors)} need validation; raise "
        "dataset.val_split, add dataset.val_datasets, or add samples")
