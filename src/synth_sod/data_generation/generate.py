"""Step 4: per-class prompts → FLUX image → teacher mask, saved with metadata.

Layout (published, plus metadata): ``<save_path>/<class folder>/images/<idx>.jpg``,
``masks/<idx>.png`` (soft 8-bit mask at the image size) and ``metadata/<idx>.json`` with id,
category, caption (the enhanced prompt actually used), raw prompt, tag, seed, size and model.
The metadata file is written last, so it marks a complete sample: a rerun skips those and
redoes anything else.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from s3od.imageio import save_image_atomic
from synth_sod.data_generation.configs import build_config, load_mapping
from synth_sod.data_generation.features import save_feature_file
from synth_sod.data_generation.flux import GENERATION_RESOLUTIONS, FluxProbe, load_pipeline
from synth_sod.data_generation.llm import ChatClient, LLMError, make_client
from synth_sod.data_generation.prompts import (
    ClassInfo,
    PromptEnhancer,
    ensure_prompts,
    load_class_weights,
    load_classes,
)
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_write_json,
    progress,
    take_shard,
)
from synth_sod.data_generation.teacher import load_teacher, mask_to_uint8, predict_mask

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Settings of ``generation_config.yaml`` (published keys first, then additions).

    Published: 28 steps, guidance 3.5, maps from the last 3 steps over dual blocks 0–17,
    features of single blocks 4/16/27/36, 20 prompts per class, ``gpt-4o`` prompts.
    """

    model_path: str
    teacher_checkpoint_path: str
    save_path: str
    lora_path: str | None = None
    class_names_path: str = "imagenet_classes.json"
    num_inference_steps: int = 28
    num_prompts: int = 20
    class_weights_path: str | None = None
    max_tasks: int | None = None
    use_all_existing_prompts: bool = False
    guidance_scale: float = 3.5
    seed: int = 0
    resolutions: list[list[int]] | None = None
    concept_layers: list[int] = field(default_factory=lambda: list(range(18)))
    concept_steps: list[int] = field(default_factory=lambda: [-3, -2, -1])
    feature_blocks: list[int] = field(default_factory=lambda: [4, 16, 27, 36])
    feature_dim: int = 768
    concept_token: str = "first"
    max_sequence_length: int = 512
    enhance_prompts: bool = True
    classes: list[str] | None = None
    dtype: str = "bfloat16"
    offload: str = "none"
    device: str | None = None
    save_features: bool = False
    jpeg_quality: int = 95
    llm_backend: str = "openai"
    llm_model: str = "gpt-4o"
    llm_base_url: str | None = None
    llm_concurrency: int = 4

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | tuple[str, ...] = ()
                  ) -> GenerationConfig:
        return build_config(cls, load_mapping(path, overrides), str(path))

    def check_paths(self, need_model: bool = True, need_teacher: bool = True) -> None:
        """Fail before any work when a configured path is missing (e.g. the shipped
        placeholders), instead of creating folders under a placeholder name."""
        model = str(self.model_path)
        if need_model and (model.count("/") != 1 or Path(model).exists()) and not (
                Path(model) / "model_index.json").is_file():
            raise PipelineError(f"model_path: no FLUX pipeline (model_index.json) at {model!r}; "
                                "edit the config")
        if need_teacher and not Path(self.teacher_checkpoint_path).is_file():
            raise PipelineError(f"teacher_checkpoint_path: no file at "
                                f"{self.teacher_checkpoint_path!r}; edit the config")
        if self.class_weights_path and not Path(self.class_weights_path).is_file():
            raise PipelineError(f"class_weights_path: no file at {self.class_weights_path!r}")

    def resolution_table(self) -> list[tuple[int, int]]:
        table = [tuple(map(int, r)) for r in self.resolutions] if self.resolutions else list(
            GENERATION_RESOLUTIONS)
        bad = [r for r in table if len(r) != 2 or r[0] % 16 or r[1] % 16 or min(r) <= 0]
        if bad:
            raise PipelineError(f"resolutions must be [width, height] multiples of 16, got {bad}")
        return table  # type: ignore[return-value]


