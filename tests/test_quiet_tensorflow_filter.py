"""The filter of TensorFlow's C++ start-up noise, on the lines TensorFlow prints: noise dropped,
real warnings and errors kept."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_filter_drops_noise_and_keeps_the_rest():
    from pipeline.training.quiet_tensorflow import without_noise

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1795668118.773190   32422 port.cc:153] oneDNN custom operations are on.\n",
        "I0000 00:00:1795668118.774701   32422 cudart_stub.cc:31] Could not find cuda drivers\n",
        "I0000 00:00:1795668119.193611   32422 cpu_feature_guard.cc:227] This TensorFlow binary "
        "is optimized to use available CPU instructions in performance-critical operations.\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.\n",
        "E0000 00:00:1795668145.532827   32701 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
        "E0000 00:00:1729000000.000000   12 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
        "Attempting to register factory for plugin cuDNN when one has already been registered\n",
        "2024-01-01 12:00:00.000000: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] "
        "TF-TRT Warning: Could not find TensorRT\n",
    ]
    kept = [
        "<string>:5: UserWarning: a real warning\n",
        "W0000 00:00:1795668641.765925    3785 dataset.cc:997] some other TensorFlow warning\n",
        "E0000 00:00:1795668641.765925    3785 kernel.cc:1] a real TensorFlow error\n",
        "F0000 00:00:1795668641.765925    3785 check.cc:1] Check failed: cuInit\n",
        "Traceback (most recent call last):\n",
    ]
    assert without_noise("".join(noise + kept)) == "".join(kept)
