"""The Gradio demo: ``build_demo()`` returns the Blocks; ``launch_demo()`` serves them.

One prediction per upload keeps every candidate mask, so switching the candidate, the
background view or the colour only re-composites (no second forward pass).

Gradio is imported at module level because it reads the callbacks' annotations
(``gr.Request``, ``gr.SelectData``) at runtime; ``s3od.serving`` imports this module lazily.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from s3od import compose

if TYPE_CHECKING:
    from s3od.remover import Remover
    from s3od.result import RemovalResult

VIEWS = ("transparent", "white", "green", "custom colour", "mask")
_VIEW_COLORS: dict[str, compose.Color] = {"white": (255, 255, 255), "green": (0, 177, 64)}
#: Larger uploads are refused: the candidates alone cost 12 bytes per pixel at full size.
DEMO_MAX_PIXELS = 50_000_000
_KEEP_MODELS = 2
#: A checkerboard behind the cut-out so transparency is visible (Gradio 6 takes CSS at launch).
DEMO_CSS = """
#s3od-output img, #s3od-gallery img {
  background: repeating-conic-gradient(#d9d9d9 0% 25%, #ffffff 0% 50%) 50% / 20px 20px;
}
"""


@dataclass
class Prediction:
    """One upload's result as the UI keeps it between events."""

    result: RemovalResult
    model: str

    def mask(self, index: int | None) -> np.ndarray:
        masks = self.result.all_masks
        if index is None or not 0 <= index < len(masks):
            return self.result.predicted_mask
        return masks[index]


class ModelPool:
    """Loads registry models on first use and keeps the last few (each can be 100s of MB)."""

    def __init__(self, loader: Callable[[str], Remover],
                 initial: Remover | None = None, initial_name: str | None = None,
                 keep: int = _KEEP_MODELS) -> None:
        self._loader = loader
        self._keep = max(1, keep)
        self._models: OrderedDict[str, Remover] = OrderedDict()
        self._lock = threading.Lock()
        if initial is not None:
            self._models[initial_name or initial.model_name] = initial

    def get(self, name: str) -> Remover:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            remover = self._loader(name)
            self._models[name] = remover
            while len(self._models) > self._keep:
                self._models.popitem(last=False)
            return remover


def candidate_labels(result: RemovalResult) -> list[tuple[str, int]]:
    """Radio choices ``("#1 IoU 0.912 (best)", 0)`` in the model's order."""
    if not result.scored:  # a foreign model: one mask, no predicted IoU
        return [(f"#{i + 1}", i) for i in range(len(result.all_masks))]
    return [(f"#{i + 1} IoU {float(iou):.3f}" + (" (best)" if i == result.best_index else ""), i)
            for i, iou in enumerate(result.all_ious)]


def ambiguity_text(result: RemovalResult) -> str:
    """One line on what the IoU head thinks of this photo (:meth:`RemovalResult.assessment`)."""
    verdict = result.assessment()
    pick = f"#{verdict.best_index + 1}"
    if verdict.verdict == "unscored":
        return "This model gives one mask and no IoU score, so it cannot say how sure it is."
    if verdict.verdict == "unsure":
        return (f"**Unsure:** the best candidate ({pick}) has a predicted IoU of only "
                f"{verdict.best_score:.2f}. Check the cut-out, or compare the candidates below.")
    if verdict.verdict == "ambiguous":
        others = " and ".join(f"#{i + 1}" for i in verdict.rivals)
        return (f"**Ambiguous:** {pick} and {others} cut out different things and the model "
                "rates them alike. Compare them below and pick the one you meant.")
    if result.ambiguous:
        return (f"The candidates differ, but the model clearly prefers {pick} (predicted IoU "
                f"{verdict.best_score:.2f}); the others are rated lower.")
    return "The candidates agree: the object is clear."


