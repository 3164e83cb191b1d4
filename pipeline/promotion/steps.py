"""The named steps of a promotion, logged (stderr) as `register: step <name>`.

`REGISTER_STOP_AT=<step>` stops the process there (SIGSTOP, resumed by SIGCONT): how the tests
interleave overlapping registers and kill one at each step. A promotion's steps, in order:
- `registered`: a model version exists, tagged `promotion=in_progress`, not yet `@champion`;
- `before-alias`: its ONNX and explainer files are logged to the run and checked; next, decide
  again against the registry as it is now, then move the alias;
- `alias-moved`: the version is `@champion` (the commit point); the BentoML store not yet synced;
- `bento-import`: files copied into a new BentoML model that is not yet saved to the store.

A rollback's (rollback.py), before its BentoML import:
- `rollback-marked`: the champion is tagged `rolled_back=pending`, the alias not yet moved;
- `rollback-alias-moved`: the alias is on the restored version (the commit point), its tags and
  the registered model's description not yet written.
"""

from __future__ import annotations

import logging
import os
import signal

STEPS = (
    "registered",
    "before-alias",
    "alias-moved",
    "bento-import",
    "rollback-marked",
    "rollback-alias-moved",
)
STOP_AT = "REGISTER_STOP_AT"

log = logging.getLogger(__name__)


def reached(step: str) -> None:
    """Announce a step; stop the process here if REGISTER_STOP_AT names it."""
    if step not in STEPS:
        raise ValueError(f"unknown promotion step {step!r}; steps: {', '.join(STEPS)}")
    log.info("register: step %s", step)  # a handler flushes each line: seen before a stop
    if os.environ.get(STOP_AT) == step:
        os.kill(os.getpid(), signal.SIGSTOP)
