"""Step 1: a caption and a one-or-two-word tag for every real training image.

The caption conditions FLUX during feature extraction; the tag becomes the concept of the
concept-attention maps (``[tag, "background"]``). Output files keep the published format, a JSON
list of ``{"image_path": ..., "caption": ...}`` (or ``"tag"``), rewritten atomically every
``save_interval`` answers, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from synth_sod.data_generation.llm import ChatClient, map_concurrent, message
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_write_json,
    progress,
    read_json,
    take_shard,
)

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

CAPTION_SYSTEM = (
    "You write short, literal image descriptions for a dataset. State what is visible: the "
    "main subjects, their colours, how the picture is composed and where it takes place. "
    "Use one or two sentences, no opinions, no guesses about things you cannot see, and "
    "reply with the description only."
)
CAPTION_USER = "Describe this image."
TAG_SYSTEM = (
    "You label the single most prominent foreground object of a photo with a generic class "
    "name of one or two words, such as 'dog', 'sports car' or 'chair'. No articles, no "
    "adjectives about colour or size, no punctuation: reply with the name only."
)
TAG_USER = "What is the main object?"

# (system prompt, user prompt, max new tokens, temperature, top_p): published sampling settings.
KINDS: dict[str, tuple[str, str, int, float | None, float | None]] = {
    "caption": (CAPTION_SYSTEM, CAPTION_USER, 100, 0.7, 0.9),
    "tag": (TAG_SYSTEM, TAG_USER, 5, 0.0, None),
}


def find_images(image_dir: str | os.PathLike) -> list[Path]:
    """Every image file under ``image_dir`` (recursively), sorted by path."""
    root = Path(image_dir)
    if not root.is_dir():
        raise PipelineError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise PipelineError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def image_id(path: str | os.PathLike) -> str:
    """Stable id of a real image: ``<dataset>_<stem>`` for ``<dataset>/images/<stem>.*``.

    That matches the published naming for DUTS-TR, DIS-TR, HRSOD-TR and UHRSD-TR; an image
    outside an ``images`` folder gets ``hash_<md5(path)[:8]>_<stem>`` as published.
    """
    p = Path(path)
    if p.parent.name == "images" and p.parent.parent.name:
        return f"{p.parent.parent.name}_{p.stem}"
    digest = hashlib.md5(str(p).encode("utf-8")).hexdigest()[:8]
    return f"hash_{digest}_{p.stem}"


def clean_caption(text: str) -> str:
    """One line, straight quotes, no surrounding quotes."""
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'")
    text = text.replace("\u2019", "'")
    text = " ".join(text.split())
    return text.strip().strip('"').strip()


def clean_tag(text: str) -> str:
    """Lower case, letters/digits/spaces only, at most two words (published post-processing)."""
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    return " ".join(words[:2])


def shard_output_path(output_file: Path, shard: Shard) -> Path:
    """Where a shard writes: the file itself for one shard, else ``<stem>.<shard tag>.json``."""
    if shard.count == 1:
        return output_file
    return output_file.with_name(f"{output_file.stem}.{shard.tag}{output_file.suffix}")


def read_records(path: str | os.PathLike, key: str) -> dict[str, str]:
    """``image_path -> value`` from a captions/tags file and its ``.shard-*`` siblings."""
    path = Path(path)
    files = [path] if path.is_file() else []
    files += sorted(path.parent.glob(f"{path.stem}.shard-*-of-*{path.suffix}"))
    if not files:
        raise PipelineError(f"{key} file not found: {path}")
    out: dict[str, str] = {}
    for f in files:
        data = read_json(f, f"{key} file")
        if not isinstance(data, list):
            raise PipelineError(f"{f}: expected a JSON list of {{image_path, {key}}} records")
        for rec in data:
            if isinstance(rec, dict) and "image_path" in rec and key in rec:
                out[str(rec["image_path"])] = str(rec[key])
    return out


def _ask(client: ChatClient, kind: str, path: Path) -> str:
    system, user, max_tokens, temperature, top_p = KINDS[kind]
    with Image.open(path) as im:
        image = im.convert("RGB")
    answer = client.chat([message("system", system), message("user", user, [image])],
                         max_tokens=max_tokens, temperature=temperature, top_p=top_p)
    value = clean_caption(answer) if kind == "caption" else clean_tag(answer)
    if not value:
        raise PipelineError(f"empty {kind} from the model: {answer!r}")
    return value


def describe_images(kind: str, image_dirs: Sequence[str | os.PathLike],
                    output_file: str | os.PathLike,
                    client: ChatClient, *, shard: Shard | None = None, concurrency: int = 4,
                    save_interval: int = 50) -> Path:
    """Caption (``kind="caption"``) or tag (``"tag"``) every image; resumable.

    Returns the file written (per shard when sharded). Images already present in that file are
    skipped; failures are listed in the shard manifest and retried on the next run.
    """
    if kind not in KINDS:
        raise PipelineError(f"kind must be one of {sorted(KINDS)}")
    shard = shard or Shard()
    files: list[Path] = []
    for d in image_dirs:
        files += find_images(d)
    files = take_shard(sorted(set(files)), shard)
    out_path = shard_output_path(Path(output_file), shard)
    records: list[dict[str, Any]] = []
    if out_path.is_file():
        data = read_json(out_path, f"{kind} file")
        records = [r for r in data if isinstance(r, dict) and kind in r] if isinstance(
            data, list) else []
    have = {str(r["image_path"]) for r in records}
    todo = [f for f in files if str(f) not in have]
    manifest = Manifest.create(out_path.parent, f"{kind}s", shard,
                               {"image_dirs": [str(d) for d in image_dirs],
                                "output": str(out_path)})
    manifest.total, manifest.skipped = len(files), len(files) - len(todo)
    since_save = 0
    results = map_concurrent(lambda p: _ask(client, kind, p), todo, concurrency)
    for path, result in progress(results, total=len(todo), desc=f"{kind}s"):
        if isinstance(result, BaseException):
            log.warning("%s failed for %s: %s", kind, path, result)
            manifest.fail(str(path), result)
            continue
        records.append({"image_path": str(path), kind: result})
        manifest.record()
        since_save += 1
        if since_save >= save_interval:
            atomic_write_json(out_path, records)
            since_save = 0
    atomic_write_json(out_path, records)
    manifest.close()
    return out_path


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("captions")
