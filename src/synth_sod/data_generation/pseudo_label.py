"""Pseudo-labelling: a teacher saliency model writes masks for photos that have none.

This is the S3OD recipe with real photos instead of generated ones: a strong (slow) teacher
labels many images, the filters drop the labels it is unsure of, and a small student trains on
the rest. A teacher is any saliency model:

* :class:`OnnxTeacher`: an ONNX file with rembg-style preprocessing (U²-Net, U²-Net-p, ...);
* :class:`RemoverTeacher`: anything :func:`s3od.load_remover` loads (registry names, a published
  S3OD checkpoint, a hub id, an exported ``.onnx`` of ours).

Test-time augmentation (horizontal flip, input scales) averages the teacher's views; how well
the views agree is stored with each sample, so the ``teacher_agreement`` filter of the filter
step can drop unstable labels.

Output is the generation layout, so ``s3od-data filter`` and ``s3od-data export`` run on it
unchanged: ``<output>/<source>/images/<id>.<ext>`` (the original bytes), ``masks/<id>.png``
(8-bit soft mask) and ``metadata/<id>.json``. The mask is written last: a sample whose mask
exists is complete, which is what resume relies on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from s3od.errors import InvalidImageError
from s3od.imageio import load_image, save_image_atomic
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_save,
    atomic_write_json,
    progress,
    take_shard,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class Teacher(Protocol):
    """A saliency model: ``(H, W, 3)`` uint8 RGB at ``scale`` -> ``(H, W)`` float32 in [0, 1]."""

    name: str

    def predict(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def file_sha256(path: str | os.PathLike) -> str:
    """Hex digest of a file, read in chunks (teacher files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxTeacher:
    """An ONNX saliency network run the way rembg runs U²-Net.

    RGB, LANCZOS resize to the network's square input, divide by the image's maximum, ImageNet
    mean/std; the first output, min-max normalised per image, LANCZOS back to the photo size.
    ``size`` is read from the model when its input is static; a dynamic input needs ``size``.

    Args:
        path: the ``.onnx`` file.
        size: input side for models with a dynamic input (default 320).
        threads: ONNX Runtime intra-op threads (``None``: its default).
    """

    def __init__(self, path: str | os.PathLike, size: int | None = None,
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise PipelineError("an ONNX teacher needs onnxruntime: pip install "
                                "'s3od[onnx]'") from err
        self.path = Path(path)
        if not self.path.is_file():
            raise PipelineError(f"teacher model not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise PipelineError(f"cannot load the ONNX teacher {self.path}: {err}") from err
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise PipelineError(f"{self.path.name}: expected an NCHW RGB input, got {shape}")
        static = [d for d in shape[2:] if isinstance(d, int)]
        self.static = len(static) == 2
        if self.static and static[0] != static[1]:
            raise PipelineError(f"{self.path.name}: expected a square input, got {shape}")
        self.size = int(static[0]) if self.static else int(size or 320)
        self.name = self.path.stem
        self.sha256 = file_sha256(self.path)

    def describe(self) -> dict[str, Any]:
        return {"kind": "onnx", "name": self.name, "file": self.path.name,
                "sha256": self.sha256, "size": self.size}

    def predict(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        side = round(self.size * scale)
        if side != self.size and self.static:
            raise PipelineError(f"{self.path.name} has a fixed {self.size}x{self.size} input: "
                                "scale test-time augmentation needs a dynamic input")
        height, width = image.shape[:2]
        resized = Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS)
        x = np.asarray(resized, dtype=np.float32)
        x = x / max(float(x.max()), 1e-6)
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
        batch = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
        pred = np.asarray(self.session.run(None, {self.input_name: batch})[0],
                          dtype=np.float32).reshape(side, side)
        lo, hi = float(pred.min()), float(pred.max())
        pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
        as_image = Image.fromarray(np.round(pred * 255).astype(np.uint8), "L")
        back = as_image.resize((width, height), Image.Resampling.LANCZOS)
        return np.asarray(back, dtype=np.float32) / 255.0


class RemoverTeacher:
    """Any model :func:`s3od.load_remover` loads (registry name, hub id, checkpoint, our
    ``.onnx`` exports); its mask is the candidate the IoU head picks."""

    def __init__(self, model: str, image_size: int | None = None,
                 device: str | None = None) -> None:
        from s3od import load_remover
        from s3od.errors import S3ODError
        from synth_sod.data_generation.devices import rank_device

        try:
            # rank_device: under torchrun / SLURM every rank labels on its own GPU.
            self.remover = load_remover(model, image_size=image_size,
                                        device=rank_device(device))
        except (S3ODError, ValueError) as err:
            raise PipelineError(f"cannot load the teacher {model}: {err}") from err
        self.model = model
        self.name = Path(model).stem if os.path.sep in model else model
        self.size = int(self.remover.image_size)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": "s3od", "name": self.name, "size": self.size}
        if Path(self.model).is_file():
            info["sha256"] = file_sha256(self.model)
        return info

    def predict(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        size = round(self.size * scale / 16) * 16
        original = self.remover.image_size
        self.remover.image_size = size
        try:
            result = self.remover.remove_background(image)
        finally:
            self.remover.image_size = original
        return np.asarray(result.predicted_mask, dtype=np.float32)


def load_teacher(spec: str, size: int | None = None, device: str | None = None,
                 threads: int | None = None) -> Teacher:
    """An ``.onnx`` path becomes an :class:`OnnxTeacher` (rembg preprocessing), anything else,
    and ONNX exports of our own (their metadata says ``s3od.*``), a :class:`RemoverTeacher`."""
    if spec.lower().endswith(".onnx"):
        teacher = OnnxTeacher(spec, size=size, threads=threads)
        meta = teacher.session.get_modelmeta().custom_metadata_map
        if not any(key.startswith("s3od.") for key in meta):
            return teacher
    return RemoverTeacher(spec, image_size=size, device=device)


@dataclass(frozen=True)
class TTA:
    """Teacher test-time augmentation: the identity view, its mirror, and extra input scales."""

    flip: bool = False
    scales: tuple[float, ...] = ()

    def views(self) -> list[tuple[bool, float]]:
        out = [(False, 1.0)]
        if self.flip:
            out.append((True, 1.0))
        for s in self.scales:
            if s <= 0:
                raise PipelineError(f"TTA scales must be > 0, got {s}")
            if s != 1.0:
                out.append((False, float(s)))
        return out

    def describe(self) -> dict[str, Any]:
        return {"flip": self.flip, "scales": list(self.scales)}


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU at 0.5; two empty masks agree (1.0)."""
    fa, fb = a > 0.5, b > 0.5
    union = np.logical_or(fa, fb).sum()
    return 1.0 if union == 0 else float(np.logical_and(fa, fb).sum() / union)


def mask_confidence(mask: np.ndarray) -> float:
    """1 - (soft-band pixels / object pixels), clipped to [0, 1].

    The soft band is where the mask is between 0.1 and 0.9: a teacher that is sure draws a thin
    band around the object; an unsure one a wide haze. Relative to the object area, so small and
    large objects compare. An empty mask has confidence 0.
    """
    soft = np.logical_and(mask > 0.1, mask < 0.9).sum()
    area = (mask > 0.5).sum()
    if area == 0:
        return 0.0
    return float(max(0.0, 1.0 - soft / area))


def label_image(teacher: Teacher, image: np.ndarray, tta: TTA) -> tuple[np.ndarray, float]:
    """Average of the TTA views and their agreement (the lowest IoU of a view with the mean)."""
    views = []
    for flip, scale in tta.views():
        source = np.ascontiguousarray(image[:, ::-1]) if flip else image
        pred = teacher.predict(source, scale)
        views.append(pred[:, ::-1] if flip else pred)
    mean = np.mean(views, axis=0).astype(np.float32)
    agreement = min(binary_iou(v, mean) for v in views) if len(views) > 1 else 1.0
    return mean, agreement


def discover_photos(image_dirs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(source, path)`` pairs, sorted: ``<dir>/<source>/images/*`` or ``<dir>/images/*``
    (source = the folder holding ``images/``) or images directly in ``<dir>``."""
    found: list[tuple[str, Path]] = []
    for entry in image_dirs:
        root = Path(entry)
        if not root.is_dir():
            raise PipelineError(f"image folder not found: {root}")
        if (root / "images").is_dir():
            holders = [root]
        else:
            holders = sorted(p for p in root.iterdir() if (p / "images").is_dir())
        if holders:
            for holder in holders:
                found += [(holder.name, p) for p in sorted((holder / "images").iterdir())
                          if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        else:
            found += [(root.name, p) for p in sorted(root.iterdir())
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not found:
        raise PipelineError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) under "
                            f"{', '.join(map(str, image_dirs))}")
    keys = [(src, p.stem) for src, p in found]
    if len(set(keys)) != len(keys):
        raise PipelineError("two photos share a source and a file stem (same name, two "
                            "extensions?): ids would collide")
    return found


def _copy_atomic(src: Path, dst: Path) -> None:
    atomic_save(dst, lambda tmp: shutil.copyfile(src, tmp))


def pseudo_label(image_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 teacher: Teacher, *, tta: TTA | None = None, shard: Shard | None = None,
                 limit: int | None = None) -> Manifest:
    """Label this shard's photos with ``teacher``; photos already labelled are skipped.

    Unreadable photos are recorded as failures in the manifest and the run goes on.
    """
    tta = tta or TTA()
    shard = shard or Shard()
    out = Path(output_dir)
    photos = discover_photos(image_dirs)
    if limit is not None:
        photos = photos[:limit]
    mine = take_shard(photos, shard)
    manifest = Manifest.create(out, "pseudo_label", shard,
                               {"image_dirs": [str(d) for d in image_dirs],
                                "teacher": teacher.describe(), "tta": tta.describe()})
    manifest.total = len(mine)
    todo = []
    for source, path in mine:
        if (out / source / "masks" / f"{path.stem}.png").is_file():
            manifest.skip()
        else:
            todo.append((source, path))
    for source, path in progress(todo, total=len(todo), desc="pseudo-label"):
        sample_id = f"{source}_{path.stem}"
        try:
            image = load_image(path)
            mask, agreement = label_image(teacher, image, tta)
        except InvalidImageError as err:
            log.warning("skipping %s: %s", path, err)
            manifest.fail(sample_id, err)
            continue
        folder = out / source
        _copy_atomic(path, folder / "images" / path.name)
        meta = {"id": sample_id, "category": source, "caption": "", "source_file": str(path),
                "teacher": teacher.name, "tta": tta.describe(),
                "agreement": round(agreement, 4), "confidence": round(mask_confidence(mask), 4)}
        atomic_write_json(folder / "metadata" / f"{path.stem}.json", meta)
        save_image_atomic(Image.fromarray(np.round(mask * 255).astype(np.uint8), "L"),
                          folder / "masks" / f"{path.stem}.png")
        manifest.record({"id": sample_id, "agreement": meta["agreement"],
                         "confidence": meta["confidence"]})
    manifest.close()
    log.info("pseudo_label %s: %d labelled, %d already done, %d failed", shard.tag,
             manifest.done, manifest.skipped, len(manifest.failed))
    return manifest


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("pseudo-label")
