"""Checkpoint resolution and (de)serialisation: local file, folder, hub id, bundled fallback.

Formats understood: safetensors (architecture + config in the metadata key ``s3od``), torch
pickles loaded with ``weights_only=True`` (``{"state_dict": ...}`` as published, optionally with
``architecture``/``config``), and Lightning ``.ckpt`` files (``model.`` prefix stripped).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from s3od.architectures import build_model, get_architecture
from s3od.checkpoint_meta import check_config, check_metadata, check_size, parse_metadata
from s3od.errors import CheckpointError, ModelNotFoundError
from s3od.registry import DEFAULT_MODEL, FALLBACK_MODEL, ModelSpec, get_spec

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("s3od.safetensors", "model.safetensors", "s3od.pt", "model.pt", "last.ckpt")
_METADATA_KEY = "s3od"


@dataclass
class ResolvedCheckpoint:
    """Weights plus what is needed to build the module they belong to."""

    state_dict: dict[str, torch.Tensor]
    architecture: str
    config: dict[str, Any]
    source: str
    name: str
    image_size: int = 1024


# ----------------------------------------------------------------------------- file formats


def save_checkpoint(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    architecture: str,
    config: dict[str, Any],
    dtype: torch.dtype | None = None,
    name: str | None = None,
) -> Path:
    """Write weights in the format :func:`load_checkpoint` reads (by suffix: safetensors or pt).

    ``dtype`` casts floating tensors (e.g. ``torch.float16`` to halve the file); integer
    buffers such as ``num_batches_tracked`` keep their type.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {"architecture": architecture, "config": config, "name": name or path.stem}
    tmp = path.with_name(f".{path.name}.part")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(meta)})
    else:
        torch.save({"state_dict": tensors, **meta}, tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a model file is meant to be shared
    os.replace(tmp, path)
    return path


def _clean_keys(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Strip wrappers (Lightning ``model.``, DDP ``module.``) so keys start at encoder/seg_head."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "model."):
            if key.startswith(prefix) and not key.startswith(("encoder.", "seg_head.")):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None, dict]:
    """Read a checkpoint file -> ``(state_dict, architecture or None, config)``."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint not found: {path}")
    meta: dict[str, Any] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                raw_meta = (fh.metadata() or {}).get(_METADATA_KEY)
                meta = parse_metadata(raw_meta, str(path))  # before any tensor is read
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        else:
            from s3od.checkpoint_io import load_torch_checkpoint

            obj = load_torch_checkpoint(path)  # weights_only=True + the Lightning allow-list
            if not isinstance(obj, dict):
                raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
            state = obj.get("state_dict", obj)
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, "
                                      "not a mapping of tensors")
            meta = {k: obj[k] for k in ("architecture", "config") if k in obj}
            if not meta and isinstance(obj.get("hyper_parameters"), dict):
                meta = {k: obj["hyper_parameters"][k] for k in ("architecture", "config")
                        if k in obj["hyper_parameters"]}
            meta = check_metadata(meta, str(path))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    state = _clean_keys(state)
    if not state:
        raise CheckpointError(f"{path}: no tensors found")
    return state, meta.get("architecture"), dict(meta.get("config") or {})


def _lite_variant(sd: dict[str, torch.Tensor]) -> str:
    """EfficientNet-Lite0/1/2 by the depth of stage 1 and the width of stage 2."""
    from s3od.modeling.encoders.efficientnet_lite import VARIANTS

    depth = 1 + max((int(m.group(1)) for k in sd
                     if (m := re.match(r"encoder\.stages\.1\.(\d+)\.", k))), default=-1)
    width = sd.get("encoder.stages.2.0.project.conv.weight")
    for name, stages in VARIANTS.items():
        if stages[1][4] == depth and width is not None and stages[2][3] == width.shape[0]:
            return name
    raise CheckpointError(f"unknown EfficientNet-Lite encoder: stage 1 has {depth} blocks, "
                          f"stage 2 width {None if width is None else width.shape[0]}")


def infer_config(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Guess architecture and constructor arguments from tensor shapes (for bare checkpoints)."""
    sd = state_dict
    from_masks = "seg_head.classifier_head.mlp.0.weight" in sd
    refined = "seg_head.mask_head.refine.0.weight" in sd  # RefinedMaskHead (s3od-lite v6)
    try:
        sizes = {
            "features": sd["seg_head.scratch.layer1_rn.weight"].shape[0],
            "num_masks": sum(1 for k in sd if re.fullmatch(
                r"seg_head\.mask_head\.mask_heads\.\d+\.0\.weight", k)),
            "mask_inter_features": sd["seg_head.mask_head.mask_heads.0.0.weight"].shape[0],
            "mask_upsample_features": (
                sd["seg_head.mask_head.reduce.weight"].shape[0] if refined
                else sd["seg_head.mask_head.upsample_2x.0.weight"].shape[1]),
            "iou_hidden": sd["seg_head.classifier_head.mlp.0.weight" if from_masks
                             else "seg_head.classifier_head.2.weight"].shape[0],
        }
    except KeyError as err:
        raise CheckpointError(f"not an s3od checkpoint: missing {err}") from None
    head: dict[str, Any] = {k: int(v) for k, v in sizes.items()}
    if from_masks:
        head["iou_head"] = "mask_statistics"
    if refined:
        head["refine_features"] = int(sd["seg_head.mask_head.refine.0.weight"].shape[0])
        head["mask_stride"] = 2
    if "encoder.embeddings.patch_embeddings.weight" in sd:
        hidden = int(sd["encoder.embeddings.patch_embeddings.weight"].shape[0])
        blocks = [re.match(r"encoder\.(?:model\.)?layer\.(\d+)\.", k) for k in sd]
        layers = 1 + max(int(m.group(1)) for m in blocks if m)
        up = next(v for k, v in sd.items() if re.search(r"layer\.0\.mlp\.up_proj\.weight$", k))
        base = "dinov3_vitl16" if hidden == 1024 else "dinov3_vitb16"
        from s3od.modeling.encoders.dinov3 import load_dinov3_config

        enc = load_dinov3_config(base).to_dict()
        enc.update(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=int(up.shape[0]),
            num_register_tokens=int(sd["encoder.embeddings.register_tokens"].shape[1]),
        )
        enc = {k: v for k, v in enc.items() if not k.startswith("_") and k not in (
            "transformers_version", "architectures", "model_type", "torch_dtype", "dtype")}
        out_channels = [int(sd[f"seg_head.projects.{i}.weight"].shape[0]) for i in range(4)]
        return "dpt_dinov3", {"encoder_config": enc, "out_channels": out_channels, **head}
    if any(k.startswith("encoder.stem.") for k in sd):
        variant = _lite_variant(sd)
        return "lite", {**head, "encoder": variant} if variant != "lite0" else head
    raise CheckpointError("cannot tell the encoder type from the checkpoint keys")


def build_from_checkpoint(resolved: ResolvedCheckpoint) -> torch.nn.Module:
    """Instantiate the architecture and load the weights strictly, with a readable error.

    The network is sized on the ``meta`` device first: one that holds more numbers than the
    checkpoint is refused before any memory is allocated.
    """
    check_size(resolved.architecture, resolved.config,
               sum(t.numel() for t in resolved.state_dict.values()), resolved.source)
    model = build_model(resolved.architecture, **resolved.config)
    try:
        model.load_state_dict(resolved.state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[:6]
        raise CheckpointError(
            f"weights from {resolved.source} do not fit architecture "
            f"{resolved.architecture!r}: " + " ".join(first)
        ) from err
    return model


# ----------------------------------------------------------------------------- resolution


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Fast check that the hub host answers; never blocks longer than ``timeout``."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _cached_hub_file(repo: str, filenames: tuple[str, ...]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return hit
    return None


def _download_hub_file(repo: str, filenames: tuple[str, ...]) -> str:
    """Download the first of ``filenames`` that the repo has (safetensors preferred)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    errors = []
    for name in filenames:
        try:
            return hf_hub_download(repo, name)
        except EntryNotFoundError as err:
            errors.append(f"{name}: not in repo ({type(err).__name__})")
        except HFValidationError as err:
            raise ModelNotFoundError(f"{repo!r} is not a valid hub id: {err}") from err
        except Exception as err:  # network, auth, missing repo, offline and not cached
            errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
    raise ModelNotFoundError(f"could not fetch {repo} from the Hugging Face hub; tried "
                             + "; ".join(errors))


def _from_file(path: Path, spec: ModelSpec | None, name: str) -> ResolvedCheckpoint:
    state, arch, config = load_checkpoint(path)
    if arch is not None:  # chosen by the file: only known architectures and bounded sizes
        arch, config = check_config(arch, config, str(path))
    if arch is None and spec is not None:
        arch, config = spec.architecture, dict(spec.config)
    if arch is None:
        sidecar = path.with_name("config.json")
        if sidecar.is_file():
            try:
                raw = json.loads(sidecar.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(f"cannot read {sidecar}: {err}") from None
            data = check_metadata(raw, str(sidecar))
            if data.get("architecture") is not None:
                arch, config = check_config(data["architecture"], data.get("config") or {},
                                            str(sidecar))
    if arch is None:
        arch, config = infer_config(state)
    # Input side: the registry entry's, else one stored with the weights, else the default of
    # the architecture (s3od.architectures decides it, e.g. 320 for a bare lite checkpoint).
    stored = int(config.pop("image_size", 0) or 0)
    size = spec.image_size if spec else stored or get_architecture(arch).image_size
    return ResolvedCheckpoint(state, arch, config, str(path), name, size)


def _from_folder(folder: Path) -> ResolvedCheckpoint:
    for candidate in CHECKPOINT_NAMES:
        if (folder / candidate).is_file():
            return _from_file(folder / candidate, None, folder.name)
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".pt", ".pth",
                                                                     ".ckpt"))
    if len(found) == 1:
        return _from_file(folder / found[0], None, folder.name)
    raise ModelNotFoundError(
        f"no checkpoint in folder {folder}: looked for {', '.join(CHECKPOINT_NAMES)}"
        + (f"; found several candidates: {', '.join(found)}" if found else ""))


def _from_spec(spec: ModelSpec) -> ResolvedCheckpoint:
    bundled = spec.bundled_path()
    if bundled is not None:
        if not bundled.is_file():
            raise ModelNotFoundError(f"bundled weights for {spec.name} missing at {bundled}")
        return _from_file(bundled, spec, spec.name)
    assert spec.hub_repo is not None
    path = _cached_hub_file(spec.hub_repo, spec.hub_filenames)
    if path is None:
        path = _download_hub_file(spec.hub_repo, spec.hub_filenames)
    return _from_file(Path(path), spec, spec.name)


def resolve(model_id: str | os.PathLike | None = None) -> ResolvedCheckpoint:
    """Find weights for ``model_id``: None, a registry name, a local path or a hub id.

    ``None`` means the published ``okupyn/s3od`` if it is cached or the hub is reachable,
    otherwise the bundled ``s3od-lite``; one log line says which and why.
    """
    if model_id is None:
        spec = get_spec(DEFAULT_MODEL)
        assert spec is not None and spec.hub_repo
        if _cached_hub_file(spec.hub_repo, spec.hub_filenames):
            log.info("s3od: using %s (found in the Hugging Face cache)", spec.hub_repo)
            return _from_spec(spec)
        if _hub_reachable():
            log.info("s3od: using %s (downloading from the Hugging Face hub)", spec.hub_repo)
            try:
                return _from_spec(spec)
            except ModelNotFoundError as err:
                log.warning("s3od: %s; falling back to the bundled %s", err, FALLBACK_MODEL)
        else:
            log.info("s3od: using bundled %s (hub offline and %s not cached)", FALLBACK_MODEL,
                     spec.hub_repo)
        fallback = get_spec(FALLBACK_MODEL)
        assert fallback is not None
        return _from_spec(fallback)

    text = os.fspath(model_id)
    path = Path(text).expanduser()
    if path.is_file():
        return _from_file(path, None, path.stem)
    if path.is_dir():
        return _from_folder(path)
    spec = get_spec(text)
    if spec is not None:
        return _from_spec(spec)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        local = _cached_hub_file(text, CHECKPOINT_NAMES[:4])
        file = local or _download_hub_file(text, ("s3od.safetensors", "s3od.pt",
                                                  "model.safetensors"))
        return _from_file(Path(file), None, text)
    from s3od.registry import MODELS

    raise ModelNotFoundError(
        f"cannot resolve model {text!r}: not a file or folder, not a registry name "
        f"({', '.join(MODELS)}), not a hub id (owner/name)")
