"""Published entry point, kept so that the README command works verbatim::

    python generate_captions.py --image_dir DIR --output_file captions.json

Same as ``s3od-data captions`` (see :mod:`synth_sod.data_generation.cli`).
"""

from synth_sod.data_generation.cli import run_step

if __name__ == "__main__":
    run_step("captions")
