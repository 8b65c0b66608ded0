"""torch.nn.Modules only: no file or network I/O, no PIL.

Which name builds which module is decided by :mod:`s3od.architectures`; ``build_model`` is
re-exported here for the callers that always imported it from this package.
"""

from s3od.architectures import build_model
from s3od.modeling.dpt import DPTHead
from s3od.modeling.segmentation import DPTSegmentation, LiteSegmentation

__all__ = ["DPTHead", "DPTSegmentation", "LiteSegmentation", "build_model"]
