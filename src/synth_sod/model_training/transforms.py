"""Albumentations pipelines per mode: ``test``, ``regular`` (real photos), ``synthetic``.

Every pipeline maps an RGB uint8 image and its uint8 mask to a square ``image_size`` pair: the
long side is resized to ``image_size`` and the rest padded with zeros (image and mask), as the
predictor's letterbox does. Normalisation is *not* done here: the Lightning module applies
:func:`s3od.transforms.normalize`, the one normalisation shared with inference.

The augmentation lists and probabilities follow the published pipeline. ``crop_scale`` /
``crop_p`` widen the random resized crop (multi-scale training); defaults are the published
``(0.85, 1.0)`` with probability 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

MODES = ("test", "regular", "synthetic")


def _base(image_size: int) -> list[A.BasicTransform]:
    return [
        A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_LINEAR,
                         mask_interpolation=cv2.INTER_LINEAR),
        A.PadIfNeeded(min_height=image_size, min_width=image_size,
                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
    ]


def _geometric(image_size: int, crop_scale: Sequence[float], crop_p: float) -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.2),
        A.RandomRotate90(p=0.2),
        A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(crop_scale),
                            ratio=(0.9, 1.1), mask_interpolation=cv2.INTER_LINEAR, p=crop_p),
        A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                 mask_interpolation=cv2.INTER_LINEAR, p=0.2),
    ]


def _regular_photometric() -> list:
    return [
        A.OneOf([
            A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.2, hue=0.2, p=0.7),
            A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=0.3),
        ], p=0.5),
        A.OneOf([
            A.GaussNoise(std_range=(0.2, 0.44)),
            A.ISONoise(p=0.5),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), p=0.5),
        ], p=0.3),
    ]


def _synthetic_block() -> list:
    return [
        A.OneOf([
            A.ColorJitter(0.4, 0.4, 0.3, 0.2, p=0.7),
            A.HueSaturationValue(hue_shift_limit=25, sat_shift_limit=35, val_shift_limit=30,
                                 p=0.4),
            A.CLAHE(clip_limit=4.0, tile_grid_size=(8, 8), p=0.2),
        ], p=0.7),
        A.OneOf([
            A.ISONoise(color_shift=(0.01, 0.03), intensity=(0.08, 0.3), p=0.4),
            A.GaussNoise(std_range=(0.25, 0.6), p=0.4),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), p=0.4),
        ], p=0.6),
        A.OneOf([
            A.ImageCompression(quality_range=(30, 80), p=0.4),
            A.Downscale(scale_range=(0.4, 0.7), p=0.3),
        ], p=0.5),
        A.OneOf([
            A.RandomShadow(shadow_roi=(0, 0.1, 1, 1), num_shadows_limit=(1, 3), p=0.4),
            A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=0.4, p=0.4),
        ], p=0.5),
        A.OneOf([
            A.MotionBlur(blur_limit=(3, 7), p=0.4),
            A.GaussianBlur(blur_limit=(3, 7), p=0.4),
            A.Defocus(radius=(2, 6), alias_blur=(0.1, 0.3), p=0.3),
            A.ZoomBlur(max_factor=1.03, p=0.2),
        ], p=0.5),
        A.OneOf([
            A.ToSepia(p=0.5),
            A.ToGray(p=0.5),
            A.ChannelShuffle(p=0.3),
        ], p=0.05),
        A.OneOf([
            A.OpticalDistortion(distort_limit=0.3, mask_interpolation=cv2.INTER_LINEAR, p=0.3),
            A.GridDistortion(num_steps=6, distort_limit=0.3, mask_interpolation=cv2.INTER_LINEAR,
                             p=0.3),
            A.ElasticTransform(alpha=1.0, sigma=25, mask_interpolation=cv2.INTER_LINEAR, p=0.2),
            A.Perspective(scale=(0.05, 0.1), mask_interpolation=cv2.INTER_LINEAR, p=0.15),
        ], p=0.4),
        A.OneOf([
            A.Emboss(alpha=(0.2, 0.4), strength=(0.2, 0.5), p=0.3),
            A.Sharpen(alpha=(0.2, 0.6), lightness=(0.5, 1.2), p=0.3),
            A.Posterize(num_bits=5, p=0.2),
        ], p=0.3),
        A.OneOf([
            A.RandomSnow(snow_point_range=(0.1, 0.3), brightness_coeff=2.5, method="bleach",
                         p=0.1),
            A.RandomRain(slant_range=(-10, 10), drop_length=20, drop_width=1,
                         drop_color=(200, 200, 200), blur_value=7, brightness_coefficient=0.7,
                         rain_type="default", p=0.1),
        ], p=0.15),
    ]


def build_transform(
    mode: str,
    image_size: int,
    crop_scale: Sequence[float] = (0.85, 1.0),
    crop_p: float = 0.5,
) -> A.Compose:
    """The albumentations pipeline of ``mode`` (one of :data:`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"unknown transform_mode {mode!r}; expected one of {MODES}")
    steps = _base(image_size)
    if mode == "regular":
        steps += _geometric(image_size, crop_scale, crop_p) + _regular_photometric()
    elif mode == "synthetic":
        steps += _geometric(image_size, crop_scale, crop_p) + _synthetic_block()
    return A.Compose(steps)
