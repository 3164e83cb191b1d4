"""What several stages use and the service does not: the data files, MLflow runs, progress lines."""
