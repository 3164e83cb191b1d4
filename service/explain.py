"""POST /explain and GET /samples: what the CNN does with one image, layer by layer.

`register` ships an explainer with the champion (pipeline/promotion/export.py): the same network exported
to ONNX with one more output per conv block and pooling layer, and explainer.json with each of
those layers' geometry, the first conv layer's learned filters and a few test images. Here its
activations become something a browser shows directly and a client can still read back: per layer
one grayscale PNG, a grid of its feature maps (channel k in row k // cols, column k % cols), each
map scaled to 0-255 from its own minimum and maximum (reported, so values can be recovered).

The array functions are pure (tested on tiny arrays); `Explainer` runs the model in a thread of
its own with one ONNX Runtime thread, so a burst of /explain calls takes at most one core per
worker and never queues behind or in front of /classify and /predict's model calls.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.inference import OnnxClassifier, check_images
from service.inputs import InputError
from service.schemas import (
    Chain,
    ExplainedImage,
    Filters,
    Grid,
    LayerActivations,
    ModelRef,
    Sample,
    Samples,
    predictions,
)

# The explainer.json layout this code reads (pipeline/promotion/export.py writes it).
EXPLAINER_FORMAT = 1
GAP = 1  # pixels between tiles of a grid
MAP_GAP_VALUE = 96  # dark gray: an all-black tile (a channel that did not fire) stays visible
FILTER_GAP_RGB = (128, 128, 128)
# Diverging colours for filter weights (ColorBrewer RdBu ends): negative blue, zero white, positive red.
NEGATIVE_RGB = np.array([33, 102, 172], np.float64)
POSITIVE_RGB = np.array([178, 24, 43], np.float64)


# --- pure functions: arrays in, arrays or strings out ---------------------------------------


def grid_columns(channels: int) -> int:
    """Columns of a grid of `channels` tiles: about twice as wide as tall (fits a page), and a
    divisor of `channels` when one is near, so the last row is full (32 -> 8, 64 or 128 -> 16)."""
    target = math.ceil(math.sqrt(2 * channels))
    for cols in range(target, min(channels, target + target // 2) + 1):
        if channels % cols == 0:
            return cols
    return min(channels, target)


def scale_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations (h, w, c) -> (uint8 (h, w, c), low (c,), high (c,)): each channel mapped from
    its own [low, high] to [0, 255]; a constant channel becomes 0 (after ReLU: it did not fire)."""
    maps = np.asarray(maps, np.float32)
    low, high = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
    span = high - low
    scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1) * 255, 0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), low, high


