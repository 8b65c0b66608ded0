"""Synthetic data generation for S3OD: FLUX images with teacher masks, filtered and exported.

Steps (each a ``s3od-data`` subcommand, a ``python -m synth_sod.data_generation.<module>`` and,
where published, a script): captions/tags of real images (:mod:`.captions`), class prompts
(:mod:`.prompts`), FLUX features of real images (:mod:`.features`), generation with concept
attention and the teacher (:mod:`.generate`, :mod:`.flux`, :mod:`.concept_attention`,
:mod:`.teacher`), filters (:mod:`.filtering`, :mod:`.filters`), hard-category mining
(:mod:`.mining`) and parquet export (:mod:`.export`). See docs/data-generation.md.
"""
