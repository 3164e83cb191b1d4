"""The layer shape table checked against Keras's own shapes, and the built model: probabilities,
test-time flip. The table's formula and text on fixed cases: tests/test_layer_table.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conv_blocks import conv_block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.architecture import layer_table
from pipeline.core.params import ConvBlock, DenseLayer, ModelParams, PoolParams
from pipeline.shared.keras_runtime import Classifier
from pipeline.training.model import build_model, network, spatial_sizes, with_test_time_flip

pytestmark = pytest.mark.model


blocks = st.builds(
    ConvBlock,
    filters=st.integers(1, 4),
    kernel_size=st.integers(1, 7),
    strides=st.integers(1, 3),
    padding=st.sampled_from(["valid", "same"]),
    batch_norm=st.booleans(),
    activation=st.just("relu"),
    pool=st.one_of(
        st.none(), st.builds(PoolParams, size=st.integers(1, 3), strides=st.integers(1, 3))
    ),
    dropout=st.just(0.0),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(blocks, min_size=1, max_size=4))
def test_table_matches_keras_for_random_architectures(conv_blocks):
    try:
        rows = layer_table(28, conv_blocks)
    except ValueError:
        # The table refuses exactly the architectures Keras cannot build either.
        with pytest.raises(ValueError):  # noqa: PT011 - Keras's message varies by layer
            build_model(
                ModelParams.model_construct(conv_blocks=conv_blocks, dense=[], test_time_flip=False)
            )
        return
    model = build_model(ModelParams(conv_blocks=conv_blocks, dense=[], test_time_flip=False))
    assert spatial_sizes(model) == {r.layer: r.n_out for r in rows}


def test_built_model_predicts_probabilities():
    params = ModelParams(
        conv_blocks=[conv_block(strides=1, padding="valid", batch_norm=True, dropout=0.1)],
        dense=[DenseLayer(units=8, dropout=0.2)],
        test_time_flip=False,
    )
    model = build_model(params)
    names = [layer.name for layer in model.layers]
    assert names[:6] == ["scale", "add_channel", "conv_0", "bn_0", "act_0", "pool_0"]
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    proba = Classifier(model).predict_proba(images)
    (pixels,) = model.inputs
    assert pixels.dtype == "uint8" and tuple(pixels.shape) == (None, 28, 28)
    assert proba.shape == (5, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    eager = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(proba, eager, atol=1e-6)  # the compiled path computes the same
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, 28, 28\), got float32"):
        Classifier(model).predict_proba(images.astype(np.float32))
    assert isinstance(model, keras.Sequential)


def test_test_time_flip_averages_image_and_mirror_and_loads_without_custom_code(tmp_path):
    params = ModelParams(
        conv_blocks=[conv_block(strides=1, padding="same", batch_norm=True, dropout=0.0)],
        dense=[DenseLayer(units=8, dropout=0.0)],
        test_time_flip=True,
    )
    net = build_model(params)
    model = with_test_time_flip(net)
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    plain = Classifier(net).predict_proba(images)
    mirrored = Classifier(net).predict_proba(np.ascontiguousarray(images[:, :, ::-1]))
    averaged = Classifier(model).predict_proba(images)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(averaged, plain, atol=1e-4)  # the mirror really is a different input
    # A mirror-symmetric image gets exactly the network's own answer.
    symmetric = np.concatenate([images[:, :, :14], images[:, :, :14][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(
        Classifier(model).predict_proba(symmetric),
        Classifier(net).predict_proba(symmetric),
        atol=1e-6,
    )
    assert model.count_params() == net.count_params()  # no weights of its own
    # Saved and loaded in safe mode with no custom objects: what mlflow.pyfunc does.
    model.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras", compile=False)
    np.testing.assert_allclose(Classifier(loaded).predict_proba(images), averaged, atol=1e-6)
    assert network(loaded).name == "fashion_cnn" and network(net) is net
    assert spatial_sizes(loaded) == spatial_sizes(net) == {"conv_0": 28, "pool_0": 14}
