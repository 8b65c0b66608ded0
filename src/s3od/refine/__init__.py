"""Fine edges: guided-filter upsampling, trimap matting and foreground colour estimation.

>>> from s3od import BackgroundRemoval
>>> remover = BackgroundRemoval()
>>> result = remover.remove_background("portrait.jpg", refine="guided", fg_estimate=True)

``guided`` needs only numpy; ``matting`` and ``fg_estimate`` need pymatting (``s3od[edges]``).
"""

from s3od.refine.foreground import defringe
from s3od.refine.guided import guided_upsample
from s3od.refine.matting import MattingReport, make_trimap, matte_tiles
from s3od.refine.pipeline import (
    REFINE_MODES,
    Postprocess,
    RefineConfig,
    cutout_array,
    postprocess,
    refine_alpha,
    refine_config,
)
from s3od.refine.upsample import downsample_area, upsample_bilinear

__all__ = [
    "REFINE_MODES",
    "MattingReport",
    "Postprocess",
    "RefineConfig",
    "cutout_array",
    "defringe",
    "downsample_area",
    "guided_upsample",
    "make_trimap",
    "matte_tiles",
    "postprocess",
    "refine_alpha",
    "refine_config",
    "upsample_bilinear",
]
