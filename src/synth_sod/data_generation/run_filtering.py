"""Published entry point, kept so that the README command works verbatim::

    python run_filtering.py --config_path filtering_config.yaml

Same as ``s3od-data filter`` (see :mod:`synth_sod.data_generation.cli`).
"""

from synth_sod.data_generation.cli import run_step

if __name__ == "__main__":
    run_step("filter")
