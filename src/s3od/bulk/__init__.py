"""Bulk background removal on a Ray cluster (extra ``[ray]``): :func:`remove_backgrounds_ray`.

Ray is imported only when a run starts, so ``import s3od.bulk`` is cheap.
"""

from __future__ import annotations

from s3od.bulk.pipeline import (
    PARQUET_COLUMNS,
    BulkInputError,
    BulkSummary,
    RayConnectionError,
    RenderOptions,
    list_images,
    remove_backgrounds_ray,
)

__all__ = [
    "PARQUET_COLUMNS",
    "BulkInputError",
    "BulkSummary",
    "RayConnectionError",
    "RenderOptions",
    "list_images",
    "remove_backgrounds_ray",
]
