"""YAML configs for the generation and filtering steps: find, parse, override, validate.

A config is a flat YAML mapping read into a dataclass. Unknown keys are an error that lists the
valid ones (a typo must not silently fall back to a default). ``key=value`` overrides (the
published filtering entry point took Hydra-style overrides) are applied with OmegaConf's
``OmegaConf.update``, so ``filters.0.iou_threshold=0.8`` works too.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from synth_sod.data_generation.sharding import PipelineError

PACKAGE_DIR = Path(__file__).resolve().parent
C = TypeVar("C")


def resolve_config_path(path: str | os.PathLike) -> Path:
    """``path`` as given, else a file of that name shipped next to the package."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and (PACKAGE_DIR / p.name).is_file() and len(p.parts) == 1:
        return PACKAGE_DIR / p.name
    raise PipelineError(f"config file not found: {path}")


def load_mapping(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML file as a plain dict with ``key=value`` overrides applied."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise PipelineError(f"{p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{p}: expected a mapping of settings at the top level")
    data.pop("defaults", None)
    data.pop("hydra", None)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise PipelineError(f"overrides must look like key=value, got {bad}")
        try:
            conf = OmegaConf.create(data)
            for item in overrides:
                key, value = item.split("=", 1)
                OmegaConf.update(conf, key.strip(), yaml.safe_load(value), merge=True)
            data = OmegaConf.to_container(conf, resolve=True)  # type: ignore[assignment]
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise PipelineError(f"bad override: {err}") from None
    return data


def build_config(cls: type[C], data: dict[str, Any], source: str) -> C:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown or missing keys."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(k for k in data if k not in names and not k.startswith("_"))
    if unknown:
        raise PipelineError(f"{source}: unknown setting(s) {unknown}; valid: {sorted(names)}")
    kwargs = {k: v for k, v in data.items() if k in names}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise PipelineError(f"{source}: {err}") from None
