"""Training: snapshot datasets, the LightGBM model, baselines, evaluation and MLflow tracking."""
