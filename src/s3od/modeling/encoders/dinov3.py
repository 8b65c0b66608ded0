"""DINOv3 ViT encoder from `transformers`, built from a bundled config (no download).

transformers < 5.4 stores the blocks at ``layer.{i}``; newer releases nest them at
``model.layer.{i}``. The published checkpoints use the former. Hooks installed here make
``state_dict()`` always emit ``layer.{i}`` and let ``load_state_dict`` accept either naming, so
the same checkpoint loads strictly under any transformers release.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # transformers takes seconds to import; only the ViT models need it
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

log = logging.getLogger(__name__)

_NESTED = "model.layer."
_FLAT = "layer."


def load_dinov3_config(name_or_dict: str | dict[str, Any]) -> DINOv3ViTConfig:
    """Config from a bundled JSON name (``dinov3_vitb16``) or a plain dict."""
    from transformers import DINOv3ViTConfig

    if isinstance(name_or_dict, dict):
        data = dict(name_or_dict)
    else:
        path = resources.files("s3od.modeling.configs").joinpath(f"{name_or_dict}.json")
        if not path.is_file():
            raise ValueError(f"Unknown DINOv3 config {name_or_dict!r}")
        data = json.loads(path.read_text())
    data.pop("architectures", None)
    data.pop("model_type", None)
    return DINOv3ViTConfig(**data)


def _rename(state_dict: dict[str, Any], old: str, new: str) -> None:
    """Rename keys in place, keeping their order."""
    if not any(k.startswith(old) for k in state_dict):
        return
    items = [(new + k[len(old):] if k.startswith(old) else k, v) for k, v in state_dict.items()]
    state_dict.clear()
    state_dict.update(items)


def _save_hook(module: torch.nn.Module, state_dict: dict, prefix: str, _meta: Any) -> None:
    _rename(state_dict, prefix + _NESTED, prefix + _FLAT)


def _load_hook(module: torch.nn.Module, state_dict: dict, prefix: str, *_args: Any) -> None:
    if hasattr(module, "model") and hasattr(module.model, "layer"):
        _rename(state_dict, prefix + _FLAT, prefix + _NESTED)
    else:
        _rename(state_dict, prefix + _NESTED, prefix + _FLAT)


def patch_size_of(config: DINOv3ViTConfig) -> int:
    """The square patch side; the config type also allows (h, w) pairs, which nothing here
    supports."""
    size = config.patch_size
    if isinstance(size, int):
        return size
    if len(set(size)) == 1:
        return int(size[0])
    raise ValueError(f"DINOv3 config with non-square patches {size} is not supported")


def build_dinov3(config: DINOv3ViTConfig) -> DINOv3ViTModel:
    """A randomly initialised DINOv3 ViT whose state-dict naming is version independent."""
    from transformers import DINOv3ViTModel

    config._attn_implementation = "sdpa"
    model = DINOv3ViTModel(config)
    model.register_state_dict_post_hook(_save_hook)
    model.register_load_state_dict_pre_hook(_load_hook)
    return model


def load_pretrained_dinov3(encoder: torch.nn.Module, hub_id: str, **kwargs: Any) -> None:
    """Copy hub DINOv3 weights (``DINOv3ViTModel.from_pretrained``) into ``encoder``.

    Used at the start of training. The hub repositories are gated: accept the licence on the
    model page and log in (``hf auth login``) first. Shapes must match the encoder config.
    """
    from transformers import DINOv3ViTModel

    source = DINOv3ViTModel.from_pretrained(hub_id, **kwargs)
    missing, unexpected = encoder.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"DINOv3 weights from {hub_id} do not fit the encoder: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info("loaded DINOv3 weights from %s", hub_id)


def dinov3_features(
    model: DINOv3ViTModel, pixel_values: torch.Tensor, indices: Sequence[int]
) -> list[torch.Tensor]:
    """Patch-token maps ``(B, D, H/16, W/16)`` of the selected hidden states.

    ``hidden_states[0]`` is the embedding output and ``hidden_states[k]`` the raw output of
    block k (before the final norm), as in the published model.
    """
    out = model(pixel_values, output_hidden_states=True)
    cfg = model.config
    patch = patch_size_of(cfg)
    b = pixel_values.shape[0]
    gh, gw = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    skip = 1 + cfg.num_register_tokens
    return [
        out.hidden_states[i][:, skip:].transpose(1, 2).reshape(b, cfg.hidden_size, gh, gw)
        for i in indices
    ]
