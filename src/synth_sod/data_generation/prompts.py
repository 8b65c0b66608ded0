"""Step 2: scene prompts per class, class list, class weights and the prompt enhancer.

Classes ship with the package (``imagenet_classes.json``: the 1,000 ImageNet-1k synonym strings,
ids 0–999, plus 100 person/activity classes, ids 1000–1099). Prompts are asked from a chat
model for each class and stored, un-enhanced, one per line in ``<save_path>/<folder>/prompts.txt``
(published layout); the enhancer appends random style terms at generation time, seeded per
sample, and the enhanced prompt is saved with the sample.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from synth_sod.data_generation.llm import ChatClient, map_concurrent, message
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_write_bytes,
    progress,
    read_json,
    take_shard,
)

log = logging.getLogger(__name__)
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.json")


@dataclass(frozen=True)
class ClassInfo:
    """One class to generate.

    Attributes:
        index: id in the class file.
        name: the full class string (all synonyms).
        folder: output folder and dataset ``category``: first synonym, spaces → ``_``,
            apostrophes dropped; a repeated name gets ``_<index>`` appended (the published
            naming merged ImageNet's two "crane" and two "maillot" classes).
        tag: concept for concept attention: the first synonym, lower case.
    """

    index: int
    name: str
    folder: str
    tag: str

    @property
    def label(self) -> str:
        """The first synonym as written (what prompts are asked about)."""
        return self.name.split(",")[0].strip()


def load_classes(path: str | os.PathLike | None = None) -> list[ClassInfo]:
    """Classes from a JSON dict ``{"0": "tench, Tinca tinca", ...}`` (default: the bundled one)."""
    path = Path(path) if path else CLASSES_FILE
    if not path.is_file() and not path.is_absolute() and (CLASSES_FILE.parent / path).is_file():
        path = CLASSES_FILE.parent / path  # a bare name resolves next to the package
    data = read_json(path, "class file")
    if not isinstance(data, dict) or not data:
        raise PipelineError(f"{path}: expected a JSON object of id -> class name")
    try:
        items = sorted(((int(k), str(v)) for k, v in data.items()), key=lambda kv: kv[0])
    except ValueError:
        raise PipelineError(f"{path}: class ids must be integers") from None
    seen: set[str] = set()
    out = []
    for index, name in items:
        first = name.split(",")[0].strip()
        folder = first.replace(" ", "_").replace("'", "")
        if folder in seen:
            folder = f"{folder}_{index}"
        seen.add(folder)
        out.append(ClassInfo(index, name, folder, first.lower()))
    return out


def load_class_weights(path: str | os.PathLike | None) -> dict[str, int]:
    """Samples per class folder from a mining result (``new_samples``) or a flat JSON dict."""
    if not path:
        return {}
    data = read_json(path, "class weights file")
    if isinstance(data, dict) and isinstance(data.get("new_samples"), dict):
        data = data["new_samples"]
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected {{folder: count}} or a mining result")
    try:
        return {str(k): int(v) for k, v in data.items()}
    except (TypeError, ValueError):
        raise PipelineError(f"{path}: sample counts must be integers") from None


# ----------------------------------------------------------------------------- asking for prompts

PROMPT_SYSTEM = (
    "You help build a synthetic photo dataset for salient object detection: every image must "
    "show one clear foreground subject that a segmentation model should cut out."
)
PROMPT_REQUEST = """Write {n} different prompts for a text-to-image model,
each showing {label} ({name}).

Each prompt describes a realistic photograph with the subject in sharp focus:
- one to three instances of the subject, in varied sizes, poses, states and viewpoints;
- backgrounds ranging from plain to busy, indoors and outdoors, in different weather,
  seasons and lighting;
- a few harder scenes: partial occlusion, subject and background of similar colour,
  reflections or camouflage.
Keep each prompt to one or two sentences.

Answer with a JSON array of {n} strings and nothing else."""


def parse_prompt_list(text: str) -> list[str]:
    """Prompts from a model answer: a JSON array, a Python list literal, or one per line.

    Never evaluates code (the published parser called ``eval`` on the answer).
    """
    text = text.strip()
    fenced = re.search(r"```(?:json|python)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    start, stop = text.find("["), text.rfind("]")
    if 0 <= start < stop:
        chunk = text[start:stop + 1]
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(chunk)
            except (ValueError, SyntaxError, RecursionError):
                continue
            if isinstance(value, list):
                return [" ".join(str(v).split()) for v in value if str(v).strip()]
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip('",').strip()
        if len(line.split()) >= 3:
            lines.append(line)
    return lines


def read_prompts(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        return []
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def write_prompts(path: str | os.PathLike, prompts: Sequence[str]) -> None:
    atomic_write_bytes(path, ("\n".join(" ".join(p.split()) for p in prompts) + "\n").encode())


def ensure_prompts(cls: ClassInfo, prompts_path: str | os.PathLike, count: int,
                   client: ChatClient | None, *, use_all_existing: bool = False,
                   batch: int = 20, max_rounds: int = 5) -> list[str]:
    """The prompts for one class, asking the model only for what is missing.

    Published rules: with ``use_all_existing`` every stored prompt is used; otherwise the first
    ``count``. Missing prompts are requested in batches of ``batch`` and appended to the file.
    """
    prompts = read_prompts(prompts_path)
    if prompts and use_all_existing:
        return prompts
    rounds = 0
    while len(prompts) < count:
        if client is None:
            raise PipelineError(f"{cls.folder}: {len(prompts)} of {count} prompts in "
                                f"{prompts_path} and no LLM configured to write the rest")
        if rounds >= max_rounds:
            raise PipelineError(f"{cls.folder}: the model gave too few usable prompts")
        n = min(batch, count - len(prompts))
        answer = client.chat([message("system", PROMPT_SYSTEM),
                              message("user", PROMPT_REQUEST.format(n=n, label=cls.label,
                                                                    name=cls.name))],
                             max_tokens=120 * n + 200, temperature=1.0)
        new = [p for p in parse_prompt_list(answer) if p not in prompts]
        prompts += new[:n]
        write_prompts(prompts_path, prompts)
        rounds += 1
    return prompts[:count]


def generate_prompts(classes: Sequence[ClassInfo], save_path: str | os.PathLike,
                     client: ChatClient | None, *, num_prompts: int = 20,
                     weights: dict[str, int] | None = None, use_all_existing: bool = False,
                     shard: Shard | None = None, concurrency: int = 4) -> Manifest:
    """Write ``prompts.txt`` for every class of this shard (resumable: complete files are kept)."""
    shard = shard or Shard()
    weights = weights or {}
    counts = [weights.get(c.folder, num_prompts) for c in classes]
    mine = take_shard(list(zip(classes, counts, strict=True)), shard, counts)
    manifest = Manifest.create(save_path, "prompts", shard, {"num_prompts": num_prompts})
    manifest.total = len(mine)

    def work(item: tuple[ClassInfo, int]) -> int:
        cls, n = item
        return len(ensure_prompts(cls, Path(save_path) / cls.folder / "prompts.txt", n, client,
                                  use_all_existing=use_all_existing))

    for (cls, _), result in progress(map_concurrent(work, mine, concurrency), total=len(mine),
                                     desc="prompts"):
        if isinstance(result, BaseException):
            log.warning("prompts failed for %s: %s", cls.folder, result)
            manifest.fail(cls.folder, result)
        else:
            manifest.record({"class": cls.folder, "prompts": result})
    manifest.close()
    return manifest


# ----------------------------------------------------------------------------- enhancer

# Each group is tried independently with its probability; one term of a group is appended.
ENHANCER_GROUPS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.30, ("true-to-life colours", "neutral white balance", "natural colour grading",
            "balanced exposure", "muted tones", "vivid but realistic colours",
            "accurate skin and material tones")),
    (0.25, ("tack-sharp details", "high resolution photo", "crisp edges", "fine texture detail",
            "clear and well defined", "professional DSLR quality", "no motion blur")),
    (0.20, ("soft overcast light", "golden hour light", "bright midday sun", "diffuse window light",
            "studio lighting", "dramatic side light", "evening street lights")),
    (0.25, ("busy background", "cluttered surroundings", "background in focus",
            "deep depth of field", "everything in focus", "no bokeh", "detailed environment",
            "several other objects around",
            "wide shot showing the scene", "textured background", "complex scene")),
)


class PromptEnhancer:
    """Appends style terms to a prompt (published probabilities 0.3 / 0.25 / 0.2 / 0.25)."""

    def __init__(self, groups: tuple[tuple[float, tuple[str, ...]], ...] = ENHANCER_GROUPS
                 ) -> None:
        self.groups = groups

    def __call__(self, prompt: str, rng: random.Random) -> str:
        terms = [rng.choice(options) for p, options in self.groups if rng.random() < p]
        return ", ".join([prompt.rstrip(" ,."), *terms]) if terms else prompt


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("prompts")
