"""The Fashion-MNIST pipeline: one module per DVC stage (fetch, feedback, prepare, train, evaluate,
register), drift.py (`make monitor`) and rollback.py (`make rollback`); core/ is what the service
shares, shared/ what several stages use, curation/, training/ and promotion/ the parts of feedback,
train and register, monitor/ the drift report's, reporting/ what people read."""
