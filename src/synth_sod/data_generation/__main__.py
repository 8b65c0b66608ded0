"""``python -m synth_sod.data_generation <step> ...`` = ``s3od-data <step> ...``."""

from synth_sod.data_generation.cli import main

main()
