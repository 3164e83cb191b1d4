"""The BentoML service that serves the champion model (see service/service.py)."""
