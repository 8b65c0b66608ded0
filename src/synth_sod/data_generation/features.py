"""Step 3: FLUX features and concept maps of real images (the teacher's training inputs).

For each image that has both a caption and a tag: resize to the closest FLUX resolution, run
one near-noise-free img2img step with the caption as prompt and ``[tag, "background"]`` as
concepts, and save ``<save_folder>/features/<image_id>.npz`` with the published keys:
``image_resolution`` (H, W), ``category`` and ``background`` (float32, H/16 × W/16, joint
min–max scaled) and ``layer_0`` … ``layer_3`` (float16, (H/16·W/16, 768)).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from s3od.errors import InvalidImageError
from s3od.imageio import load_image
from synth_sod.data_generation.captions import image_id, read_records
from synth_sod.data_generation.flux import (
    REAL_IMAGE_RESOLUTIONS,
    FluxProbe,
    FluxResult,
    closest_resolution,
    load_pipeline,
)
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_save,
    progress,
    take_shard,
)

log = logging.getLogger(__name__)
FEATURE_BLOCKS = (4, 16, 27, 36)
CONCEPT_LAYERS_REAL = tuple(range(18))


def save_feature_file(path: Path, result: FluxResult, index: int = 0) -> Path:
    """Write one image's features and maps in the published npz layout (atomically)."""
    h, w = result.grid
    arrays: dict[str, Any] = {
        "image_resolution": np.array([h * 16, w * 16], dtype=np.int64),
        "category": result.maps.scaled[index, 0].numpy().astype(np.float32),
        "background": result.maps.scaled[index, -1].numpy().astype(np.float32),
    }
    for i, feats in enumerate(result.features):
        arrays[f"layer_{i}"] = feats[index].numpy().astype(np.float16)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    return atomic_save(path, write)


def extract_real_features(caption_file: str | os.PathLike, tag_file: str | os.PathLike,
                          save_folder: str | os.PathLike, model_path: str | os.PathLike | None,
                          *, shard: Shard | None = None, pipe: Any = None,
                          device: str | None = None, dtype: str = "bfloat16",
                          offload: str = "none", lora_path: str | None = None,
                          feature_blocks: Sequence[int] = FEATURE_BLOCKS,
                          concept_layers: Sequence[int] = CONCEPT_LAYERS_REAL,
                          feature_dim: int = 768, schedule_steps: int = 50,
                          guidance_scale: float = 3.5, seed: int = 42,
                          concept_token: str = "first", max_sequence_length: int = 512,
                          resolutions: Sequence[tuple[int, int]] = REAL_IMAGE_RESOLUTIONS
                          ) -> Manifest:
    """Features for this shard's images; images with an npz already are skipped.

    ``pipe`` may be a ready ``FluxImg2ImgPipeline`` (tests); otherwise ``model_path`` is loaded
    only if there is work left.
    """
    shard = shard or Shard()
    captions = read_records(caption_file, "caption")
    tags = read_records(tag_file, "tag")
    paths = sorted(set(captions) & set(tags))
    if not paths:
        raise PipelineError(f"no image has both a caption ({caption_file}) and a tag ({tag_file})")
    ids: dict[str, str] = {}
    for p in paths:
        iid = image_id(p)
        if iid in ids:
            raise PipelineError(f"two images map to the id {iid}: {ids[iid]} and {p}")
        ids[iid] = p
    out_dir = Path(save_folder) / "features"
    mine = take_shard(paths, shard)
    todo = [p for p in mine if not (out_dir / f"{image_id(p)}.npz").is_file()]
    manifest = Manifest.create(save_folder, "features", shard, {
        "model_path": str(model_path), "feature_blocks": list(feature_blocks),
        "concept_layers": list(concept_layers), "feature_dim": feature_dim,
        "schedule_steps": schedule_steps, "guidance_scale": guidance_scale, "seed": seed,
        "concept_token": concept_token})
    manifest.total, manifest.skipped = len(mine), len(mine) - len(todo)
    if not todo:
        manifest.close()
        return manifest
    if pipe is None:
        if model_path is None:
            raise PipelineError("model_path is required")
        pipe = load_pipeline(model_path, img2img=True, lora_path=lora_path, dtype=dtype,
                             device=device, offload=offload)
    probe = FluxProbe(pipe, concept_layers, feature_blocks, feature_dim, concept_token)
    try:
        for path in progress(todo, total=len(todo), desc="features"):
            iid = image_id(path)
            try:
                rgb = load_image(path)
                width, height = closest_resolution(rgb.shape[1], rgb.shape[0], resolutions)
                image = Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS)
                result = probe.extract(image, captions[path], [tags[path], "background"],
                                       schedule_steps=schedule_steps,
                                       guidance_scale=guidance_scale, seed=seed,
                                       max_sequence_length=max_sequence_length)
                target = save_feature_file(out_dir / f"{iid}.npz", result)
            except (InvalidImageError, PipelineError, OSError, RuntimeError) as err:
                log.warning("features failed for %s: %s", path, err)
                manifest.fail(str(path), err)
                continue
            manifest.record({
                "image_id": iid, "image_path": path,
                "features_path": str(target.relative_to(save_folder)),
                "category": tags[path], "caption": captions[path],
                "original_size": [int(rgb.shape[1]), int(rgb.shape[0])],
                "processed_size": [width, height]})
    finally:
        probe.close()
        manifest.close()
    return manifest


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("features")
