"""The s3od Gradio demo as a script: ``python demo/app.py [--model NAME] [--port 7860]``.

Same as ``s3od demo``; kept as a file so Spaces-style hosting can point at it.
"""

from __future__ import annotations

import argparse

from s3od.serving.demo import launch_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registry name, hub id or checkpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None)
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()
    launch_demo(args.model, host=args.host, port=args.port, device=args.device,
                image_size=args.image_size)


if __name__ == "__main__":
    main()
