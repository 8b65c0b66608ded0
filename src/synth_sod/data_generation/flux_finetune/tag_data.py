"""Published entry point, kept so that the README command works verbatim::

    python tag_data.py --image_dir DIR --output_file tags.json

Same as ``s3od-data tags`` (see :mod:`synth_sod.data_generation.cli`).
"""

from synth_sod.data_generation.cli import run_step

if __name__ == "__main__":
    run_step("tags")
