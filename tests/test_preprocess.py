"""The shared preprocessing on tiny images: any PIL image -> Fashion-MNIST-like 28x28 pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from image_cases import CASES, GOLDEN
from PIL import Image

from pipeline.core.preprocess import (
    ORIENTATIONS,
    fit_image,
    image_to_colour_pixels,
    image_to_pixels,
    source_box,
    to_8bit,
)
from pipeline.training.model import preprocessing_layers

pytestmark = pytest.mark.unit


def item(light_on_dark: bool = True) -> np.ndarray:
    """A 28x28 'item': a bright 10x16 block with a gradient, on black (or the negative)."""
    x = np.zeros((28, 28), np.uint8)
    x[6:22, 9:19] = np.linspace(120, 250, 10, dtype=np.uint8)
    return x if light_on_dark else 255 - x


def test_a_fashion_mnist_image_passes_through_unchanged():
    pixels, inverted = image_to_pixels(Image.fromarray(item()))
    assert inverted is False
    assert np.array_equal(pixels, item())


def test_a_light_background_is_inverted_unless_forced_off():
    negative = Image.fromarray(item(light_on_dark=False))
    auto, auto_inverted = image_to_pixels(negative)
    off, off_inverted = image_to_pixels(negative, invert=False)
    assert auto_inverted is True and np.array_equal(auto, item())
    assert off_inverted is False and np.array_equal(off, item(light_on_dark=False))
    on, on_inverted = image_to_pixels(Image.fromarray(item()), invert=True)
    assert on_inverted is True and np.array_equal(on, 255 - item())


def test_16_bit_images_are_scaled_not_clipped():
    sixteen = Image.fromarray(item().astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    pixels, _ = image_to_pixels(sixteen)
    assert np.array_equal(pixels, item())


def test_aspect_ratio_is_kept_and_the_image_centred():
    wide = np.full((10, 40), 255, np.uint8)  # 4:1 white bar
    pixels, inverted = image_to_pixels(Image.fromarray(wide), invert=False)
    rows = np.flatnonzero(pixels.max(axis=1) > 0)
    assert not inverted
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[:, 0].max() == 255 and pixels[:, -1].max() == 255  # full width
    assert 6 <= len(rows) <= 8 and rows[0] in (10, 11)  # 28 / 4 = 7 rows, centred


def test_transparent_pixels_count_as_white_background():
    rgba = np.zeros((28, 28, 4), np.uint8)  # fully transparent...
    rgba[6:22, 9:19] = (0, 0, 0, 255)  # ...around an opaque black item
    pixels, inverted = image_to_pixels(Image.fromarray(rgba, "RGBA"))
    assert inverted is True
    assert pixels[0, 0] == 0 and pixels[14, 14] == 255


def test_colour_pixels_are_fitted_like_the_grayscale_and_inverted_with_it():
    wide = np.zeros((20, 40, 3), np.uint8)  # 2:1, light background: auto-inverted
    wide[...] = (250, 240, 230)
    wide[5:15, 10:30] = (200, 20, 10)  # a red block
    image = Image.fromarray(wide, "RGB")
    gray, inverted = image_to_pixels(image)
    colour = image_to_colour_pixels(image, inverted)
    assert inverted is True and colour.shape == (28, 28, 3) and colour.dtype == np.uint8
    assert np.array_equal(colour[:7], np.zeros((7, 28, 3)))  # the same black bands as the gray
    assert np.array_equal(gray[:7], np.zeros((7, 28)))
    assert tuple(colour[14, 14]) == (255 - 200, 255 - 20, 255 - 10)  # inverted, channels kept
    assert abs(int(gray[14, 14]) - int(np.dot(colour[14, 14], (0.299, 0.587, 0.114)))) <= 1
    assert tuple(image_to_colour_pixels(image, False)[14, 14]) == (200, 20, 10)


def test_grayscale_images_have_no_colour_pixels():
    assert image_to_colour_pixels(Image.fromarray(item()), False) is None
    assert image_to_colour_pixels(Image.fromarray(item()).convert("LA"), False) is None
    palette = Image.fromarray(np.stack([item()] * 3, -1), "RGB").convert("P")
    assert image_to_colour_pixels(palette, False).shape == (28, 28, 3)


# JPEGs large enough to be decoded at a reduced scale by libjpeg (DCT scaling instead of a full
# decode and a box filter): measured at most 4 (pixels) and 5 (colour) of 255 on these cases.
JPEG_TOLERANCE = 6


@pytest.mark.parametrize("i", range(len(CASES)), ids=[case.name for case in CASES])
def test_ordinary_uploads_give_the_pixels_they_gave_before(i):
    """The bounded-memory preprocessing gives the pixels recorded from the whole-image one
    (tests/image_cases.py): identical for everything but a reduced-scale JPEG."""
    case, golden = CASES[i], np.load(GOLDEN)
    fitted = fit_image(Image.open(io.BytesIO(case.build())), case.invert, colour=case.colour)
    expected = [golden[f"{i}/pixels"]] + ([golden[f"{i}/colour"]] if case.colour else [])
    got = [fitted.pixels] + ([fitted.colour] if case.colour else [])
    assert fitted.inverted == bool(golden[f"{i}/inverted"])
    tolerance = JPEG_TOLERANCE if "JPEG" in case.name else 0
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and have.dtype == np.uint8
        assert np.abs(have.astype(int) - want).max() <= tolerance, case.name


@pytest.mark.parametrize("method", sorted(ORIENTATIONS.values()), ids=lambda m: m.name)
def test_a_band_of_the_upright_image_comes_from_its_source_box(method):
    """crop(source_box(box)).transpose(m) == transpose(m).crop(box): bands of an EXIF-rotated
    image are made upright without rotating the whole image."""
    rng = np.random.default_rng(method.value)
    image = Image.fromarray(rng.integers(0, 256, (23, 37), dtype=np.uint8))
    upright = image.transpose(method)
    w, h = upright.size
    for _ in range(20):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1)))
        part = image.crop(source_box(box, method, image.size)).transpose(method)
        assert np.array_equal(np.asarray(part), np.asarray(upright.crop(box))), box


def test_16_bit_values_round_to_the_nearest_8_bit_value():
    """Integer scaling equals round(v / 257) for every 16-bit value (and clips 32-bit ones)."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    assert np.array_equal(
        np.asarray(to_8bit(Image.fromarray(values))), np.round(values / 257).astype(np.uint8)
    )
    wide = np.array([[-5, 70_000, 257 * 100 + 128]], np.int32)
    assert np.asarray(to_8bit(Image.fromarray(wide))).tolist() == [[0, 255, 100]]


def test_model_input_layers_scale_pixels_to_unit_range_with_a_channel():
    import keras

    x = item()[None]
    for layer in preprocessing_layers():
        x = layer(x)
    x = keras.ops.convert_to_numpy(x)
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    assert x.max() == pytest.approx(250 / 255) and x.min() == 0.0
    np.testing.assert_allclose(x[0, ..., 0], item() / 255, rtol=1e-6)
