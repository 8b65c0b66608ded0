"""FLUX through stock diffusers pipelines, with block features and concept maps captured.

:class:`FluxProbe` wraps a ``FluxPipeline`` (generation) or ``FluxImg2ImgPipeline`` (features of
real images) and, during the pipeline call, records

* the image tokens of chosen **single-stream** blocks (published: 4, 16, 27, 36 of 38) at one
  denoising step (default: the last), channel-compressed 3072 → 768 by averaging groups of
  consecutive channels, as the teacher expects;
* concept-attention maps for ``[tag, "background"]`` (see :mod:`.concept_attention`).

The time shift, latent packing and scheduler are diffusers' own, so the published pipeline's
4×-too-small shift sequence length is gone (docs/data-generation.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from synth_sod.data_generation.concept_attention import ConceptAttention, ConceptMaps
from synth_sod.data_generation.sharding import PipelineError

# (width, height) pairs drawn uniformly for generated images (published generation table).
GENERATION_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (896, 1024), (1024, 896), (832, 1024), (1024, 832), (1024, 768),
    (768, 1024), (960, 1024), (1024, 960), (1088, 1024), (1024, 1088),
)
# (width, height) pairs for real images: the closest aspect ratio is used (published resizer
# table, stored there as (height, width)). It differs from the generation table, as published.
REAL_IMAGE_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1152, 896), (896, 1152), (1344, 768), (768, 1344), (1216, 832),
    (832, 1216), (1408, 704), (704, 1408), (1088, 960), (960, 1088),
)

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
OFFLOAD_MODES = ("none", "model", "sequential")


def closest_resolution(width: int, height: int,
                       table: Sequence[tuple[int, int]] = REAL_IMAGE_RESOLUTIONS
                       ) -> tuple[int, int]:
    """The ``(width, height)`` entry whose aspect ratio is closest to ``width / height``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    aspect = width / height
    return min(table, key=lambda wh: abs(wh[0] / wh[1] - aspect))