def render_view(prediction: Prediction, index: int | None, view: str,
                custom_color: str | None) -> Any:
    """The selected candidate as the chosen view (PIL image)."""
    rgb = prediction.result.image
    mask = prediction.mask(index)
    if view == "mask":
        return compose.mask_image(mask)
    if view == "transparent":
        return compose.cutout(rgb, mask)
    if view == "custom colour":
        color = parse_picker(custom_color)
    elif view in _VIEW_COLORS:
        color = _VIEW_COLORS[view]
    else:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    return compose.composite(rgb, mask, color)


def parse_picker(value: str | None) -> compose.Color:
    """Colour picker output (``#rrggbb``, ``rgb(...)``, ``rgba(...)``) -> RGB tuple."""
    if not value:
        return (255, 255, 255)
    text = value.strip()
    if text.startswith("rgba(") and text.endswith(")"):
        parts = [p.strip() for p in text[5:-1].split(",")][:3]
        text = ",".join(str(round(float(p))) for p in parts)
    elif text.startswith("rgb(") and text.endswith(")"):
        text = ",".join(str(round(float(p.strip()))) for p in text[4:-1].split(","))
    return compose.parse_color(text)


def session_folder(root: str | os.PathLike, session_hash: object, key: bytes) -> Path:
    """The folder under ``root`` for one browser session's downloads; created if missing.

    The session hash comes from the client, so it only feeds a keyed digest: whatever it holds
    (``../..``, an absolute path, NUL bytes), the name is 32 hex digits chosen by the server.
    """
    text = str(session_hash) if session_hash else "local"
    name = hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]
    folder = Path(root) / name
    folder.mkdir(exist_ok=True)
    return folder


