"""Published entry point, kept so that the README command works verbatim::

    python feature_extraction.py --caption_file captions.json --tag_file tags.json \\
        --save_folder FEATS --model_path FLUX

Same as ``s3od-data features`` (see :mod:`synth_sod.data_generation.cli`).
"""

from synth_sod.data_generation.cli import run_step

if __name__ == "__main__":
    run_step("features")
