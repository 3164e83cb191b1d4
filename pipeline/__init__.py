"""Stage code of the Fashion-MNIST pipeline: one module per DVC stage, plus the shared pieces."""
