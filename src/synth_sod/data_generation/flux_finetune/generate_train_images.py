"""Published entry point, kept so that the README command works verbatim::

    python generate_train_images.py --config_path generation_config.yaml

Same as ``s3od-data generate`` (see :mod:`synth_sod.data_generation.cli`).
"""

from synth_sod.data_generation.cli import run_step

if __name__ == "__main__":
    run_step("generate")