def tile_grid(tiles: np.ndarray, cols: int, gap: int = GAP, fill: Any = 0) -> np.ndarray:
    """Tiles (h, w, c) or RGB (h, w, c, 3) -> one image with the c tiles in rows of `cols`,
    `gap` pixels of `fill` between them (and in empty cells of the last row)."""
    h, w, c = tiles.shape[:3]
    rows = -(-c // cols)
    shape = (rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:])
    grid = np.empty(shape, tiles.dtype)
    grid[...] = fill
    for k in range(c):
        r, q = divmod(k, cols)
        grid[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = tiles[:, :, k]
    return grid


def diverging_rgb(values: np.ndarray, scale: float) -> np.ndarray:
    """Signed values -> uint8 RGB (..., 3): -scale blue, 0 white, +scale red."""
    t = np.clip(np.asarray(values, np.float64) / (scale or 1.0), -1, 1)[..., None]
    white = np.full(3, 255.0)
    rgb = np.where(t < 0, white + (NEGATIVE_RGB - white) * -t, white + (POSITIVE_RGB - white) * t)
    return np.rint(rgb).astype(np.uint8)


def png_data_url(image: np.ndarray) -> str:
    """A uint8 grayscale (h, w) or RGB (h, w, 3) array as a data:image/png;base64 URL."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def formula(n: int, f: int, p: float, s: int, n_out: int) -> str:
    """The output-size formula worked out, as docs/cnn.md and the layer table write it."""
    return f"floor(({n} + 2*{p:g} - {f}) / {s}) + 1 = {n_out}"


# --- building the answers -------------------------------------------------------------------


def layer_activations(row: dict[str, Any], maps: np.ndarray) -> LayerActivations:
    """One layer's row from explainer.json and its activations (h, w, c) for one image."""
    scaled, low, high = scale_maps(maps)
    cols = grid_columns(scaled.shape[-1])
    grid = tile_grid(scaled, cols, fill=MAP_GAP_VALUE)
    return LayerActivations(
        **{k: row[k] for k in ("layer", "output", "kind", "n_in", "f", "p", "s", "n_out")},
        channels=scaled.shape[-1],
        formula=formula(row["n_in"], row["f"], row["p"], row["s"], row["n_out"]),
        maps=Grid.of(png_data_url(grid), cols, scaled.shape[-1], scaled.shape[0], GAP),
        low=[round(float(v), 5) for v in low],
        high=[round(float(v), 5) for v in high],
    )


def filters_view(layer: str, kernels: np.ndarray, chain: dict[str, Any] | None = None) -> Filters:
    """The first conv layer's kernels (f, f, count) as a grid of diverging-colour tiles, and as
    numbers (with the chain to its feature maps, when explainer.json has it)."""
    kernels = np.asarray(kernels, np.float64)
    scale = float(np.abs(kernels).max())
    cols = grid_columns(kernels.shape[-1])
    grid = tile_grid(diverging_rgb(kernels, scale), cols, fill=FILTER_GAP_RGB)
    count = kernels.shape[-1]
    return Filters(
        layer=layer,
        f=kernels.shape[0],
        count=count,
        scale=scale,
        grid=Grid.of(png_data_url(grid), cols, count, kernels.shape[0], GAP),
        kernels=np.moveaxis(kernels, -1, 0).tolist(),
        chain=Chain(**chain) if chain else None,
    )


class Explainer:
    """The champion's explainer: uint8 (28, 28) pixels -> ExplainedImage."""

    def __init__(
        self, onnx_file: Path, description: dict[str, Any], class_names: list[str], model: ModelRef
    ) -> None:

        if description.get("format") != EXPLAINER_FORMAT:
            raise ValueError(
                f"explainer.json format {description.get('format')}: expected {EXPLAINER_FORMAT}"
            )
        # One intra-op thread: explaining is a learner's click, not traffic; it must not take
        # the cores /classify and /predict run on.
        self.runtime = OnnxClassifier(onnx_file, threads=1)
        self.layers: list[dict[str, Any]] = description["layers"]
        if len(self.runtime.session.get_outputs()) != len(self.layers) + 1:
            raise ValueError("explainer.onnx's outputs do not match explainer.json's layers")
        self.class_names = class_names
        self.model = model
        filters = description["filters"]
        self.filters = filters_view(
            filters["layer"], np.asarray(filters["values"]), filters.get("chain")
        )
        self.samples = Samples(
            samples=[
                Sample(
                    index=s["index"],
                    class_id=s["label"],
                    class_name=class_names[s["label"]],
                    image=png_data_url(check_images(np.asarray(s["pixels"], np.uint8))[0]),
                )
                for s in description["samples"]
            ]
        )
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="explain")

    def explain_now(
        self, pixels: np.ndarray, inverted: bool, colour: np.ndarray | None = None
    ) -> ExplainedImage:
        """The whole answer, computed in the calling thread."""
        *maps, proba = self.runtime.session.run(None, {self.runtime.input: pixels[None]})
        (prediction,) = predictions(proba, self.class_names, self.model)
        return ExplainedImage(
            **dict(prediction),
            inverted=inverted,
            pixels=pixels.tolist(),
            colour=None if colour is None else colour.tolist(),
            image=png_data_url(pixels),
            layers=[layer_activations(row, m[0]) for row, m in zip(self.layers, maps, strict=True)],
            filters=self.filters,
        )

    async def explain(
        self, pixels: np.ndarray, inverted: bool, colour: np.ndarray | None = None
    ) -> ExplainedImage:
        """explain_now in the explainer's own thread: the event loop keeps serving meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread, self.explain_now, pixels, inverted, colour)


class NoExplainer:
    """A champion promoted before register exported explainers: /explain answers 503."""

    samples = Samples(samples=[])

    async def explain(
        self, pixels: np.ndarray, inverted: bool, colour: np.ndarray | None = None
    ) -> ExplainedImage:
        raise InputError(
            503,
            "the served model has no explainer (promoted before register exported one): "
            "promote a new run to use /explain and /ui",
        )


def load_explainer(
    bento_model: Any, class_names: list[str], model: ModelRef
) -> Explainer | NoExplainer:
    """The explainer shipped in a BentoML model `register` saved, or NoExplainer."""
    metadata = bento_model.info.metadata
    if "explainer_onnx" not in metadata:
        return NoExplainer()
    description = json.loads(Path(bento_model.path_of(metadata["explainer_json"])).read_text())
    return Explainer(
        Path(bento_model.path_of(metadata["explainer_onnx"])), description, class_names, model
    )
