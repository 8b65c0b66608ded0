"""Publish a model as a Hugging Face hub repository: ``save_pretrained`` and ``push_to_hub``.

A folder written here holds what the hub and s3od both read:

- ``model.safetensors``: the weights, with the architecture, its config and the input size in
  the file's metadata (what :func:`s3od.hub.resolve` reads, so ``BackgroundRemoval(folder)`` and
  ``BackgroundRemoval("owner/name")`` load it like the published ``okupyn/s3od``);
- ``config.json``: the same architecture, config and input size, readable without safetensors;
- ``README.md``: a model card whose YAML header the hub indexes (licence, ``library_name: s3od``,
  ``pipeline_tag: image-segmentation``, tags, datasets, base model) and, when an ``s3od
  benchmark`` results file is given, a ``model-index`` with its metrics, plus usage code.

The hub side goes through ``huggingface_hub`` (:class:`~huggingface_hub.ModelHubMixin`,
:class:`~huggingface_hub.ModelCard`, :class:`~huggingface_hub.EvalResult`, ``HfApi.create_repo``
and ``upload_folder``). Uploading checks for a token and probes the endpoint with a short
timeout first, so a missing token or network is a :class:`PublishError`, never a hang.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from huggingface_hub import EvalResult, ModelCard, ModelCardData, ModelHubMixin

from s3od.errors import S3ODError

if TYPE_CHECKING:
    from s3od.hub import ResolvedCheckpoint

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: Seconds allowed for the reachability probe and for each HTTP call of the upload.
NETWORK_TIMEOUT = 10.0
REPO_URL = "https://github.com/okupyn/s3od"
#: Model-index metrics, in this order, from an ``s3od benchmark`` results file.
CARD_METRICS = ("MAE", "maxF", "Sm", "meanEm", "wF", "IoU")

_DINOV3 = "facebook/dinov3-vit{}16-pretrain-lvd1689m"  # the backbone's hub weights
_DEFAULT_TAGS = ("background-removal", "salient-object-detection", "s3od")


class PublishError(S3ODError, RuntimeError):
    """A model could not be published: no token, hub unreachable, or the upload failed."""


@dataclass
class CardInfo:
    """What the model card says besides what the weights imply; every field optional."""

    repo_id: str | None = None
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    base_model: str | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    benchmark: dict[str, Any] | None = None  # the JSON an ``s3od benchmark --out`` wrote


def read_benchmark(path: str | os.PathLike) -> dict[str, Any]:
    """An ``s3od benchmark --out`` JSON file, checked enough to build a model-index from."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PublishError(f"cannot read benchmark results {path}: {err}") from err
    rows = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "metrics" in r
                                             for r in rows):
        raise PublishError(f"{path} is not an `s3od benchmark --out` JSON file (no results)")
    return doc


def eval_results(benchmark: dict[str, Any]) -> list[EvalResult]:
    """One :class:`EvalResult` per (set, metric) that the benchmark scored."""
    out = []
    for row in benchmark["results"]:
        if row.get("error") or not row.get("count"):
            continue
        name = str(row["set"])
        for key in CARD_METRICS:
            value = (row.get("metrics") or {}).get(key)
            if value is None:
                continue
            out.append(EvalResult(
                task_type="image-segmentation", task_name="Salient object detection",
                dataset_type=name.lower(), dataset_name=name, dataset_split="test",
                metric_type=key.lower(), metric_name=key, metric_value=round(float(value), 4),
                verified=False,
                source_name=f"s3od benchmark ({row['count']} images)" if row.get("count")
                else None,
                source_url=REPO_URL))
    return out