def resolve_steps(steps: Sequence[int], total: int) -> list[int]:
    """Loop indices, negatives counted from the end (``-1`` = last step), checked to exist."""
    out = []
    for s in steps:
        i = int(s) + total if int(s) < 0 else int(s)
        if not 0 <= i < total:
            raise PipelineError(f"step {s} does not exist in a {total}-step run")
        out.append(i)
    return sorted(set(out))


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise PipelineError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def default_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` under torchrun/SLURM multi-GPU launches, else ``cuda`` or CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")
    return torch.device("cuda", int(local) % torch.cuda.device_count()) if local else torch.device(
        "cuda")


def load_pipeline(model_path: str | os.PathLike, *, img2img: bool = False,
                  lora_path: str | os.PathLike | None = None, dtype: str | torch.dtype = "bfloat16",
                  device: str | torch.device | None = None, offload: str = "none",
                  vae_tiling: bool = True) -> Any:
    """Load a FLUX.1-dev-family checkpoint in diffusers layout (optionally with a LoRA).

    Args:
        model_path: folder with ``model_index.json`` (or a hub id, when online).
        img2img: load ``FluxImg2ImgPipeline`` (feature extraction) instead of ``FluxPipeline``.
        dtype: ``bfloat16`` as published; ``float32`` for CPU tests.
        offload: ``none`` (all on ``device``), ``model`` (one component at a time on the GPU:
            ~24 GB peak in bf16) or ``sequential`` (layer by layer; slowest, least memory).
        vae_tiling: decode/encode the VAE in tiles and slices (published).
    """
    from diffusers import FluxImg2ImgPipeline, FluxPipeline

    if offload not in OFFLOAD_MODES:
        raise PipelineError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    path = Path(model_path)
    looks_local = path.is_absolute() or str(model_path).startswith(".") or path.exists()
    if looks_local and not (path / "model_index.json").is_file():
        raise PipelineError(f"no FLUX pipeline at {model_path} (expected a diffusers folder with "
                            "model_index.json; set model_path in the config)")
    cls = FluxImg2ImgPipeline if img2img else FluxPipeline
    try:
        pipe = cls.from_pretrained(str(model_path), dtype=resolve_dtype(dtype))
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot load FLUX from {model_path}: {err}") from err
    if lora_path:
        if not Path(lora_path).exists():
            raise PipelineError(f"LoRA weights not found: {lora_path}")
        pipe.load_lora_weights(str(lora_path))
    device = torch.device(device) if device is not None else default_device()
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_concepts(pipe: Any, concepts: Sequence[str], token: str = "first",
                    max_sequence_length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 concept tokens ``(1, K, D_t5)`` and the CLIP pooled vector ``(1, D_clip)``.

    ``token="first"`` keeps each concept's first T5 token, as published (a two-word tag is
    represented by its first word piece); ``"mean"`` averages the concept's tokens before the
    end-of-sequence token. The pooled vector encodes the space-joined concepts.
    """
    if token not in ("first", "mean"):
        raise PipelineError(f"concept token mode must be 'first' or 'mean', got {token!r}")
    concepts = list(concepts)
    t5, _, _ = pipe.encode_prompt(prompt=concepts, prompt_2=None,
                                  max_sequence_length=max_sequence_length)
    if token == "first":
        tokens = t5[:, 0]
    else:
        ids = pipe.tokenizer_2(concepts, padding="max_length", max_length=max_sequence_length,
                               truncation=True, return_tensors="pt").input_ids
        keep = (ids != pipe.tokenizer_2.pad_token_id) & (ids != pipe.tokenizer_2.eos_token_id)
        keep[:, 0] |= ~keep.any(dim=1)  # an empty concept still gets its first token
        keep = keep.to(t5.device, t5.dtype).unsqueeze(-1)
        tokens = (t5 * keep).sum(1) / keep.sum(1)
    _, pooled, _ = pipe.encode_prompt(prompt=" ".join(concepts), prompt_2=None,
                                      max_sequence_length=max_sequence_length)
    return tokens.unsqueeze(0), pooled


class FeatureCapture:
    """Forward hooks on single-stream blocks: image tokens at one chosen transformer call."""

    def __init__(self, transformer: torch.nn.Module, blocks: Sequence[int],
                 feature_dim: int | None) -> None:
        singles = transformer.single_transformer_blocks
        bad = [b for b in blocks if not 0 <= int(b) < len(singles)]
        if bad:
            raise PipelineError(f"feature blocks {bad} do not exist: the transformer has "
                                f"{len(singles)} single-stream blocks (0..{len(singles) - 1})")
        inner = int(transformer.config.num_attention_heads * transformer.config.attention_head_dim)
        feature_dim = feature_dim or inner
        if inner % feature_dim:
            raise PipelineError(f"feature_dim {feature_dim} does not divide the transformer "
                                f"width {inner}")
        self.group = inner // feature_dim
        self.blocks = [int(b) for b in blocks]
        self.call_index = -1
        self.step = -1
        self.store: dict[int, torch.Tensor] = {}
        self._hooks = [transformer.register_forward_pre_hook(self._count)]
        for b in sorted(set(self.blocks)):
            self._hooks.append(singles[b].register_forward_hook(self._make_hook(b),
                                                                with_kwargs=True))

    def _count(self, module, args):
        self.call_index += 1

    def _make_hook(self, block: int):
        def hook(module, args, kwargs, output):
            if self.call_index != self.step:
                return
            if isinstance(output, tuple):
                image_tokens = output[1]
            else:  # older diffusers: one tensor holding text tokens first
                text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
                image_tokens = output[:, text.shape[1]:]
            b, n, d = image_tokens.shape
            tokens = image_tokens.float().reshape(b, n, d // self.group, self.group).mean(-1)
            self.store[block] = tokens.cpu()
        return hook

    def reset(self, step: int) -> None:
        self.call_index, self.step, self.store = -1, step, {}

    def features(self) -> list[torch.Tensor]:
        missing = [b for b in self.blocks if b not in self.store]
        if missing:
            raise RuntimeError(f"no features were captured for blocks {missing}")
        return [self.store[b] for b in self.blocks]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


@dataclass
class FluxResult:
    """One pipeline call's outputs.

    Attributes:
        images: generated PIL images (empty for feature extraction, which skips the VAE decode).
        features: one ``(B, N, feature_dim)`` float32 tensor per configured block, N = h·w.
        maps: concept maps on the ``(h, w)`` token grid.
        grid: ``(h, w)`` = (height, width) / 16 for FLUX.
    """

    images: list[Image.Image]
    features: list[torch.Tensor]
    maps: ConceptMaps
    grid: tuple[int, int]


class FluxProbe:
    """A FLUX pipeline that also returns block features and concept maps.

    Args:
        pipe: a loaded ``FluxPipeline`` or ``FluxImg2ImgPipeline``.
        concept_layers: dual-stream blocks averaged into the maps (published ``range(18)``).
        feature_blocks: single-stream blocks whose tokens feed the teacher (published
            ``[4, 16, 27, 36]``).
        feature_dim: channels per feature token after group averaging (published 768).
        concept_token: ``first`` (published) or ``mean``; see :func:`encode_concepts`.
    """

    def __init__(self, pipe: Any, concept_layers: Sequence[int], feature_blocks: Sequence[int],
                 feature_dim: int | None = 768, concept_token: str = "first") -> None:
        self.pipe = pipe
        self.concept_token = concept_token
        self.features = FeatureCapture(pipe.transformer, feature_blocks, feature_dim)
        try:
            self.concepts = ConceptAttention(pipe.transformer, concept_layers)
        except ValueError as err:
            self.features.remove()
            raise PipelineError(str(err)) from None

    def grid(self, width: int, height: int) -> tuple[int, int]:
        f = self.pipe.vae_scale_factor * 2
        return height // f, width // f

    def _prepare(self, concepts: Sequence[str], concept_steps: Sequence[int], total: int,
                 feature_step: int) -> None:
        embeds, pooled = encode_concepts(self.pipe, concepts, self.concept_token)
        self.concepts.state.reset(list(concepts), embeds, pooled,
                                  resolve_steps(concept_steps, total))
        self.features.reset(resolve_steps([feature_step], total)[0])

    @torch.inference_mode()
    def generate(self, prompt: str, concepts: Sequence[str], width: int, height: int, *,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5, seed: int = 42,
                 concept_steps: Sequence[int] = (-3, -2, -1), feature_step: int = -1,
                 max_sequence_length: int = 512) -> FluxResult:
        """Text to image (published: 28 steps, guidance 3.5, maps from the last 3 steps)."""
        self._prepare(concepts, concept_steps, num_inference_steps, feature_step)
        out = self.pipe(prompt=prompt, width=width, height=height,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        max_sequence_length=max_sequence_length, output_type="pil",
                        generator=torch.Generator("cpu").manual_seed(int(seed)))
        grid = self.grid(width, height)
        return FluxResult(list(out.images), self.features.features(),
                          self.concepts.state.maps(grid), grid)

    @torch.inference_mode()
    def extract(self, image: Image.Image, caption: str, concepts: Sequence[str], *,
                schedule_steps: int = 50, guidance_scale: float = 3.5, seed: int = 42,
                max_sequence_length: int = 512) -> FluxResult:
        """One near-noise-free img2img step on a real image (published feature extraction).

        The scheduler is laid out for ``schedule_steps`` steps with the resolution's time
        shift and only the last, least noisy step runs (``strength = 1 / schedule_steps``).
        ``image`` must already have a FLUX size (see :func:`closest_resolution`).
        """
        self._prepare(concepts, [0], 1, 0)
        width, height = image.size
        self.pipe(prompt=caption, image=image, width=width, height=height,
                  num_inference_steps=schedule_steps, strength=1.0 / schedule_steps,
                  guidance_scale=guidance_scale, max_sequence_length=max_sequence_length,
                  output_type="latent", generator=torch.Generator("cpu").manual_seed(int(seed)))
        grid = self.grid(width, height)
        return FluxResult([], self.features.features(), self.concepts.state.maps(grid), grid)

    def close(self) -> None:
        self.features.remove()
        self.concepts.remove()
