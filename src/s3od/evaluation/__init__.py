"""Evaluation: salient-object metrics, benchmark folders, comparison reports.

- :mod:`~s3od.evaluation.metrics`: :class:`SODMetrics` (pysodmetrics + boundary IoU)
- :mod:`~s3od.evaluation.datasets`: find sets on disk, pair files by stem, read any mask
- :mod:`~s3od.evaluation.api`: :func:`evaluate_folder`, :func:`benchmark_model`
- :mod:`~s3od.evaluation.report`: rich table, CSV, JSON and Markdown

``pysodmetrics`` (the ``eval`` extra) is imported only when metrics are computed.
"""

from s3od.evaluation.api import benchmark_model, evaluate_folder
from s3od.evaluation.datasets import EvalSet, find_sets, pair_by_stem, read_mask
from s3od.evaluation.errors import (
    DatasetNotFoundError,
    EvaluationError,
    MaskReadError,
    MissingDependencyError,
    SizeMismatchError,
    UnknownSetError,
)
from s3od.evaluation.metrics import METRIC_KEYS, METRICS, SODMetrics, boundary_iou
from s3od.evaluation.report import results_table, write_reports

__all__ = [
    "METRICS",
    "METRIC_KEYS",
    "DatasetNotFoundError",
    "EvalSet",
    "EvaluationError",
    "MaskReadError",
    "MissingDependencyError",
    "SODMetrics",
    "SizeMismatchError",
    "UnknownSetError",
    "benchmark_model",
    "boundary_iou",
    "evaluate_folder",
    "find_sets",
    "pair_by_stem",
    "read_mask",
    "results_table",
    "write_reports",
]
