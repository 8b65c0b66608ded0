"""Research code: training (model_training) and synthetic data generation (data_generation)."""
