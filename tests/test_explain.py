"""service/explain.py on tiny arrays, without TensorFlow.

The explainer's layer geometry read from Keras layers: tests/test_explain_layers.py.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.explain import (
    diverging_rgb,
    filters_view,
    formula,
    grid_columns,
    layer_activations,
    png_data_url,
    scale_maps,
    tile_grid,
)
from service.schemas import Grid

pytestmark = pytest.mark.unit


def decode(url: str) -> np.ndarray:
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def tiles_of(image: np.ndarray, grid: Grid, channels: int) -> np.ndarray:
    """Cut a grid image back into its tiles (h, w, channels): channel k at row k // cols."""
    step = grid.tile + grid.gap
    return np.stack(
        [
            image[(k // grid.cols) * step :][: grid.tile, (k % grid.cols) * step :][:, : grid.tile]
            for k in range(channels)
        ],
        axis=-1,
    )


@pytest.mark.parametrize(
    ("channels", "cols"),
    [(1, 1), (2, 2), (6, 6), (8, 4), (32, 8), (64, 16), (128, 16), (7, 4), (10, 5)],
)
def test_grid_columns_are_about_twice_the_rows(channels, cols):
    assert grid_columns(channels) == cols


def test_scale_maps_maps_each_channel_from_its_own_range():
    maps = np.zeros((2, 2, 3), np.float32)
    maps[..., 0] = [[0, 1], [2, 4]]  # 0..4
    maps[..., 1] = 5.0  # constant: did not vary
    maps[..., 2] = [[-1, 0], [0, 1]]  # signed activations (not ReLU) too
    scaled, low, high = scale_maps(maps)
    assert scaled.dtype == np.uint8
    assert scaled[..., 0].tolist() == [[0, 64], [128, 255]]
    assert scaled[..., 1].tolist() == [[0, 0], [0, 0]]
    assert scaled[..., 2].tolist() == [[0, 128], [128, 255]]
    assert low.tolist() == [0, 5, -1] and high.tolist() == [4, 5, 1]


def test_tile_grid_places_channel_k_at_row_k_div_cols():
    tiles = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)  # five 2x3 tiles
    grid = tile_grid(tiles, cols=2, gap=1, fill=99)
    assert grid.shape == (3 * 2 + 2, 2 * 3 + 1)  # 3 rows, 2 columns
    for k in range(5):
        r, c = divmod(k, 2)
        np.testing.assert_array_equal(grid[r * 3 : r * 3 + 2, c * 4 : c * 4 + 3], tiles[:, :, k])
    assert (grid[2, :] == 99).all() and (grid[:, 3] == 99).all()  # the gaps
    assert (grid[6:, 4:] == 99).all()  # the empty sixth cell


def test_diverging_colours_blue_white_red():
    rgb = diverging_rgb(np.array([-2.0, -1.0, 0.0, 0.5, 1.0]), scale=1.0)
    assert rgb[0].tolist() == rgb[1].tolist() == [33, 102, 172]  # clipped at -scale
    assert rgb[2].tolist() == [255, 255, 255]
    assert rgb[4].tolist() == [178, 24, 43]
    assert rgb[3].tolist() == [round((255 + 178) / 2), round((255 + 24) / 2), 149]


def test_png_data_url_round_trips():
    image = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    np.testing.assert_array_equal(decode(png_data_url(image)), image)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(png_data_url(rgb)), rgb)


def test_formula_matches_the_layer_table():
    assert formula(28, 3, 1.0, 1, 28) == "floor((28 + 2*1 - 3) / 1) + 1 = 28"
    assert formula(7, 2, 0.0, 2, 3) == "floor((7 + 2*0 - 2) / 2) + 1 = 3"
    assert formula(28, 4, 1.5, 2, 14) == "floor((28 + 2*1.5 - 4) / 2) + 1 = 14"


def test_layer_activations_can_be_read_back():
    """A client recovers every activation from the PNG grid and the reported low/high."""
    rng = np.random.default_rng(2)
    maps = np.maximum(rng.normal(size=(4, 4, 7)).astype(np.float32), 0)  # after ReLU
    maps[..., 5] = 0  # a channel that did not fire
    row = {
        "layer": "conv_0",
        "output": "act_0",
        "kind": "conv",
        "n_in": 4,
        "f": 3,
        "p": 1.0,
        "s": 1,
        "n_out": 4,
    }
    out = layer_activations(row, maps)
    assert out.channels == 7 and out.formula == "floor((4 + 2*1 - 3) / 1) + 1 = 4"
    assert (out.maps.cols, out.maps.rows, out.maps.tile, out.maps.gap) == (4, 2, 4, 1)
    image = decode(out.maps.png)
    assert image.shape == (2 * 5 - 1, 4 * 5 - 1)
    tiles = tiles_of(image, out.maps, 7).astype(np.float64)
    low, high = np.array(out.low), np.array(out.high)
    recovered = low + tiles / 255 * (high - low)
    np.testing.assert_allclose(recovered, maps, atol=(maps.max() / 255) + 1e-4)
    assert (tiles[..., 5] == 0).all() and high[5] == 0


def test_filters_view_keeps_kernel_order_and_sign():
    kernels = np.zeros((3, 3, 4))
    kernels[0, 0, 1] = 2.0  # filter 1: one strong positive weight
    kernels[2, 2, 3] = -1.0  # filter 3: one negative weight
    view = filters_view("conv_0", kernels)
    assert (view.layer, view.f, view.count, view.scale) == ("conv_0", 3, 4, 2.0)
    tiles = [decode(view.grid.png)[:3, k * 4 : k * 4 + 3] for k in range(4)]  # one row of 4
    assert (tiles[0] == 255).all()  # all zero: white
    assert tiles[1][0, 0].tolist() == [178, 24, 43]  # +scale: red
    assert tiles[3][2, 2].tolist() == [144, 178, 214]  # -scale/2: halfway to blue


def test_a_model_without_explainer_answers_503():
    """A champion promoted before register exported explainers: served, /explain refused."""
    import asyncio
    from types import SimpleNamespace

    from service.explain import NoExplainer, load_explainer
    from service.inputs import InputError
    from service.schemas import ModelRef

    old = SimpleNamespace(info=SimpleNamespace(metadata={"onnx_file": "model.onnx"}))
    explainer = load_explainer(old, ["a"] * 10, ModelRef(name="m", version="1"))
    assert isinstance(explainer, NoExplainer) and explainer.samples.samples == []
    with pytest.raises(InputError) as refused:
        asyncio.run(explainer.explain(np.zeros((28, 28), np.uint8), False))
    assert refused.value.status == 503 and "no explainer" in str(refused.value)
