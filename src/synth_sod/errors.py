"""Typed errors of ``synth_sod``: one base, so a caller can tell "the setup is wrong" from a bug.

``SynthSODError`` derives from :class:`s3od.errors.S3ODError` because ``synth_sod`` sits on top
of the inference package: ``except S3ODError`` catches every error either package raises on
purpose, and ``except SynthSODError`` only the training and data-generation ones. The
configuration errors stay ``ValueError`` subclasses, as they were before they had a base.
"""

from __future__ import annotations

from s3od.errors import S3ODError


class SynthSODError(S3ODError):
    """Base class for every error ``synth_sod`` raises on purpose."""


class PipelineError(SynthSODError):
    """A data-generation problem (bad path, config or shard): the CLI prints it, no traceback."""


class ConfigError(SynthSODError, ValueError):
    """The composed training config cannot run (raised before any model is built)."""


class DataConfigError(SynthSODError, ValueError):
    """A dataset path or list in the training config is wrong (raised before any model is built)."""
