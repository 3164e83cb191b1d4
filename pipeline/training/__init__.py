"""Training plumbing: the Keras model built from params, the training loop, resuming and workers."""
