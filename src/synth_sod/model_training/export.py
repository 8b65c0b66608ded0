"""Export a training checkpoint to the inference format ``BackgroundRemoval`` loads.

    python -m synth_sod.model_training.export CKPT OUT [--dtype fp16] [--name NAME]

``OUT`` ending in ``.safetensors`` gets safetensors (architecture, constructor config and name
in the metadata key ``s3od``); anything else gets a torch file ``{"state_dict", "architecture",
"config", "name"}`` that also loads with ``torch.load(weights_only=True)``. Keys carry no
``model.`` prefix, so published-format loaders read it too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from s3od.architectures import list_architectures
from synth_sod.model_training.checkpoints import read_lightning_checkpoint

DTYPES = {"fp32": None, "float32": None, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "fp32",
                      name: str | None = None, image_size: int | None = None) -> Path:
    """Write ``out`` from the Lightning checkpoint ``ckpt``; returns the path written.

    The input size the network was last trained at (``dataset.image_size``, or ``image_size``)
    is stored with the weights as ``config["image_size"]``, so loading the file by path runs at
    that size instead of the architecture's default.
    """
    from s3od.hub import save_checkpoint

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    state, config = read_lightning_checkpoint(ckpt)
    model_cfg = config["model"]
    architecture = model_cfg["architecture"]
    exportable = list_architectures(inference=True)
    if architecture not in exportable:
        raise ValueError(f"architecture {architecture!r} has no inference predictor "
                         f"(exportable: {exportable}); the FLUX teacher is used "
                         "through synth_sod.data_generation instead")
    params = dict(model_cfg.get("params") or {})
    size = image_size or (config.get("dataset") or {}).get("image_size")
    if size is not None:
        if int(size) <= 0:
            raise ValueError(f"image_size must be positive, got {size}")
        params["image_size"] = int(size)
    return save_checkpoint(state, out, architecture, params, dtype=DTYPES[dtype], name=name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth_sod.model_training.export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) written by the training run")
    parser.add_argument("out", help="output file: .safetensors or .pt")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="cast floating tensors (fp16 halves the file)")
    parser.add_argument("--name", default=None, help="model name stored in the metadata")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size stored with the weights (default: the training "
                             "config's dataset.image_size)")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.ckpt, args.out, args.dtype, args.name, args.image_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
