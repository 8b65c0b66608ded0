"""Checkpoint metadata is input, not instructions.

A checkpoint file names its architecture and constructor config (safetensors metadata key
``s3od``, the ``architecture``/``config`` entries of a torch file, a ``config.json`` beside
it). Whoever wrote the file chose those values, so before anything is built from them:

- the metadata must be a JSON object with known keys, the config a mapping;
- the architecture must be a registered inference family (:mod:`s3od.architectures`);
- config keys must be constructor arguments of that family, with values of the expected type
  and within bounds; ``pretrained``, ``pretrained_encoder`` and ``encoder_name`` are refused,
  so a file can never make the loader read or download other weights;
- the network those values describe is first built on the ``meta`` device (no memory), and
  must not hold more numbers than the file itself: a 1 KB file cannot make the loader
  allocate gigabytes.

Every refusal is a :class:`~s3od.errors.CheckpointError` naming the file and the value.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

from s3od.errors import CheckpointError

#: Keys of the metadata object itself.
METADATA_KEYS = frozenset({"architecture", "config", "name"})
#: Constructor switches that load weights from elsewhere: never taken from a file.
FORBIDDEN_KEYS = frozenset({"pretrained", "pretrained_encoder", "encoder_name"})
#: Largest integer any width, depth or count may have (the largest published value is 1024
#: channels; DINOv3-L's MLP is 4096 wide).
MAX_INT = 16384
#: Input side stored with the weights.
IMAGE_SIZE_RANGE = (16, 8192)
#: String-valued options and the values each may take.
CHOICES: dict[str, tuple[str, ...]] = {
    "iou_head": ("global", "mask_statistics"),
    "encoder": ("lite0", "lite1", "lite2"),
    "hidden_act": ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish"),
}
#: Lists of integers a config may hold, with their longest length.
INT_LISTS = {"layer_indices": 64, "out_channels": 16}


def _bad(source: str, message: str) -> CheckpointError:
    return CheckpointError(f"{source}: checkpoint metadata refused: {message}")


def parse_metadata(raw: str | bytes | None, source: str) -> dict[str, Any]:
    """The ``s3od`` metadata string of a safetensors file as a checked dict (``{}`` if none)."""
    if raw is None or raw == "":
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, TypeError) as err:
        raise _bad(source, f"not JSON ({err})") from None
    return check_metadata(meta, source)


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """A metadata object (safetensors JSON, torch file entries, ``config.json``), checked for
    shape only: an object with known keys, a string architecture, a mapping config."""
    if not isinstance(meta, Mapping):
        raise _bad(source, f"expected a JSON object, got {type(meta).__name__}")
    unknown = sorted(str(k) for k in meta if k not in METADATA_KEYS)
    if unknown:
        raise _bad(source, f"unknown keys {unknown[:5]} (known: {sorted(METADATA_KEYS)})")
    arch = meta.get("architecture")
    if arch is not None and not isinstance(arch, str):
        raise _bad(source, f"'architecture' must be a string, got {type(arch).__name__}")
    config = meta.get("config")
    if config is not None and not isinstance(config, Mapping):
        raise _bad(source, f"'config' must be an object, got {type(config).__name__}")
    name = meta.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(source, f"'name' must be a string, got {type(name).__name__}")
    out: dict[str, Any] = dict(meta)
    if config is not None:
        out["config"] = dict(config)
    return out


def _int(key: str, value: Any, source: str, low: int = 0, high: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(source, f"{key} must be an integer, got {value!r:.60}")
    if not low <= value <= high:
        raise _bad(source, f"{key}={value} is outside [{low}, {high}]")
    return value


def _scalar(key: str, value: Any, source: str) -> Any:
    """One value of a config: bounded int, finite float, bool, None or a known string."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _int(key, value, source)
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e6:
            raise _bad(source, f"{key}={value} is not a finite number in [-1e6, 1e6]")
        return value
    if isinstance(value, str):
        allowed = CHOICES.get(key.rpartition(".")[2])
        if allowed is None:
            raise _bad(source, f"{key} cannot be a string (got {value!r:.60})")
        if value not in allowed:
            raise _bad(source, f"{key}={value!r:.60} is not one of {list(allowed)}")
        return value
    raise _bad(source, f"{key} has an unsupported value of type {type(value).__name__}")


