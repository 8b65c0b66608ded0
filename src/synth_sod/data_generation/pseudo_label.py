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

import contextlib
import errno
import hashlib
import json
import logging
import math
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
from synth_sod.data_generation.samples import IMAGE_SUFFIXES, SampleError, check_name, list_images
from synth_sod.data_generation.sharding import (
    Manifest,
    OutputLock,
    PipelineError,
    Shard,
    atomic_save,
    atomic_write_json,
    progress,
    readable_text,
    take_shard,
)

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "TTA", "OnnxTeacher", "RemoverTeacher", "TeacherError",
           "discover_photos", "label_image", "load_teacher", "pseudo_label"]

#: Smallest and largest extra TTA input scale: 0.001 would make a 0-pixel input, 1000 a
#: multi-GB one.
MIN_SCALE, MAX_SCALE = 0.25, 4.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class TeacherError(PipelineError):
    """The teacher does not keep its contract (output shape): stop the run, it would fail every
    photo the same way."""


class PhotoLabelError(PipelineError):
    """This photo got no usable label (e.g. the teacher returned NaN): recorded, the run goes on."""


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
        from s3od.foreign import rembg_input  # the one copy of rembg's preprocessing

        batch = rembg_input(image, side)
        raw = np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)
        if raw.size != side * side or raw.ndim < 2 or raw.shape[-2:] != (side, side):
            raise TeacherError(f"teacher {self.path.name} returned an output of shape "
                               f"{list(raw.shape)} for a {side}x{side} input; expected one "
                               f"{side}x{side} map (e.g. [1, 1, {side}, {side}])")
        pred = raw.reshape(side, side)
        if not np.isfinite(pred).all():
            raise PhotoLabelError(f"teacher {self.path.name} returned NaN or infinite values")
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
        size = max(16, round(self.size * scale / 16) * 16)
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

    def __post_init__(self) -> None:
        for s in self.scales:
            if (isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)
                    or not MIN_SCALE <= s <= MAX_SCALE):
                raise PipelineError(f"TTA scales must be numbers from {MIN_SCALE} to "
                                    f"{MAX_SCALE}, got {s!r}")

    def views(self) -> list[tuple[bool, float]]:
        out = [(False, 1.0)]
        if self.flip:
            out.append((True, 1.0))
        out += [(False, float(s)) for s in self.scales if s != 1.0]
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
        pred = np.asarray(teacher.predict(source, scale))
        if pred.shape != image.shape[:2]:
            raise TeacherError(f"teacher {teacher.name} returned a mask of shape "
                               f"{list(pred.shape)} for a {image.shape[1]}x{image.shape[0]} "
                               f"photo; expected {list(image.shape[:2])}")
        pred = pred.astype(np.float32, copy=False)
        if not np.isfinite(pred).all():
            raise PhotoLabelError(f"teacher {teacher.name} returned NaN or infinite values")
        if pred.min() < -1e-3 or pred.max() > 1 + 1e-3:
            raise PhotoLabelError(f"teacher {teacher.name} returned values from "
                                  f"{pred.min():.3g} to {pred.max():.3g}; expected [0, 1]")
        views.append(pred[:, ::-1] if flip else pred)
    mean = np.clip(np.mean(views, axis=0), 0.0, 1.0).astype(np.float32)
    agreement = min(binary_iou(v, mean) for v in views) if len(views) > 1 else 1.0
    return mean, agreement


