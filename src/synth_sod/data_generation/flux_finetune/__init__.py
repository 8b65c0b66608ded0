"""Published script folder: the README runs the captioning, tagging, feature, generation and
filtering commands from here; each file is a thin shim over :mod:`synth_sod.data_generation.cli`."""