def sample_seed(base: int, folder: str, index: int) -> int:
    """A per-sample seed from (base seed, class, index): reproducible and different per image.

    The published code seeded every image with 42, so two images of one prompt were identical
    and diversity came only from the prompt, the enhancer and the resolution.
    """
    digest = hashlib.sha256(f"{base}:{folder}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def select_classes(cfg: GenerationConfig) -> list[ClassInfo]:
    classes = load_classes(cfg.class_names_path)
    if cfg.classes:
        wanted = [str(c) for c in cfg.classes]
        by_key = {c.folder: c for c in classes} | {str(c.index): c for c in classes}
        missing = [w for w in wanted if w not in by_key]
        if missing:
            raise PipelineError(f"classes not in {cfg.class_names_path}: {missing}")
        classes = [by_key[w] for w in wanted]
    return classes


def sample_paths(save_path: Path, folder: str, idx: int) -> dict[str, Path]:
    base = save_path / folder
    return {"image": base / "images" / f"{idx}.jpg", "mask": base / "masks" / f"{idx}.png",
            "metadata": base / "metadata" / f"{idx}.json",
            "features": base / "features" / f"{idx}.npz"}


def run_generation(cfg: GenerationConfig, shard: Shard | None = None, *, pipe: Any = None,
                   teacher: Any = None, client: ChatClient | None = None) -> Manifest:
    """Generate this shard's samples. ``pipe``/``teacher``/``client`` may be given (tests);
    otherwise they are loaded from the config only when there is work left."""
    shard = shard or Shard()
    cfg.check_paths(need_model=pipe is None, need_teacher=teacher is None)
    save_path = Path(cfg.save_path)
    classes = select_classes(cfg)
    weights = load_class_weights(cfg.class_weights_path)
    counts = [weights.get(c.folder, cfg.num_prompts) for c in classes]
    mine = take_shard(list(zip(classes, counts, strict=True)), shard, counts)
    table = cfg.resolution_table()
    manifest = Manifest.create(save_path, "generate", shard, {
        k: v for k, v in asdict(cfg).items() if not k.startswith("llm_")})

    llm: ChatClient | None = client
    if llm is None and cfg.llm_backend:
        llm = _Deferred(lambda: make_client(cfg.llm_backend, cfg.llm_model, cfg.llm_base_url))

    todo: list[tuple[ClassInfo, int, str]] = []
    for cls, count in mine:
        prompts_file = save_path / cls.folder / "prompts.txt"
        try:
            prompts = ensure_prompts(cls, prompts_file, count, llm,
                                     use_all_existing=cfg.use_all_existing_prompts)
        except LLMError:
            manifest.close()
            raise
        except PipelineError as err:
            manifest.fail(cls.folder, err)
            log.warning("no prompts for %s: %s", cls.folder, err)
            continue
        for idx, prompt in enumerate(prompts):
            manifest.total += 1
            if sample_paths(save_path, cls.folder, idx)["metadata"].is_file():
                manifest.skip()
            else:
                todo.append((cls, idx, prompt))
    if not todo:
        manifest.close()
        return manifest

    if pipe is None:
        pipe = load_pipeline(cfg.model_path, lora_path=cfg.lora_path, dtype=cfg.dtype,
                             device=cfg.device, offload=cfg.offload)
    if teacher is None:
        teacher = load_teacher(cfg.teacher_checkpoint_path,
                               device=getattr(pipe, "_execution_device", "cpu"))
    probe = FluxProbe(pipe, cfg.concept_layers, cfg.feature_blocks, cfg.feature_dim,
                      cfg.concept_token)
    enhancer = PromptEnhancer()
    model_name = Path(str(cfg.model_path)).name or str(cfg.model_path)
    try:
        for cls, idx, prompt in progress(todo, total=len(todo), desc="generate"):
            sid = f"{cls.folder}_{idx}"
            try:
                record = _generate_one(cfg, probe, teacher, enhancer, cls, idx, prompt, table,
                                       save_path, model_name)
            except (PipelineError, RuntimeError, OSError, ValueError) as err:
                log.warning("sample %s failed: %s", sid, err)
                manifest.fail(sid, err)
                continue
            manifest.record({"id": sid, "seed": record["seed"]})
    finally:
        probe.close()
        manifest.close()
    return manifest


class _Deferred:
    """A chat client created on first use (no API key needed when every prompt exists)."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.client: ChatClient | None = None

    def chat(self, *args: Any, **kwargs: Any) -> str:
        if self.client is None:
            self.client = self.factory()
        return self.client.chat(*args, **kwargs)


def _generate_one(cfg: GenerationConfig, probe: FluxProbe, teacher: Any, enhancer: PromptEnhancer,
                  cls: ClassInfo, idx: int, prompt: str, table: list[tuple[int, int]],
                  save_path: Path, model_name: str) -> dict[str, Any]:
    seed = sample_seed(cfg.seed, cls.folder, idx)
    rng = random.Random(seed)
    width, height = rng.choice(table)
    caption = enhancer(prompt, rng) if cfg.enhance_prompts else prompt
    result = probe.generate(caption, [cls.tag, "background"], width, height,
                            num_inference_steps=cfg.num_inference_steps,
                            guidance_scale=cfg.guidance_scale, seed=seed,
                            concept_steps=cfg.concept_steps,
                            max_sequence_length=cfg.max_sequence_length)
    image = result.images[0].convert("RGB")
    rgb = np.asarray(image)
    mask = mask_to_uint8(predict_mask(teacher, rgb, result.features, result.maps))
    paths = sample_paths(save_path, cls.folder, idx)
    save_image_atomic(image, paths["image"], quality=cfg.jpeg_quality)
    save_image_atomic(Image.fromarray(mask, "L"), paths["mask"])
    if cfg.save_features:
        save_feature_file(paths["features"], result)
    record = {
        "id": f"{cls.folder}_{idx}", "category": cls.folder, "class_index": cls.index,
        "class_name": cls.name, "tag": cls.tag, "caption": caption, "prompt": prompt,
        "seed": seed, "width": width, "height": height, "model": model_name,
        "lora": cfg.lora_path, "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale, "teacher": Path(cfg.teacher_checkpoint_path).name,
        "concept_maps_averaged": result.maps.num_scores,
    }
    atomic_write_json(paths["metadata"], record)
    return record


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("generate")
