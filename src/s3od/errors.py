"""Typed errors: callers (CLI, server) map them to exit codes and HTTP statuses."""


class S3ODError(Exception):
    """Base class for every error s3od raises on purpose."""


class InvalidImageError(S3ODError, ValueError):
    """The input could not be decoded or is not an image s3od can process."""


class UnsupportedFormatError(InvalidImageError):
    """The bytes are an image, but in a format s3od does not decode (PSD, EPS, ICO ...)."""


class ImageTooLargeError(InvalidImageError):
    """The image header declares more pixels than the caller's limit; nothing was decoded."""


class ModelNotFoundError(S3ODError, FileNotFoundError):
    """A model name, path or hub id could not be resolved to weights."""


class CheckpointError(S3ODError, ValueError):
    """A checkpoint was found but its contents do not fit the architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A torch checkpoint holds pickled objects outside the allow-list (possibly code); nothing
    in it was run."""


class MissingDependencyError(S3ODError, ImportError):
    """An optional feature needs an extra that is not installed; the message says which."""


class InvalidVideoError(S3ODError, ValueError):
    """A video could not be opened, decoded or written in the requested format."""


class VideoTooLargeError(ImageTooLargeError, InvalidVideoError):
    """The video stream's header declares frames of more pixels than the caller's limit (the
    photos' ``max_pixels``); no frame was decoded. Both an image-too-large and a video error."""
