"""Step 5: run the configured filters over generated samples; copy survivors to a flat folder.

Input: the generation layout ``<input_path>/<class>/{images,masks,metadata}/<idx>.*``.
Output (the layout the training datasets read):

* ``<output_path>/images/<class>_<idx>.jpg``, ``masks/<class>_<idx>.png``,
  ``metadata/<class>_<idx>.json`` for samples that pass every filter;
* ``<output_path>/rejections/<shard tag>.jsonl``: one line per rejected sample with the filter
  that rejected it, its score and reason (a rerun skips these instead of paying the VLM again);
* ``<output_path>/fail_cases/<filter>/<class>_<idx>.jpg`` (with ``save_fail_cases``): an
  ``image | mask | overlay`` strip under a header saying why.

Filters run in order and the first failure stops the chain.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from s3od.errors import InvalidImageError
from s3od.imageio import save_image_atomic
from synth_sod.data_generation.configs import build_config, load_mapping
from synth_sod.data_generation.filters import BaseFilter, FilterResult, Sample, build_filter
from synth_sod.data_generation.filters.vlm import overlay
from synth_sod.data_generation.llm import LLMError
from synth_sod.data_generation.samples import (
    SampleError,
    check_sample,
    describe_ignored,
    list_images,
)
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_write_json,
    progress,
    readable_text,
    take_shard,
)

log = logging.getLogger(__name__)


@dataclass
class FilteringConfig:
    """Settings of ``filtering_config.yaml`` (published keys)."""

    input_path: str
    output_path: str
    filters: list[dict[str, Any]] = field(default_factory=list)
    max_samples_per_class: int | None = None
    max_tasks: int | None = None
    log_level: str = "INFO"
    save_fail_cases: bool = False

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | tuple[str, ...] = ()
                  ) -> FilteringConfig:
        return build_config(cls, load_mapping(path, overrides), str(path))


def _index_key(stem: str) -> tuple[int, str]:
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


def discover_samples(input_path: str | os.PathLike,
                     max_per_class: int | None = None) -> list[Sample]:
    """Every ``<class>/images/<idx>.*`` (suffixes of :data:`IMAGE_SUFFIXES`) with a
    ``masks/<idx>.png``, ordered by class and index; files left out are named in a warning."""
    samples, ignored = _discover(input_path, max_per_class)
    if ignored:
        log.warning("not samples: %s", ignored)
    return samples


def _discover(input_path: str | os.PathLike, max_per_class: int | None) -> tuple[list[Sample],
                                                                                  str]:
    root = Path(input_path)
    if not root.is_dir():
        raise PipelineError(f"input folder not found: {readable_text(str(root))}")
    samples: list[Sample] = []
    other: list[Path] = []
    without_mask: list[Path] = []
    duplicates: list[Path] = []
    for class_dir in sorted(p for p in root.iterdir() if (p / "images").is_dir()):
        found = []
        images, rest = list_images(class_dir / "images")
        other += [p for p in rest if p.is_file()]
        stems = Counter(p.stem for p in images)
        for img in images:
            if stems[img.stem] > 1:  # 0.jpg and 0.webp: one id, two images
                duplicates.append(img)
                continue
            mask = class_dir / "masks" / f"{img.stem}.png"
            if mask.exists():
                meta = class_dir / "metadata" / f"{img.stem}.json"
                found.append(Sample(img, mask, class_dir.name, img.stem,
                                    meta if meta.exists() else None))
            else:
                without_mask.append(img)
        found.sort(key=lambda s: _index_key(s.sample_id))
        samples += found[:max_per_class] if max_per_class else found
    if not samples:
        raise PipelineError("no generated samples (<class>/images + <class>/masks) under "
                            f"{readable_text(str(root))}")
    return samples, describe_ignored(other, without_mask, duplicates)


def read_rejections(output_path: Path) -> set[str]:
    """Ids already rejected by any shard (a torn last line of a crashed run is ignored)."""
    out: set[str] = set()
    for f in sorted((output_path / "rejections").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                out.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def fail_case_strip(sample: Sample, result: FilterResult, filter_name: str) -> Image.Image:
    """``image | mask | overlay`` with a text header: filter, score, reason."""
    image, mask = sample.image, sample.mask
    panels = np.concatenate([image, np.repeat(mask[..., None], 3, 2), overlay(image, mask)], 1)
    header = 40
    canvas = Image.new("RGB", (panels.shape[1], panels.shape[0] + header), "white")
    canvas.paste(Image.fromarray(panels), (0, header))
    text = f"{sample.id} | {filter_name} | score {result.score:.3f} | {result.reason}"
    ImageDraw.Draw(canvas).text((6, 12), text[:200], fill="black")
    return canvas


def run_filtering(cfg: FilteringConfig, shard: Shard | None = None,
                  filters: list[BaseFilter] | None = None) -> Manifest:
    """Filter this shard's samples; ``filters`` overrides the config's list (tests)."""
    shard = shard or Shard()
    out = Path(cfg.output_path)
    if filters is None:
        if not cfg.filters:
            raise PipelineError("no filters configured (filters: [...] in the config)")
        filters = [build_filter(spec) for spec in cfg.filters]
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise PipelineError(f"filter names must be unique, got {names}")
    found, ignored = _discover(cfg.input_path, cfg.max_samples_per_class)
    if ignored:
        log.warning("not samples: %s", ignored)
    samples = take_shard(found, shard)
    rejected = read_rejections(out)
    todo = [s for s in samples
            if s.id not in rejected and not (out / "metadata" / f"{s.id}.json").is_file()]
    manifest = Manifest.create(out, "filter", shard, {"input_path": cfg.input_path,
                                                      "filters": names})
    if ignored:
        manifest.settings["not_samples"] = ignored
    manifest.total, manifest.skipped = len(samples), len(samples) - len(todo)
    if todo:
        for flt in filters:
            flt.prepare()
    stats: Counter[str] = Counter()
    reject_file = out / "rejections" / f"{shard.tag}.jsonl"
    reject_file.parent.mkdir(parents=True, exist_ok=True)
    with reject_file.open("a", encoding="utf-8") as rejections:
        for sample in progress(todo, total=len(todo), desc="filter"):
            try:
                # decode, sizes, metadata: a broken sample is reported, never copied on
                checked = check_sample(sample.image_path, sample.mask_path,
                                       sample.metadata_path, sample_id=sample.id)
            except SampleError as err:
                log.warning("skipping %s: %s", readable_text(sample.id), err)
                manifest.fail(sample.id, err)
                stats["invalid"] += 1
                continue
            try:
                verdict = None
                for flt in filters:
                    result = flt.check(sample)
                    if not result.passed:
                        verdict = (flt.name, result)
                        break
                if verdict is None:
                    _keep(sample, out, checked.metadata)
                    stats["passed"] += 1
                    manifest.record()
                    continue
                name, result = verdict
                stats[f"rejected_by_{name}"] += 1
                rejections.write(json.dumps({"id": sample.id, "category": sample.category,
                                             "filter": name, "score": round(result.score, 4),
                                             "reason": result.reason}) + "\n")
                rejections.flush()
                if cfg.save_fail_cases:
                    save_image_atomic(fail_case_strip(sample, result, name),
                                      out / "fail_cases" / name / f"{sample.id}.jpg", quality=90)
                manifest.record()
            except LLMError:
                manifest.close()
                raise
            except (InvalidImageError, PipelineError, OSError, ValueError) as err:
                log.warning("filtering %s failed: %s", sample.id, err)
                manifest.fail(sample.id, err)
    manifest.settings["stats"] = dict(stats)
    manifest.close()
    log.info("filter %s: %s", shard.tag, dict(stats))
    return manifest


def _keep(sample: Sample, out: Path, metadata: dict[str, Any]) -> None:
    """Copy a sample that passed (metadata already read and checked by ``check_sample``)."""
    _copy_atomic(sample.image_path, out / "images" / f"{sample.id}{sample.image_path.suffix}")
    _copy_atomic(sample.mask_path, out / "masks" / f"{sample.id}.png")
    meta: dict[str, Any] = {**metadata, "id": sample.id, "category": sample.category}
    atomic_write_json(out / "metadata" / f"{sample.id}.json", meta)


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("filter")
