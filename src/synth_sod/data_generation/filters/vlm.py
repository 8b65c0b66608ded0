"""Vision-language judges: does the mask cover a real main object, and is the mask clean?

Both ask a chat model (local transformers VLM as published, or any OpenAI-compatible endpoint)
for a small JSON verdict with a confidence, and pass only a positive verdict with confidence
at or above ``confidence_threshold`` (published 0.7). An answer without parsable JSON fails
with score 0 (the published keyword fallback gave confidence 0.4, which also failed).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from PIL import Image

from synth_sod.data_generation.filters.base import BaseFilter, FilterResult, Sample
from synth_sod.data_generation.llm import ChatClient, make_client, message

SEMANTIC_PROMPT = """The left half is a generated photo; the right half is the same photo with a
candidate object mask painted in red. Judge two things: is there one clear main object in the
photo, and does the red area cover most of that object (roughly 70% or more) with sensible
edges? Reply with JSON only:
{"has_salient_object": true or false, "covers_object": true or false, "confidence": 0.0 to 1.0}"""

ARTIFACT_PROMPT = """This is a segmentation mask (white = object, black = background). Is it a
clean object mask? Reject severe fragmentation (more than about ten separate blobs), salt-and-
pepper noise, many holes or speckles. One to five main parts and small imperfections are fine.
Reply with JSON only: {"is_clean_mask": true or false, "confidence": 0.0 to 1.0}"""


def fit_long_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is ``size`` (aspect kept, LANCZOS)."""
    scale = size / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """``(1 − α)·image + α·red(mask)``: red channel = mask value, as published (α = 0.3)."""
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = mask
    return np.clip(image.astype(np.float32) * (1 - alpha) + red * alpha, 0, 255).astype(np.uint8)


def parse_verdict(text: str) -> dict[str, Any] | None:
    """The JSON object between the first ``{`` and the last ``}``, or None."""
    text = re.sub(r"```(?:json)?", "", text)
    start, stop = text.find("{"), text.rfind("}")
    if not 0 <= start < stop:
        return None
    try:
        value = json.loads(text[start:stop + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return bool(value)


def _confidence(value: Any) -> float:
    try:
        c = float(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, min(1.0, c / 100.0 if c > 1.0 else c))


class _VLMJudge(BaseFilter):
    prompt = ""
    flags: tuple[str, ...] = ()
    max_tokens = 100

    def __init__(self, model_id: str = "google/gemma-3-4b-it", confidence_threshold: float = 0.7,
                 target_size: int = 672, backend: str = "transformers",
                 base_url: str | None = None, name: str | None = None,
                 client: ChatClient | None = None) -> None:
        self.name = name or self.name
        self.confidence_threshold = float(confidence_threshold)
        self.target_size = int(target_size)
        self._client = client
        self._client_args = (backend, model_id, base_url)

    @property
    def client(self) -> ChatClient:
        if self._client is None:
            self._client = make_client(*self._client_args)
        return self._client

    def prepare(self) -> None:
        _ = self.client

    def visual(self, sample: Sample) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, sample: Sample) -> FilterResult:
        answer = self.client.chat([message("user", self.prompt,
                                           [fit_long_side(self.visual(sample), self.target_size)])],
                                  max_tokens=self.max_tokens, temperature=0.0)
        verdict = parse_verdict(answer)
        if verdict is None:
            return FilterResult(False, 0.0, f"unparsable answer: {answer[:120]!r}")
        confidence = _confidence(verdict.get("confidence"))
        failed = [f for f in self.flags if not _flag(verdict.get(f))]
        problems = [f"{f} is false" for f in failed]
        if confidence < self.confidence_threshold:
            problems.append(f"confidence {confidence:.2f} < {self.confidence_threshold}")
        return FilterResult(not problems, confidence, "; ".join(problems), {"verdict": verdict})


class GemmaSemanticFilter(_VLMJudge):
    """Semantic judge: a clear main object exists and the mask covers it (image | overlay)."""

    name = "semantic_quality"
    prompt = SEMANTIC_PROMPT
    flags = ("has_salient_object", "covers_object")
    max_tokens = 100

    def visual(self, sample: Sample) -> Image.Image:
        return Image.fromarray(np.concatenate([sample.image, overlay(sample.image, sample.mask)],
                                              axis=1))


class GemmaMaskArtifactFilter(_VLMJudge):
    """Artefact judge: the mask alone, rejected when fragmented or noisy."""

    name = "mask_artifacts"
    prompt = ARTIFACT_PROMPT
    flags = ("is_clean_mask",)
    max_tokens = 80

    def visual(self, sample: Sample) -> Image.Image:
        return Image.fromarray(sample.mask, "L").convert("RGB")
