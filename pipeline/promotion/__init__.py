"""Promotion of the best model (stage `register`): choosing, exporting and checking, the MLflow
registry and model card, the BentoML model store."""
