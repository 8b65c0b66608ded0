"""Chat clients for captions, tags, prompts and the VLM judges.

Two backends behind one ``chat(messages) -> str`` call:

* :class:`OpenAIChatClient`: any server speaking the chat-completions route (OpenAI, vLLM,
  llama.cpp, TGI ...) through the ``openai`` SDK; key from ``OPENAI_API_KEY``, URL from
  ``--base-url`` or ``OPENAI_BASE_URL``. Our own retry loop (exponential back-off with jitter,
  ``Retry-After`` honoured) replaces the SDK's so that retries are logged and configurable.
* :class:`TransformersVLMClient`: a local vision-language model (published: Gemma-3-4B-it).

Messages use one neutral format: ``{"role": ..., "content": [{"type": "text", "text": ...},
{"type": "image", "image": PIL.Image}]}``; each backend converts it.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from PIL import Image

from synth_sod.data_generation.sharding import PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
RETRY_STATUSES = (408, 409, 429)


class LLMError(PipelineError):
    """The model could not be reached or kept failing."""


class ChatClient(Protocol):
    """What every step needs from a language model."""

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 256,
             temperature: float | None = None, top_p: float | None = None) -> str: ...


def message(role: str, text: str, images: Iterable[Image.Image] = ()) -> dict[str, Any]:
    """A message in the neutral format (images first, then the text)."""
    parts: list[dict[str, Any]] = [{"type": "image", "image": im} for im in images]
    parts.append({"type": "text", "text": text})
    return {"role": role, "content": parts}


def image_data_url(image: Image.Image, max_side: int = 1024, quality: int = 90) -> str:
    """JPEG data URL, long side capped at ``max_side`` (keeps requests small)."""
    im = image.convert("RGB")
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: ``base · 2^attempt`` s (±25 % jitter), capped at ``max_delay``."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        d = min(self.max_delay, self.base_delay * (2 ** attempt))
        return d * random.uniform(0.75, 1.25)


def _retry_after(err: Any) -> float | None:
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAIChatClient:
    """Chat completions over HTTP with retries.

    Args:
        model: model name the server knows (e.g. ``gpt-4o``, or what vLLM serves).
        base_url: server root ending in ``/v1``; default ``OPENAI_BASE_URL`` or OpenAI.
        api_key: default ``OPENAI_API_KEY``; a local server without auth may use any string.
        timeout: seconds per request.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, retry: RetryPolicy | None = None) -> None:
        try:
            import openai
        except ImportError as err:  # pragma: no cover - depends on the generate extra
            raise LLMError("the OpenAI-compatible backend needs 'openai' "
                           "(pip install 's3od[generate]')") from err
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key and not base_url:
            raise LLMError("set OPENAI_API_KEY (or pass --base-url for a local server)")
        self._openai = openai
        self.model = model
        self.retry = retry or RetryPolicy()
        self.client = openai.OpenAI(api_key=api_key or "not-needed", base_url=base_url,
                                    timeout=timeout, max_retries=0)

    @staticmethod
    def _convert(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                out.append({"role": m["role"], "content": content})
                continue
            parts = []
            for p in content:
                if p["type"] == "image":
                    parts.append({"type": "image_url",
                                  "image_url": {"url": image_data_url(p["image"])}})
                else:
                    parts.append({"type": "text", "text": p["text"]})
            if all(p["type"] == "text" for p in parts):
                out.append({"role": m["role"], "content": "\n".join(p["text"] for p in parts)})
            else:
                out.append({"role": m["role"], "content": parts})
        return out

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 256,
             temperature: float | None = None, top_p: float | None = None) -> str:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": self._convert(messages),
                                  "max_tokens": max_tokens}
        if temperature is not None:
            kwargs["temperature"] = temperature
        if top_p is not None:
            kwargs["top_p"] = top_p
        last: Exception | None = None
        for attempt in range(self.retry.max_attempts):
            try:
                response = self.client.chat.completions.create(**kwargs)
                text = response.choices[0].message.content if response.choices else None
                if text is None:
                    raise LLMError(f"{self.model} returned no text")
                return text
            except openai.APIStatusError as err:
                if err.status_code not in RETRY_STATUSES and err.status_code < 500:
                    raise LLMError(f"{self.model}: HTTP {err.status_code}: {err.message}") from err
                last = err
                wait_s = self.retry.delay(attempt, _retry_after(err))
            except (openai.APIConnectionError, openai.APITimeoutError) as err:
                last = err
                wait_s = self.retry.delay(attempt)
            if attempt + 1 < self.retry.max_attempts:
                log.warning("chat request failed (%s); retry %d/%d in %.1f s", last, attempt + 1,
                            self.retry.max_attempts - 1, wait_s)
                time.sleep(wait_s)
        raise LLMError(f"{self.model}: gave up after {self.retry.max_attempts} attempts: {last}")


