"""Training of the S3OD models with Hydra + PyTorch Lightning (see docs/training.md)."""