def discover_photos(image_dirs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(source, path)`` pairs, sorted: ``<dir>/<source>/images/*`` or ``<dir>/images/*``
    (source = the folder holding ``images/``) or images directly in ``<dir>``.

    Photos are files with a suffix in :data:`IMAGE_SUFFIXES`; other visible files are named in
    a warning, not dropped silently.
    """
    found: list[tuple[str, Path]] = []
    other: list[Path] = []
    for entry in image_dirs:
        root = Path(entry)
        if not root.is_dir():
            raise PipelineError(f"image folder not found: {readable_text(str(root))}")
        if (root / "images").is_dir():
            holders = [root]
        else:
            holders = sorted(p for p in root.iterdir() if (p / "images").is_dir())
        for holder, folder in ([(h, h / "images") for h in holders] if holders
                               else [(root, root)]):
            photos, rest = list_images(folder)
            found += [(holder.name, p) for p in photos if p.is_file()]
            other += [p for p in rest if p.is_file()]
    if other:
        log.warning("not photos (suffix outside %s): %d file(s), e.g. %s",
                    ", ".join(IMAGE_SUFFIXES), len(other), readable_text(str(other[0])))
    if not found:
        raise PipelineError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) under "
                            f"{readable_text(', '.join(map(str, image_dirs)))}")
    keys = [(src, p.stem) for src, p in found]
    if len(set(keys)) != len(keys):
        raise PipelineError("two photos share a source and a file stem (same name, two "
                            "extensions?): ids would collide")
    return found


def check_output_dir(image_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                     ) -> None:
    """Refuse an output folder that is, contains or lies inside an input folder.

    Inside an input folder the next run would label its own copies as new photos; the same
    folder would overwrite the photos with copies of themselves.
    """
    out = Path(output_dir).resolve()
    for entry in image_dirs:
        src = Path(entry).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise PipelineError(f"--output-dir {readable_text(str(output_dir))} overlaps the "
                                f"input folder {readable_text(str(entry))}: write the labels "
                                "to a folder outside the photos")


def _copy_atomic(src: Path, dst: Path) -> None:
    atomic_save(dst, lambda tmp: shutil.copyfile(src, tmp))


def _record_of(meta_path: Path) -> dict[str, Any] | None:
    """The manifest record of a labelled photo, from its metadata (None: unreadable)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        return None
    return {"id": meta["id"], "agreement": meta.get("agreement"),
            "confidence": meta.get("confidence")}


def _sample_paths(out: Path, source: str, path: Path) -> tuple[Path, Path, Path]:
    folder = out / source
    return (folder / "images" / path.name, folder / "metadata" / f"{path.stem}.json",
            folder / "masks" / f"{path.stem}.png")


def _write_sample(out: Path, source: str, path: Path, meta: dict[str, Any],
                  mask: np.ndarray) -> None:
    """Image copy, metadata, then the mask (last: its presence means complete).

    On any write error (disk full ...) the files of this photo are removed again, so no
    half-written sample is left, and the error names what failed.
    """
    image_dst, meta_dst, mask_dst = _sample_paths(out, source, path)
    try:
        _copy_atomic(path, image_dst)
        atomic_write_json(meta_dst, meta)
        save_image_atomic(Image.fromarray(np.round(mask * 255).astype(np.uint8), "L"), mask_dst)
    except OSError as err:
        for written in (mask_dst, meta_dst, image_dst):
            with contextlib.suppress(OSError):
                written.unlink(missing_ok=True)
        what = ("the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                else (err.strerror or str(err)))
        raise PipelineError(f"cannot write the labels of {readable_text(path.name)} under "
                            f"{readable_text(str(out))}: {what}; nothing of this photo was "
                            "kept, free space (or fix the folder) and rerun to go on") from None


def pseudo_label(image_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 teacher: Teacher, *, tta: TTA | None = None, shard: Shard | None = None,
                 limit: int | None = None) -> Manifest:
    """Label this shard's photos with ``teacher``; photos already labelled are skipped.

    Unreadable photos, photos whose name is not UTF-8 and photos the teacher gives no finite
    mask for are recorded as failures in the manifest and the run goes on. A teacher with a
    wrong output shape, a write error (disk full) or a second run on the same output folder and
    shard stop the run with :class:`PipelineError`. The manifest's records are rebuilt from the
    per-photo metadata at the end, so records of a killed run are not lost.
    """
    tta = tta or TTA()
    shard = shard or Shard()
    out = Path(output_dir)
    check_output_dir(image_dirs, out)
    photos = discover_photos(image_dirs)
    if limit is not None:
        photos = photos[:limit]
    mine = take_shard(photos, shard)
    with OutputLock(out, "pseudo_label", shard) as lock:
        if lock.taken_over:
            log.warning("took over the lock of a run that no longer runs (pid %s on %s)",
                        lock.taken_over.get("pid"), lock.taken_over.get("host"))
        manifest = Manifest.create(out, "pseudo_label", shard,
                                   {"image_dirs": [readable_text(str(d)) for d in image_dirs],
                                    "teacher": teacher.describe(), "tta": tta.describe()})
        manifest.total = len(mine)
        manifest.items = []  # rebuilt from the metadata on disk (see the finally below)
        try:
            _label_all(out, mine, teacher, tta, manifest)
        finally:
            manifest.items = [r for r in (_record_of(_sample_paths(out, src, p)[1])
                                          for src, p in mine
                                          if _sample_paths(out, src, p)[2].is_file())
                              if r is not None]
            with contextlib.suppress(OSError):  # a full disk must not hide the first error
                manifest.close()
    log.info("pseudo_label %s: %d labelled, %d already done, %d failed", shard.tag,
             manifest.done, manifest.skipped, len(manifest.failed))
    return manifest


def _label_all(out: Path, mine: list[tuple[str, Path]], teacher: Teacher, tta: TTA,
               manifest: Manifest) -> None:
    todo = []
    for source, path in mine:
        _, meta_path, mask_path = _sample_paths(out, source, path)
        # complete = mask (written last) and readable metadata; anything else is redone
        record = _record_of(meta_path) if mask_path.is_file() else None
        if record is not None:
            manifest.skip()
            manifest.items.append(record)
        else:
            todo.append((source, path))
    for source, path in progress(todo, total=len(todo), desc="pseudo-label"):
        sample_id = f"{source}_{path.stem}"
        try:
            check_name(sample_id)
            check_name(path.name)
            image = load_image(path)
            mask, agreement = label_image(teacher, image, tta)
        except (InvalidImageError, SampleError, PhotoLabelError) as err:
            log.warning("skipping %s: %s", readable_text(str(path)), err)
            manifest.fail(sample_id, err)
            continue
        meta = {"id": sample_id, "category": source, "caption": "",
                "source_file": readable_text(str(path)),
                "teacher": teacher.name, "tta": tta.describe(),
                "agreement": round(agreement, 4), "confidence": round(mask_confidence(mask), 4)}
        _write_sample(out, source, path, meta, mask)
        manifest.record({"id": sample_id, "agreement": meta["agreement"],
                         "confidence": meta["confidence"]})


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("pseudo-label")
