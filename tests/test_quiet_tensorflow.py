"""TensorFlow's C++ start-up noise is filtered from stderr; real warnings still show.

Here TensorFlow is imported and run for real; the filter alone:
tests/test_quiet_tensorflow_filter.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, base_env

pytestmark = pytest.mark.model

# What TensorFlow 2.21 printed here at start-up, and the cuDNN/TF-TRT lines of other builds.
NOISE = re.compile(
    r"absl::InitializeLog|cuInit|cuda drivers|Unable to register cu|oneDNN custom operations"
    r"|This TensorFlow binary is optimized|To enable the following instructions|TF-TRT"
)


def test_importing_tensorflow_prints_no_noise_but_warnings_still_show():
    env = base_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # the module alone must do it
    code = (
        "import pipeline.training.quiet_tensorflow\n"
        "import tensorflow as tf, warnings\n"
        "tf.reduce_sum(tf.ones(3))\n"  # runs an op: any later start-up logging would show now
        "warnings.warn('still shown')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert not NOISE.search(proc.stderr), proc.stderr
    assert "UserWarning: still shown" in proc.stderr