def process_device_map() -> dict[str, str] | None:
    """The whole model on this process's GPU (``cuda:<local rank>`` under torchrun/``srun``),
    or None (transformers' default, the CPU) without CUDA."""
    import torch

    from synth_sod.data_generation.devices import rank_device

    if not torch.cuda.is_available():
        return None
    device = rank_device("cuda") or "cuda"
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    return {"": device}


class TransformersVLMClient:
    """A local image-text-to-text model through transformers, loaded on first use.

    Published: ``google/gemma-3-4b-it`` in bfloat16 with ``device_map="auto"``, which spreads
    the model over every GPU of the node, in every rank of a multi-GPU run. The default here,
    ``device_map="process"``, puts it whole on this process's GPU (:func:`process_device_map`);
    ``"auto"`` is still accepted, and None leaves placement to transformers (CPU). Calls are
    serialised (one GPU model shared by threads). :func:`make_client` hands out one client per
    model and process, so the two VLM filters share one copy of the weights.
    """

    def __init__(self, model_id: str = "google/gemma-3-4b-it", dtype: str = "bfloat16",
                 device_map: str | dict[str, Any] | None = "process") -> None:
        self.model_id = model_id
        self.dtype = dtype
        self.device_map = device_map
        self._model: Any = None
        self._processor: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device_map = process_device_map() if self.device_map == "process" else self.device_map
        try:
            self._processor = AutoProcessor.from_pretrained(self.model_id)
            self._model = AutoModelForImageTextToText.from_pretrained(
                self.model_id, dtype=getattr(torch, self.dtype), device_map=device_map
            ).eval()
        except OSError as err:
            raise LLMError(f"cannot load {self.model_id}: {err}") from err

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 256,
             temperature: float | None = None, top_p: float | None = None) -> str:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            hf_messages = [{"role": m["role"], "content": (
                [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
                else m["content"])} for m in messages]
            inputs = self._processor.apply_chat_template(
                hf_messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt").to(self._model.device)
            sample = temperature is not None and temperature > 0
            gen_kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": sample}
            if sample:
                gen_kwargs.update(temperature=temperature, top_p=top_p or 1.0)
            with torch.inference_mode():
                out = self._model.generate(**inputs, **gen_kwargs)
            start = inputs["input_ids"].shape[1]
            return self._processor.decode(out[0, start:], skip_special_tokens=True)


_LOCAL_CLIENTS: dict[str, TransformersVLMClient] = {}
_LOCAL_CLIENTS_LOCK = threading.Lock()


def shared_local_client(model: str) -> TransformersVLMClient:
    """The one :class:`TransformersVLMClient` of ``model`` in this process (loaded once, on
    first use): the semantic and the artefact judge both ask Gemma-3-4B, 8 GB in bfloat16."""
    with _LOCAL_CLIENTS_LOCK:
        client = _LOCAL_CLIENTS.get(model)
        if client is None:
            client = _LOCAL_CLIENTS[model] = TransformersVLMClient(model)
        return client


def make_client(backend: str, model: str, base_url: str | None = None,
                api_key: str | None = None, retry: RetryPolicy | None = None) -> ChatClient:
    """``openai`` (any chat-completions server) or ``transformers`` (local VLM, one per model
    and process: see :func:`shared_local_client`)."""
    if backend == "openai":
        return OpenAIChatClient(model, base_url=base_url, api_key=api_key, retry=retry)
    if backend == "transformers":
        return shared_local_client(model)
    raise PipelineError(f"unknown LLM backend {backend!r}; use 'openai' or 'transformers'")


def map_concurrent(fn: Callable[[T], R], items: Iterable[T], concurrency: int
                   ) -> Iterator[tuple[T, R | BaseException]]:
    """Apply ``fn`` with at most ``concurrency`` calls in flight; yield ``(item, result or error)``
    as they finish. Items are pulled lazily, so a long input is never queued all at once."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    it = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending: dict[Future, T] = {}

        def refill() -> None:
            while len(pending) < concurrency:
                try:
                    item = next(it)
                except StopIteration:
                    return
                pending[pool.submit(fn, item)] = item

        refill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                err = fut.exception()
                yield item, (err if err is not None else fut.result())
            refill()
