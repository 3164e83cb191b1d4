"""The champion in the service's runtime: a saved Keras model exported to ONNX.

Keras 3 exports through tf2onnx. The ONNX graph keeps the model's contract (uint8 pixels
(N, 28, 28) in, probabilities (N, 10) out, any N), so ONNX Runtime serves it without TensorFlow;
`register` checks that it predicts what the Keras model predicts before promoting it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pipeline.params import IMAGE_SIZE


def export_onnx(model_file: Path, out: Path) -> Path:
    """Write the ONNX export of a saved .keras model to `out`; returns `out`."""
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    spec = keras.InputSpec(dtype="uint8", shape=(None, IMAGE_SIZE, IMAGE_SIZE))
    with warnings.catch_warnings():
        # Keras' tf2onnx shim probes `np.object`, which NumPy 2 warns about: not ours to fix.
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
        model.export(str(out), format="onnx", input_signature=[spec], verbose=False)
    return out
