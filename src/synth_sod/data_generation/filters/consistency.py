"""Flip consistency: keep a sample when a student model agrees with the teacher mask, both on
the image and on its mirror image, and agrees with itself across the flip."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from synth_sod.data_generation.filters.base import BaseFilter, FilterResult, Sample, iou
from synth_sod.data_generation.sharding import PipelineError

Predictor = Callable[[list[np.ndarray]], list[np.ndarray]]


def student_predictor(model_path: str, image_size: int | None = None,
                      device: str | None = None) -> Predictor:
    """Best-candidate soft masks ``(H, W)`` from an s3od model (name, hub id or checkpoint).

    ``device`` ``"cuda"`` or None means this process's GPU under torchrun/``srun``
    (:func:`~synth_sod.data_generation.devices.rank_device`), not GPU 0 on every rank.
    """
    from s3od import BackgroundRemoval
    from s3od.errors import S3ODError
    from synth_sod.data_generation.devices import rank_device

    try:
        remover = BackgroundRemoval(model_path, image_size=image_size,
                                    device=rank_device(device))
    except (S3ODError, ValueError) as err:
        raise PipelineError(f"cannot load the consistency student {model_path}: {err}") from err

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        return [masks[int(np.argmax(ious))] for masks, ious in remover.predict_arrays(images)]

    return predict


class HorizontalFlipConsistencyFilter(BaseFilter):
    """Pass iff IoU(student, teacher) ≥ ``iou_threshold`` on the image and on its flip (flipped
    back), and IoU(student, flipped student) ≥ ``consistency_threshold``.

    Masks are binarised at 0.5 (student) and 128 (teacher PNG). Score: the mean of the two
    IoUs with the teacher mask. Published code defaults: 0.7 and 0.8; the published config
    wrote ``iou_threshold: 0.6``, an argument the published class did not accept (it called
    it ``threshold``, also accepted here).

    Args:
        model_path: the student (s3od model name, hub id or checkpoint); or pass ``predictor``.
        image_size: student input side; default the model's own.
        predictor: ``f(list of RGB uint8) -> list of (H, W) soft masks`` (tests, custom models).
    """

    def __init__(self, model_path: str | None = None, iou_threshold: float = 0.7,
                 consistency_threshold: float = 0.8, image_size: int | None = None,
                 device: str | None = None, name: str = "flip_consistency",
                 threshold: float | None = None, predictor: Predictor | None = None) -> None:
        if predictor is None and not model_path:
            raise PipelineError("flip_consistency needs model_path (the student checkpoint)")
        self.name = name
        self.iou_threshold = float(threshold if threshold is not None else iou_threshold)
        self.consistency_threshold = float(consistency_threshold)
        self._predictor = predictor
        self._args = (model_path, image_size, device)

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = student_predictor(*self._args)  # type: ignore[arg-type]
        return self._predictor

    def prepare(self) -> None:
        _ = self.predictor

    def check(self, sample: Sample) -> FilterResult:
        image = sample.image
        teacher = sample.mask > 128
        if teacher.shape != image.shape[:2]:
            return FilterResult(False, 0.0, f"mask size {teacher.shape} != image "
                                f"{image.shape[:2]}")
        plain, mirrored = self.predictor([image, np.ascontiguousarray(image[:, ::-1])])
        plain = plain > 0.5
        unflipped = mirrored[:, ::-1] > 0.5
        iou_plain, iou_flip = iou(plain, teacher), iou(unflipped, teacher)
        consistency = iou(plain, unflipped)
        score = (iou_plain + iou_flip) / 2
        details = {"iou": iou_plain, "iou_flipped": iou_flip, "consistency": consistency}
        problems = []
        if iou_plain < self.iou_threshold:
            problems.append(f"student IoU {iou_plain:.3f} < {self.iou_threshold}")
        if iou_flip < self.iou_threshold:
            problems.append(f"flipped student IoU {iou_flip:.3f} < {self.iou_threshold}")
        if consistency < self.consistency_threshold:
            problems.append(f"flip consistency {consistency:.3f} < {self.consistency_threshold}")
        return FilterResult(not problems, score, "; ".join(problems), details)
