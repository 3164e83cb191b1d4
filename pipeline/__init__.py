"""The Fashion-MNIST pipeline: one module per DVC stage (fetch, prepare, train, evaluate, register)
and drift.py (`make monitor`); core/ is what the service shares, shared/ what several stages use,
training/ and promotion/ the parts of train and register, reporting/ what people read."""