def _metrics_table(benchmark: dict[str, Any]) -> str:
    rows = [r for r in benchmark["results"] if r.get("count") and not r.get("error")]
    if not rows:
        return ""
    described = benchmark.get("metrics") or {}
    arrows = {k: (" ↑" if (described.get(k) or {}).get("higher_is_better") else " ↓")
              if k in described else "" for k in CARD_METRICS}
    head = "| set | images | " + " | ".join(k + arrows[k] for k in CARD_METRICS) + " |"
    lines = [head, "|---|--:|" + "--:|" * len(CARD_METRICS)]
    for row in rows:
        cells = [f"{row['metrics'][k]:.3f}" if row["metrics"].get(k) is not None else ""
                 for k in CARD_METRICS]
        lines.append(f"| {row['set']} | {row['count']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class PretrainedModel(ModelHubMixin, library_name="s3od", pipeline_tag="image-segmentation",
                      tags=list(_DEFAULT_TAGS), repo_url=REPO_URL):
    """A resolved s3od checkpoint that saves itself as a hub repository folder.

    Build one with :meth:`from_model` (any model s3od loads: registry name, hub id, checkpoint
    file or folder, Lightning ``.ckpt``). ``save_pretrained(folder)`` and
    ``push_to_hub(repo_id)`` come from :class:`huggingface_hub.ModelHubMixin`; the weights,
    ``config.json`` and the card are written by the hooks below.
    """

    def __init__(self, resolved: ResolvedCheckpoint, card: CardInfo | None = None) -> None:
        self.resolved = resolved
        self.card = card or CardInfo()

    @classmethod
    def from_model(cls, model: str | os.PathLike | ResolvedCheckpoint | None,
                   card: CardInfo | None = None) -> PretrainedModel:
        """Resolve ``model`` as :class:`~s3od.BackgroundRemoval` does (no network for files)."""
        from s3od.hub import ResolvedCheckpoint, resolve

        resolved = model if isinstance(model, ResolvedCheckpoint) else resolve(model)
        return cls(resolved, card)

    # ------------------------------------------------------------------ what the folder holds

    @property
    def config(self) -> dict[str, Any]:
        """``config.json``: enough to rebuild the module and run it at its own size."""
        from s3od._version import __version__

        return {"architecture": self.resolved.architecture, "config": self.resolved.config,
                "image_size": int(self.resolved.image_size), "library_name": "s3od",
                "s3od_version": __version__, "name": self._name}

    @property
    def _name(self) -> str:
        return (self.card.repo_id or self.resolved.name).split("/")[-1]

    def _save_pretrained(self, save_directory: Path) -> None:
        from s3od.hub import save_checkpoint

        config = {**self.resolved.config, "image_size": int(self.resolved.image_size)}
        save_checkpoint(self.resolved.state_dict, save_directory / WEIGHTS_NAME,
                        self.resolved.architecture, config, name=self._name)
        (save_directory / CONFIG_NAME).write_text(
            json.dumps(self.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The mixin keeps an existing README.md; a re-save must describe these weights.
        (save_directory / CARD_NAME).unlink(missing_ok=True)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None,
                         cache_dir: str | Path | None, force_download: bool,
                         local_files_only: bool, token: str | bool | None,
                         **model_kwargs: Any) -> PretrainedModel:
        """``PretrainedModel.from_pretrained(folder_or_repo)`` through s3od's own resolver."""
        return cls.from_model(model_id, model_kwargs.get("card"))

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card: hub metadata (with a model-index when a benchmark is given) + usage."""
        info, resolved = self.card, self.resolved
        results = eval_results(info.benchmark) if info.benchmark else []
        licence = _licence(resolved, info.license)
        data = ModelCardData(
            license=licence["license"],
            license_name=licence.get("license_name"),
            license_link=licence.get("license_link"),
            library_name="s3od",
            pipeline_tag="image-segmentation",
            tags=sorted({*_DEFAULT_TAGS, resolved.architecture, *info.tags}),
            datasets=info.datasets or None,
            base_model=info.base_model or _base_model(resolved),
            model_name=self._name if results else None,
            eval_results=results or None,
        )
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{self._card_body()}")

    def _card_body(self) -> str:
        resolved, info = self.resolved, self.card
        target = info.repo_id or "path/to/this/folder"
        params = sum(t.numel() for t in resolved.state_dict.values())
        masks = resolved.config.get("num_masks", 3)
        text = [
            f"# {self._name}",
            "",
            info.description or (
                f"Salient object detection and background removal with "
                f"[s3od]({REPO_URL}): architecture `{resolved.architecture}`, "
                f"{params / 1e6:.1f} M parameters, {masks} candidate masks ranked by a "
                f"predicted-IoU head, {resolved.image_size} px input."),
            "",
            "## Usage",
            "",
            "```bash",
            "pip install s3od",
            f"s3od remove photo.jpg -m {target} -o photo_cutout.png",
            "```",
            "",
            "```python",
            "from s3od import BackgroundRemoval",
            "",
            f'remover = BackgroundRemoval("{target}")',
            'result = remover.remove_background("photo.jpg")',
            'result.rgba_image.save("photo_cutout.png")  # RGBA, alpha = the best mask',
            "mask = result.predicted_mask                 # (H, W) float32 in [0, 1]",
            "```",
            "",
            f"`{WEIGHTS_NAME}` holds the weights with the architecture and input size in its "
            f"metadata; `{CONFIG_NAME}` repeats them.",
        ]
        if info.benchmark:
            table = _metrics_table(info.benchmark)
            if table:
                text += ["", "## Evaluation", "",
                         "Measured with `s3od benchmark` (pysodmetrics conventions):", "", table]
        return "\n".join(text) + "\n"

    # ------------------------------------------------------------------ upload

    def push_to_hub(self, repo_id: str, *, config: Any = None,
                    commit_message: str = "Upload s3od model", private: bool | None = None,
                    token: str | None = None, branch: str | None = None,
                    create_pr: bool | None = None, allow_patterns: Any = None,
                    ignore_patterns: Any = None, delete_patterns: Any = None,
                    model_card_kwargs: dict[str, Any] | None = None,
                    endpoint: str | None = None) -> str:
        """Create ``repo_id`` (if needed) and upload the saved folder in one commit.

        ``endpoint`` defaults to ``$HF_ENDPOINT`` (read now, not at import) or the public hub.
        Raises :class:`PublishError` without a token, when the endpoint does not answer
        within :data:`NETWORK_TIMEOUT` seconds, or when the hub refuses.
        """
        import tempfile

        endpoint = hub_endpoint(endpoint)
        token = _token(token)
        _probe(endpoint)  # before the weights are written: no token or network fails fast
        if self.card.repo_id is None:
            self.card.repo_id = repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / repo_id.replace("/", "--")
            self.save_pretrained(folder)
            return upload_folder(folder, repo_id, private=private, token=token,
                                 endpoint=endpoint, commit_message=commit_message,
                                 branch=branch, create_pr=create_pr,
                                 delete_patterns=delete_patterns)


def upload_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                  token: str | None = None, endpoint: str | None = None,
                  commit_message: str = "Upload s3od model", branch: str | None = None,
                  create_pr: bool | None = None, delete_patterns: Any = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` in one commit -> the commit URL.

    Every HTTP call has a :data:`NETWORK_TIMEOUT`; failures are :class:`PublishError`.
    """
    from huggingface_hub import HfApi

    endpoint = hub_endpoint(endpoint)
    token = _token(token)
    _probe(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with _bounded_http(NETWORK_TIMEOUT):
            repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
            commit = api.upload_folder(
                repo_id=repo, repo_type="model", folder_path=Path(folder),
                commit_message=commit_message, revision=branch, create_pr=create_pr,
                delete_patterns=delete_patterns)
    except Exception as err:  # HTTP, auth, validation: one typed error with the cause
        first = str(err).splitlines()[0][:300] if str(err) else ""
        raise PublishError(f"upload of {repo_id} to {endpoint} failed: "
                           f"{type(err).__name__}: {first}") from err
    return str(getattr(commit, "commit_url", commit))


@contextmanager
def _bounded_http(timeout: float) -> Iterator[None]:
    """Give huggingface_hub's HTTP client a timeout for the upload (its default has none)."""
    try:
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils import _http
    except ImportError as err:  # huggingface_hub < 1.0 (requests, not httpx)
        from s3od.errors import MissingDependencyError

        raise MissingDependencyError("uploading needs a newer huggingface_hub: pip install "
                                     "'s3od[publish]'") from err

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def bounded() -> Any:
        client = previous()
        client.timeout = timeout
        return client

    set_client_factory(bounded)
    try:
        yield
    finally:
        set_client_factory(previous)


def _base_model(resolved: ResolvedCheckpoint) -> str | None:
    """The DINOv3 backbone a DPT model starts from (B or L by width); none for s3od-lite."""
    if resolved.architecture != "dpt_dinov3":
        return None
    hidden = (resolved.config.get("encoder_config") or {}).get("hidden_size", 768)
    return _DINOV3.format("l" if hidden >= 1024 else "b")


def _licence(resolved: ResolvedCheckpoint, given: str | None) -> dict[str, str]:
    """Card licence fields: the given one; the registry's for published models; else
    ``other``/``unspecified`` (s3od does not choose a licence for someone's weights)."""
    if given:
        return {"license": given}
    from s3od.registry import get_spec

    spec = get_spec(resolved.name)
    if spec is not None and spec.license == "MIT":
        return {"license": "mit"}
    if spec is not None and spec.name == "s3od-lite":
        return {"license": "other", "license_name": "research-only-training-data",
                "license_link": f"{REPO_URL}/blob/main/docs/model-card.md"}
    return {"license": "other", "license_name": "unspecified"}


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub URL: the argument, ``$HF_ENDPOINT`` or huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise PublishError("no Hugging Face token: pass --token (token=), set HF_TOKEN, or run "
                           "`hf auth login`")
    return found


def _probe(endpoint: str, timeout: float = NETWORK_TIMEOUT) -> None:
    """Fail fast when nothing answers at ``endpoint`` (no DNS, no route, offline mode)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE is set: uploading needs the network")
    parts = urlsplit(endpoint)
    if not parts.hostname:
        raise PublishError(f"not a URL: {endpoint!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise PublishError(f"cannot reach {endpoint} ({err}); check the network or "
                           "HF_ENDPOINT") from err


def save_pretrained(model: str | os.PathLike | ResolvedCheckpoint | None,
                    folder: str | os.PathLike, *, benchmark: str | os.PathLike | None = None,
                    card: CardInfo | None = None) -> Path:
    """Write ``model`` as a hub repository folder (weights, config, card); returns it.

    Example:
        >>> save_pretrained("runs/last.ckpt", "my-s3od", benchmark="results.json")  # doctest: +SKIP
    """
    card = card or CardInfo()
    if benchmark is not None:
        card.benchmark = read_benchmark(benchmark)
    PretrainedModel.from_model(model, card).save_pretrained(Path(folder))
    return Path(folder)


def push_to_hub(model: str | os.PathLike | ResolvedCheckpoint | None, repo_id: str, *,
                private: bool | None = None, token: str | None = None,
                benchmark: str | os.PathLike | None = None, card: CardInfo | None = None,
                endpoint: str | None = None) -> str:
    """Export ``model``, write its card and upload it to ``repo_id``; returns the commit URL.

    The token and the endpoint are checked before the checkpoint is read, so a missing token
    or network fails in a second, not after loading the weights.
    """
    endpoint = hub_endpoint(endpoint)
    token = _token(token)
    _probe(endpoint)
    card = card or CardInfo()
    card.repo_id = repo_id
    if benchmark is not None:
        card.benchmark = read_benchmark(benchmark)
    return PretrainedModel.from_model(model, card).push_to_hub(
        repo_id, private=private, token=token, endpoint=endpoint)
