"""Import TensorFlow without its C++ start-up noise; the stages that use TensorFlow import this first.

On a CPU-only machine TensorFlow 2.21 writes a dozen lines to stderr while it loads: absl's "All log
messages before absl::InitializeLog() ...", oneDNN and CPU-instruction notices, "Could not find cuda
drivers", and `failed call to cuInit: ... UNKNOWN ERROR (303)` when it first lists devices. They come
from C++ before TensorFlow reads TF_CPP_MIN_LOG_LEVEL (measured: level 3 still prints them), so no
setting hides them. Instead, file descriptor 2 is redirected to a temporary file while TensorFlow
is imported and lists its devices, and what was written is copied back to stderr without those
lines. Everything else (Python warnings, other TensorFlow warnings and errors, tracebacks) still
shows, and after start-up stderr is untouched. TF_CPP_MIN_LOG_LEVEL defaults to 1 (hide INFO, keep
warnings and errors); set it to 0 to see the start-up log unfiltered.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# A C++ log line: absl's "I0000 00:00:1795668118.773190   32422 port.cc:153] ..." or the older
# "2024-01-01 12:00:00.000000: I tensorflow/core/platform/cpu_feature_guard.cc:182] ...".
_LOG_LINE = re.compile(
    r"^(?:(?P<absl>[IWEF])\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: (?P<old>[IWEF]) )\S+\] (?P<msg>.*)"
)
# Start-up warnings and errors that say only "no GPU here" or "plugin registered twice".
_NOISE = re.compile(
    r"cuInit|Could not find cuda drivers|Unable to register cu(?:DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning|computation placer already registered|oneDNN custom operations"
)
_STANDALONE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # the second line of the CPU-instructions notice
)


def is_noise(line: str) -> bool:
    """Whether a start-up stderr line is TensorFlow noise: INFO, or a known harmless warning/error."""
    if line.startswith(_STANDALONE):
        return True
    match = _LOG_LINE.match(line)
    if match is None:
        return False
    level = match["absl"] or match["old"]
    return level == "I" or (level in "WE" and bool(_NOISE.search(match["msg"])))


def without_noise(text: str) -> str:
    """`text` without its noise lines (see is_noise)."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


def import_tensorflow() -> None:
    """Import TensorFlow and list its devices with the start-up noise filtered out of stderr."""
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import tensorflow  # noqa: F401 (already loaded, or the full log was asked for)

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            # Device discovery (cuInit) happens on first use; do it now, while stderr is captured.
            # It does not start the runtime: thread pools and MultiWorkerMirroredStrategy can still
            # be configured afterwards.
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(without_noise(captured.read().decode(errors="replace")))
            sys.stderr.flush()


import_tensorflow()
