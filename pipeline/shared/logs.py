"""Diagnostics through `logging`, configured once per command (the first thing its main() does).

stdout carries what a command is run for: its progress lines and its result (tools, tests and
`dvc repro` logs read them there). Everything else (waiting for a lock, a step reached, a file
skipped) is a diagnostic: the project's loggers (`pipeline.*`) send it to stderr, at INFO; other
libraries' loggers (MLflow's, alembic's, TensorFlow's) only from WARNING on. Each message names
its command itself ("register: ..."), so the format is the message alone.
"""

from __future__ import annotations

import logging
import sys

PROJECT = "pipeline"  # the parent of every logger in the pipeline: logging.getLogger(__name__)


def configure_logging(level: int = logging.INFO) -> None:
    """The project's loggers at `level`, every other logger at WARNING, all to stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger(PROJECT).setLevel(level)