def build_demo(
    remover: Remover | None = None,
    *,
    loader: Callable[[str], Remover] | None = None,
    examples: Sequence[str | os.PathLike] = (),
    model_names: Sequence[str] | None = None,
    initial_name: str | None = None,
) -> gr.Blocks:
    """The demo UI around ``remover`` (loaded from the registry default when None).

    Args:
        remover: the model shown first.
        loader: builds a predictor for a name picked in the model selector; defaults to
            :func:`s3od.load_remover` with the first model's device.
        examples: image paths offered as one-click examples.
        model_names: selector choices; defaults to every registered model.
        initial_name: the selector's label for ``remover`` (default: its ``model_name``).
    """
    from s3od.errors import S3ODError
    from s3od.imageio import load_image
    from s3od.loading import load_remover
    from s3od.registry import list_models
    from s3od.serving.limits import ApiError, probe_image

    if remover is None:
        remover = load_remover()
    # Registry models run on PyTorch; an ONNX first model's device is a provider name.
    device = str(remover.device) if remover.backend == "torch" else None
    if loader is None:
        def loader(name: str) -> Remover:
            return load_remover(name, device=device)

    first = initial_name or remover.model_name
    names = list(model_names) if model_names is not None else [s.name for s in list_models()]
    if first not in names:
        names.insert(0, first)
    pool = ModelPool(loader, remover, first)
    outdir = tempfile.TemporaryDirectory(prefix="s3od-demo-")
    folder_key = secrets.token_bytes(32)

    def predict(path: str | None, model_name: str) -> tuple[Any, ...]:
        if not path:
            return None, gr.update(choices=[], value=None), [], ""
        try:
            data = Path(path).read_bytes()
            probe_image(data, DEMO_MAX_PIXELS)
            model = pool.get(model_name)
            result = model.remove_background(load_image(data, max_pixels=DEMO_MAX_PIXELS))
        except ApiError as err:
            raise gr.Error(err.message) from None
        except (S3ODError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        prediction = Prediction(result, model_name)
        gallery = [(compose.mask_image(m), label)
                   for m, (label, _) in zip(result.all_masks, candidate_labels(result),
                                            strict=True)]
        return (prediction, gr.update(choices=candidate_labels(result), value=result.best_index),
                gallery, ambiguity_text(result))

    def render(prediction: Prediction | None, index: int | None, view: str,
               color: str | None, request: gr.Request) -> tuple[Any, Any, Any]:
        if prediction is None:
            return None, gr.update(value=None), gr.update(value=None)
        try:
            image = render_view(prediction, index, view, color)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        folder = session_folder(outdir.name, getattr(request, "session_hash", None), folder_key)
        cut_path = folder / ("s3od-mask.png" if view == "mask" else f"s3od-{view.split()[0]}.png")
        image.save(cut_path)
        mask_path = folder / "s3od-mask.png"
        if view != "mask":
            compose.mask_image(prediction.mask(index)).save(mask_path)
        return image, gr.update(value=str(cut_path)), gr.update(value=str(mask_path))

    def pick_from_gallery(evt: gr.SelectData) -> int:
        return int(evt.index)

    with gr.Blocks(title="s3od: background removal", delete_cache=(3600, 3600),
                   analytics_enabled=False) as blocks:
        gr.Markdown("## s3od background removal\nUpload an image or pick an example; the "
                    "model proposes several masks with a predicted IoU each. Pick the one you "
                    "meant and download the cut-out.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image_in = gr.Image(type="filepath", image_mode=None, label="Image",
                                    sources=["upload", "clipboard"], elem_id="s3od-input")
                model_in = gr.Dropdown(names, value=first, label="Model",
                                       elem_id="s3od-model")
                run = gr.Button("Remove background", variant="primary", elem_id="s3od-run")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[image_in],
                                label="Examples")
            with gr.Column():
                view_in = gr.Radio(list(VIEWS), value="transparent", label="View",
                                   elem_id="s3od-view")
                color_in = gr.ColorPicker("#3366ff", label="Custom colour",
                                          elem_id="s3od-color")
                image_out = gr.Image(type="pil", format="png", label="Cut-out",
                                     interactive=False, elem_id="s3od-output")
                ambiguity = gr.Markdown(elem_id="s3od-ambiguity")
                candidate_in = gr.Radio([], label="Candidate mask", elem_id="s3od-candidate")
                gallery = gr.Gallery(label="Candidates (click to pick)", columns=3, height=220,
                                     format="png", elem_id="s3od-gallery")
                with gr.Row():
                    download_cut = gr.DownloadButton("Download image", elem_id="s3od-dl-image")
                    download_mask = gr.DownloadButton("Download mask", elem_id="s3od-dl-mask")

        render_inputs = [state, candidate_in, view_in, color_in]
        render_outputs = [image_out, download_cut, download_mask]
        predict_outputs = [state, candidate_in, gallery, ambiguity]
        # change covers uploads, examples and clearing; the button re-runs on demand.
        for event in (image_in.change, model_in.change, run.click):
            event(predict, [image_in, model_in], predict_outputs).then(
                render, render_inputs, render_outputs)
        # .input, not .change: predict sets the candidate itself and renders afterwards.
        candidate_in.input(render, render_inputs, render_outputs)
        view_in.change(render, render_inputs, render_outputs)
        color_in.change(render, render_inputs, render_outputs)
        gallery.select(pick_from_gallery, None, candidate_in).then(
            render, render_inputs, render_outputs)
    blocks.s3od_tempdir = outdir  # lives as long as the UI
    return blocks


def launch_demo(model: str | None = None, *, host: str = "127.0.0.1", port: int = 7860,
                device: str | None = None, image_size: int | None = None,
                examples: Sequence[str | os.PathLike] | None = None,
                block: bool = True) -> gr.Blocks:
    """Load ``model`` once and serve the demo on ``host:port`` (no analytics are sent)."""
    from s3od.loading import load_remover

    remover = load_remover(model, image_size=image_size, device=device)
    demo = build_demo(remover, examples=examples if examples is not None else _sample_images(),
                      initial_name=None if model is None else remover.model_name)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, prevent_thread_lock=not block,
        max_file_size="20mb", show_error=True, css=DEMO_CSS)
    return demo


def _sample_images() -> list[Path]:
    """The permissive sample photos of a source checkout (none in an installed wheel)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        folder = parent / "assets" / "samples"
        if folder.is_dir():
            return sorted(folder.glob("*.jpg"))
    return []
