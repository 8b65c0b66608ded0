"""Typed errors of the evaluation package; the CLI turns them into clean messages."""

from __future__ import annotations

# One MissingDependencyError for the whole package: ``except s3od.errors.MissingDependencyError``
# also catches a missing evaluation extra. Re-exported here for the evaluation API.
from s3od.errors import MissingDependencyError as MissingDependencyError
from s3od.errors import S3ODError


class EvaluationError(S3ODError):
    """Base class for problems with evaluation inputs."""


class DatasetNotFoundError(EvaluationError, FileNotFoundError):
    """A folder is missing or holds no recognisable set of masks."""


class UnknownSetError(EvaluationError, KeyError):
    """``--sets`` named a set that the data root does not contain."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class MaskReadError(EvaluationError, ValueError):
    """A mask or prediction file could not be decoded."""


class SizeMismatchError(EvaluationError, ValueError):
    """A prediction cannot be mapped onto its ground truth (e.g. transposed or cropped)."""