def _bundled_dinov3_configs() -> dict[str, dict[str, Any]]:
    folder = resources.files("s3od.modeling.configs")
    return {p.name[:-len(".json")]: json.loads(p.read_text()) for p in folder.iterdir()
            if p.name.endswith(".json")}


def _encoder_config(value: Any, source: str) -> str | dict[str, Any]:
    """DINOv3 ``encoder_config``: a bundled name, or a dict of the bundled configs' keys."""
    bundled = _bundled_dinov3_configs()
    if isinstance(value, str):
        if value not in bundled:
            raise _bad(source, f"encoder_config {value!r:.60} is not a bundled config "
                               f"({sorted(bundled)})")
        return value
    if not isinstance(value, Mapping):
        raise _bad(source, f"encoder_config must be a name or an object, got "
                           f"{type(value).__name__}")
    known = set().union(*(c.keys() for c in bundled.values())) - {"architectures", "model_type"}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise _bad(source, f"encoder_config has unknown keys {unknown[:5]}")
    return {k: _scalar(f"encoder_config.{k}", v, source) for k, v in value.items()}


def check_config(architecture: Any, config: Any, source: str) -> tuple[str, dict[str, Any]]:
    """``(architecture, config)`` if a file may choose them; :class:`CheckpointError` if not.

    ``config`` may hold ``image_size`` besides the constructor arguments.
    """
    from s3od.architectures import get_architecture

    if not isinstance(architecture, str):
        raise _bad(source, f"architecture must be a string, got {type(architecture).__name__}")
    arch = get_architecture(architecture, inference=True)  # UnknownArchitectureError otherwise
    if not isinstance(config, Mapping):
        raise _bad(source, f"config must be an object, got {type(config).__name__}")
    params = inspect.signature(arch.builder).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    target = _constructor(arch.module_type)
    signature = dict(inspect.signature(target).parameters) if target else {}
    signature.pop("self", None)
    if not target and not accepts_any:
        signature = dict(params)
    allowed = set(signature)
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise _bad(source, f"config key {key!r:.40} is not a string")
        if key in FORBIDDEN_KEYS:
            raise _bad(source, f"config sets {key!r}: a checkpoint cannot ask for other weights "
                               "to be loaded")
        if key == "image_size":
            out[key] = _int(key, value, source, *IMAGE_SIZE_RANGE)
        elif key not in allowed:
            raise _bad(source, f"unknown config key {key!r} for architecture {architecture!r} "
                               f"(known: {sorted(allowed - FORBIDDEN_KEYS)})")
        elif key == "encoder_config":
            out[key] = _encoder_config(value, source)
        elif key in INT_LISTS:
            if not isinstance(value, (list, tuple)) or len(value) > INT_LISTS[key]:
                raise _bad(source, f"{key} must be a list of at most {INT_LISTS[key]} integers")
            out[key] = [_int(f"{key}[{i}]", v, source) for i, v in enumerate(value)]
        else:
            out[key] = _typed(key, value, signature[key].default, source)
    return architecture, out


def _typed(key: str, value: Any, default: Any, source: str) -> Any:
    """``value`` if it has the type of the constructor's default (and passes its bounds)."""
    if isinstance(default, bool) and not isinstance(value, bool):
        raise _bad(source, f"{key} must be true or false, got {value!r:.60}")
    if isinstance(default, int) and not isinstance(default, bool):
        return _int(key, value, source)
    return _scalar(key, value, source)


def _constructor(module_type: str) -> Any:
    """The class ``module.QualName`` (the constructor a builder calls), or None."""
    if not module_type:
        return None
    import importlib

    module, _, name = module_type.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def check_size(architecture: str, config: dict[str, Any], numel_in_file: int,
               source: str) -> None:
    """Refuse a config whose network holds more numbers than the file (built on ``meta``)."""
    import torch

    from s3od.architectures import build_model

    try:
        with torch.device("meta"):
            model = build_model(architecture, **config)
    except CheckpointError:
        raise
    except Exception as err:  # a constructor refusing the values (e.g. heads not divisible)
        raise _bad(source, f"cannot build {architecture!r} from it: "
                           f"{type(err).__name__}: {str(err)[:200]}") from None
    needed = sum(t.numel() for t in model.state_dict().values())
    if needed > numel_in_file:
        raise _bad(source, f"the weights do not fit it: it describes a {architecture!r} "
                           f"network of {needed:,} numbers, the file holds {numel_in_file:,}; "
                           "nothing was allocated")
