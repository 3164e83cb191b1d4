"""Turning untrusted request content into model input, or into a 4xx naming the problem."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.responses import JSONResponse

from pipeline.core.preprocess import image_to_colour_pixels, image_to_pixels

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # the only decoders PIL may use
MAX_PIXELS = 50_000_000  # width x height; a small file can declare a huge image


class InputError(ValueError):
    """A request the service cannot use: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self)}, status_code=self.status)


def open_image(data: bytes) -> Image.Image:
    """Decode a PNG/JPEG/WebP/BMP/GIF file fully (first frame of an animation)."""
    if not data:
        raise InputError(422, "image is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check follows
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise InputError(415, "image is not a PNG, JPEG, WebP, BMP or GIF file") from None
        except Image.DecompressionBombError as err:
            raise InputError(413, f"image is too large: {err}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise InputError(422, f"image header could not be read: {err}") from None
    if image.width * image.height > MAX_PIXELS:
        raise InputError(
            413, f"image is {image.width}x{image.height} pixels, more than {MAX_PIXELS:,} in total"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(
            422, f"{image.format} image could not be decoded (truncated or corrupt?): {err}"
        ) from None
    return image


def _unusable(image: Image.Image, err: Exception) -> InputError:
    return InputError(422, f"{image.format} image in mode {image.mode} is not usable: {err}")


def image_pixels(data: bytes, invert: bool | None) -> tuple[np.ndarray, bool]:
    """File bytes -> (uint8 (28, 28), inverted) through the shared preprocessing
    (invert=None: automatic)."""
    image = open_image(data)
    try:
        return image_to_pixels(image, invert=invert)
    except (OSError, ValueError) as err:
        raise _unusable(image, err) from None


def image_file_pixels(path: Path, invert: bool | None) -> tuple[np.ndarray, bool]:
    return image_pixels(path.read_bytes(), invert)


def image_file_pixels_and_colour(
    path: Path, invert: bool | None
) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """Like image_file_pixels, plus the colour version (28, 28, 3) of a colour image (else None)."""
    image = open_image(path.read_bytes())
    try:
        pixels, inverted = image_to_pixels(image, invert=invert)
        return pixels, inverted, image_to_colour_pixels(image, inverted)
    except (OSError, ValueError) as err:
        raise _unusable(image, err) from None


def check_count(n: int, limit: int) -> None:
    if n > limit:
        raise InputError(
            413, f"{n} images in one request; the limit is {limit} (serve.max_images_per_request)"
        )
