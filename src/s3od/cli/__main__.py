"""``python -m s3od.cli``."""

from s3od.cli import main

main()
