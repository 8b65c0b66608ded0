"""Video background removal through PyAV (``pip install 's3od[edges]'``).

>>> from s3od import BackgroundRemoval
>>> from s3od.video import remove_video_background
>>> remove_video_background(BackgroundRemoval(), "clip.mp4", "clip.webm", temporal_smoothing=0.6)
"""

from s3od.video.io import (
    FORMATS,
    OUTPUT_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoInfo,
    VideoWriter,
    iter_frames,
    output_format,
    probe,
)
from s3od.video.pipeline import VideoReport, remove_video_background, render_frame
from s3od.video.temporal import TemporalSmoother, histogram_distance

__all__ = [
    "FORMATS",
    "OUTPUT_SUFFIXES",
    "VIDEO_SUFFIXES",
    "TemporalSmoother",
    "VideoInfo",
    "VideoReport",
    "VideoWriter",
    "histogram_distance",
    "iter_frames",
    "output_format",
    "probe",
    "remove_video_background",
    "render_frame",
]
