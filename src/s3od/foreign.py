"""Foreign single-mask ONNX models (rembg's files) as s3od removers.

rembg users keep ONNX files such as ``u2net.onnx`` or ``isnet-general-use.onnx`` in
``~/.u2net`` (or ``U2NET_HOME``). Each family expects its own preprocessing; this module holds
the one copy of it that s3od uses everywhere (the :class:`ForeignOnnxRemoval` remover and the
pseudo-label step's ``OnnxTeacher``), written to reproduce rembg's arithmetic so that the masks
are the ones rembg would give for the same photo:

* RGB resized to the family's square side with PIL's LANCZOS (aspect not kept),
* pixels divided by the image's maximum, then ``(x - mean) / std`` per channel (in float64,
  cast to float32 at the end, as rembg does),
* the first output's first channel, a sigmoid for BiRefNet, min-max normalised per image,
  quantised to 8 bits (truncated) and resized back to the photo with LANCZOS.

These networks have no IoU head: a :class:`ForeignOnnxRemoval` returns one candidate whose
score is NaN (:attr:`s3od.result.RemovalResult.scored` is False), never an invented number.
The module never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from s3od.errors import CheckpointError
from s3od.remover import Remover

if TYPE_CHECKING:
    import onnxruntime

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Environment variable rembg reads for its model folder (default ``~/.u2net``).
REMBG_HOME_ENV = "U2NET_HOME"


@dataclass(frozen=True)
class Preprocessing:
    """How one family of foreign models wants its input and how its output becomes a mask."""

    family: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sigmoid: bool = False  # BiRefNet outputs logits; the others are already in [0, 1]
    output_index: int = 0


_U2NET = Preprocessing("u2net", 320, IMAGENET_MEAN, IMAGENET_STD)
_ISNET = Preprocessing("isnet", 1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
_BIREFNET = Preprocessing("birefnet", 1024, IMAGENET_MEAN, IMAGENET_STD, sigmoid=True)

#: Names accepted by ``preprocess=`` / ``--preprocess``: rembg's model names and family names.
FAMILIES: dict[str, Preprocessing] = {
    "u2net": _U2NET,
    "u2netp": _U2NET,
    "u2net_human_seg": _U2NET,
    "silueta": _U2NET,
    "isnet": _ISNET,
    "isnet-general-use": _ISNET,
    "isnet-anime": _ISNET,
    "birefnet": _BIREFNET,
}


def family_names() -> str:
    """The accepted names, for error messages (``birefnet-*`` covers every BiRefNet file)."""
    return ", ".join([*FAMILIES, "birefnet-* (any BiRefNet variant)"])


def preprocessing_for(name: str) -> Preprocessing:
    """The recipe for a family or rembg model name; a clear error naming the families."""
    key = name.strip().lower().replace(".onnx", "")
    if key in FAMILIES:
        return FAMILIES[key]
    if key.startswith("birefnet"):
        return _BIREFNET
    raise ValueError(f"unknown preprocessing {name!r}; known families: {family_names()}")


def rembg_input(rgb: np.ndarray, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """One photo as rembg feeds it to its networks: ``(1, 3, size, size)`` float32.

    The only change from rembg: an all-black image is divided by a tiny number instead of
    zero (rembg would feed NaNs).
    """
    resized = Image.fromarray(rgb).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    x = np.asarray(resized)
    x = x / max(float(x.max()), 1e-6)  # float64, as rembg computes it
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def normalised_prediction(pred: np.ndarray, sigmoid: bool = False) -> np.ndarray:
    """A network output map ``(S, S)`` -> float32 in [0, 1] (optional sigmoid, then min-max).

    A constant map (nothing salient) becomes all zeros rather than NaN.
    """
    pred = np.asarray(pred, dtype=np.float32)
    if sigmoid:
        pred = (1.0 / (1.0 + np.exp(-pred.astype(np.float64)))).astype(np.float32)
    lo, hi = float(pred.min()), float(pred.max())
    return (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)


def rembg_mask(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """A normalised ``(S, S)`` map -> ``(height, width)`` float32 mask, as rembg makes it
    (8-bit, truncated, LANCZOS back to the photo)."""
    as_image = Image.fromarray((prob * 255).astype(np.uint8), "L")
    back = as_image.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(back, dtype=np.float32) / np.float32(255.0)


def _low_res(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """The map squeezed back to the photo's aspect at network scale (long side = its side)."""
    side = prob.shape[-1]
    scale = side / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    out = Image.fromarray(prob.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


# ----------------------------------------------------------------------------- identification


def _static_side(shape: Sequence[Any]) -> int | None:
    dims = [d for d in list(shape)[2:] if isinstance(d, int)]
    return dims[0] if len(dims) == 2 and dims[0] == dims[1] else None


def identify(input_shape: Sequence[Any], output_names: Sequence[str], stem: str = ""
             ) -> Preprocessing:
    """Place a foreign graph in a family from its input shape, outputs and file name.

    Rules, first match wins: a rembg model name or ``birefnet*`` as the file name (if the
    graph's static side agrees); a 320 px input, or a dynamic one with U²-Net's 7 side
    outputs: U²-Net; a 1024 px input with one output: BiRefNet; with several: IS-Net. Anything
    else raises :class:`s3od.CheckpointError` naming the families (pass ``preprocess=``).
    """
    shape = list(input_shape)
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise CheckpointError(f"expected one NCHW RGB input, got shape {shape}")
    side = _static_side(shape)
    try:
        by_name: Preprocessing | None = preprocessing_for(stem) if stem else None
    except ValueError:
        by_name = None
    if by_name is not None and side in (None, by_name.size):
        return by_name
    count = len(output_names)
    if side == 320 or (side is None and count == 7):
        return _U2NET
    if side == 1024:
        return _BIREFNET if count == 1 else _ISNET
    raise CheckpointError(
        f"cannot tell which preprocessing this ONNX model needs (input {shape}, {count} "
        f"output(s)); pass preprocess= / --preprocess with one of: {family_names()}")


def is_s3od_graph(session: onnxruntime.InferenceSession) -> bool:
    """True for files written by ``s3od export-onnx`` (input ``images``, masks and IoU)."""
    from s3od.export.ort_predictor import INPUT_NAME, OUTPUT_NAMES

    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    return INPUT_NAME in inputs and set(OUTPUT_NAMES) <= outputs


# ----------------------------------------------------------------------------- remover


class ForeignOnnxRemoval(Remover):
    """A single-mask ONNX model (rembg's U²-Net, IS-Net, BiRefNet files) as an s3od remover.

    Args:
        model: the ``.onnx`` path or its bytes, or an open session (with ``source``).
        preprocess: a family or rembg model name (:data:`FAMILIES`, ``birefnet-*``); ``None``
            identifies it from the graph (:func:`identify`).
        image_size: input side for graphs with a dynamic input (default: the family's).

    Results have one candidate and ``all_ious == [nan]``: these networks do not score their
    masks.
    """

    backend = "onnx"
    has_iou_head = False

    def __init__(self, model: str | os.PathLike | bytes | onnxruntime.InferenceSession,
                 preprocess: str | None = None, image_size: int | None = None,
                 device: str | None = None, threads: int | None = None,
                 source: str | None = None) -> None:
        if isinstance(model, (str, os.PathLike, bytes, bytearray)):
            from s3od.export.ort_predictor import open_session

            self.session, source = open_session(model, device, threads)
        else:
            self.session, source = model, source or "ONNX session"
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{source}: expected one image input, found "
                                  f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        stem = Path(source).stem if source and not source.startswith("in-memory") else ""
        if preprocess is not None:
            self.preprocessing = preprocessing_for(preprocess)
        else:
            self.preprocessing = identify(inputs[0].shape, outputs, stem)
        self.output_name = outputs[self.preprocessing.output_index]
        fixed = _static_side(inputs[0].shape)
        size = image_size or fixed or self.preprocessing.size
        if fixed is not None and size != fixed:
            raise ValueError(f"{source} has a fixed {fixed}px input; it cannot run at {size}px")
        self.image_size = int(size)
        self.family = self.preprocessing.family
        self.model_name = stem or self.family
        self.source = source
        self.device = self.session.get_providers()[0]

    def describe(self) -> str:
        """One line for logs and banners, saying which preprocessing runs."""
        return (f"model {self.model_name} ({self.source}), {self.family} preprocessing, "
                f"{self.image_size}px, {self.device}, one mask (no IoU head)")

    def predict_arrays(self, images: Sequence[np.ndarray], *, full_resolution: bool = True
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One network call per image (rembg's files have a batch of 1) -> one candidate each
        with a NaN score; ``full_resolution=False`` keeps the map at network scale."""
        recipe = self.preprocessing
        out = []
        for rgb in images:
            batch = rembg_input(rgb, self.image_size, recipe.mean, recipe.std)
            (pred,) = self.session.run([self.output_name], {self.input_name: batch})
            prob = normalised_prediction(np.asarray(pred)[0, 0], recipe.sigmoid)
            height, width = rgb.shape[:2]
            mask = (rembg_mask(prob, width, height) if full_resolution
                    else _low_res(prob, width, height))
            out.append((mask[None], np.full(1, np.nan, np.float32)))
        return out

    def __repr__(self) -> str:
        return (f"ForeignOnnxRemoval(model={self.model_name!r}, family={self.family!r}, "
                f"image_size={self.image_size})")


def open_onnx(model: str | os.PathLike | bytes, *, preprocess: str | None = None,
              image_size: int | None = None, device: str | None = None,
              threads: int | None = None) -> Remover:
    """The remover for any ONNX file: an s3od export, or a foreign single-mask model."""
    from s3od.export.ort_predictor import open_session

    session, source = open_session(model, device, threads)
    if preprocess is None and is_s3od_graph(session):
        from s3od.export.ort_predictor import OnnxBackgroundRemoval

        return OnnxBackgroundRemoval(model, image_size=image_size, device=device,
                                     threads=threads, session=session)
    return ForeignOnnxRemoval(session, preprocess, image_size, source=source)


# ----------------------------------------------------------------------------- rembg folder


def rembg_home() -> Path:
    """rembg's model folder: ``$U2NET_HOME`` or ``~/.u2net``."""
    return Path(os.environ.get(REMBG_HOME_ENV) or "~/.u2net").expanduser()


def rembg_models(folder: Path | None = None) -> list[tuple[Path, str | None]]:
    """The ``.onnx`` files in rembg's folder with the family their name implies (``None``:
    not a name s3od knows; the graph decides when the file is loaded)."""
    folder = folder or rembg_home()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.onnx")):
        try:
            family: str | None = preprocessing_for(path.stem).family
        except ValueError:
            family = None
        found.append((path, family))
    return found
