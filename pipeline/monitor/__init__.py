"""The drift report's parts (`make monitor`, pipeline/drift.py): the tests and the verdict rule, the
report of a window, its page and its Prometheus metrics."""
