"""torch.nn.Modules only: no file or network I/O, no PIL."""

from s3od.modeling.dpt import DPTHead
from s3od.modeling.segmentation import DPTSegmentation, LiteSegmentation

ARCHITECTURES = {"dpt_dinov3": DPTSegmentation, "lite": LiteSegmentation}


def build_model(architecture: str, **kwargs):
    """Instantiate an architecture by name with its constructor arguments."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"Unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None
    return cls(**kwargs)


__all__ = ["ARCHITECTURES", "DPTHead", "DPTSegmentation", "LiteSegmentation", "build_model"]
