"""Turning untrusted request content into model input, or into a 4xx naming the problem.

Decoding an upload is bounded twice (docs/serving.md, "Uploads in bounded memory"): an image
whose decoding would need more than serve.max_decode_mb is refused with 413 from its header
alone, before a pixel is decoded (a 200 KB PNG can declare 7000x7000 RGBA, 196 MB decoded); and a
worker decodes at most serve.decode_threads uploads at once, in a pool of its own (asyncio's
default pool would run min(32, CPUs + 4), counting the node's CPUs, not the pod's). The
preprocessing itself (pipeline/core/preprocess.py) never copies a large image whole.
"""

from __future__ import annotations

import asyncio
import io
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError
from prometheus_client import Counter
from starlette.responses import JSONResponse

from pipeline.core.preprocess import Fitted, decode_bytes, fit_image, shrink_on_load

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # the only decoders PIL may use
# PNG text chunks (tEXt/zTXt/iTXt) kept per image: Pillow's default allows 64 MB of them.
MAX_PNG_TEXT_BYTES = 1_000_000
MB = 1_000_000
RETRY_AFTER_S = 1  # what a shed request is told: a second is many answers here

SHED = Counter(
    "fashion_requests_shed",
    "Prediction requests answered 503 because the worker was busy: in_flight or body_bytes "
    "(refused on arrival: service/admission.py), decode_wait or model_wait (admitted, then "
    "waited over serve.request_timeout_s)",
    ["reason"],
)


class InputError(ValueError):
    """A request the service cannot use: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self)}, status_code=self.status, headers=self.headers)


class Busy(InputError):
    """503 with Retry-After: this worker cannot take the request now (counted by `reason`)."""

    def __init__(self, reason: str, message: str) -> None:
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        super().__init__(503, f"busy: {message}; retry in {RETRY_AFTER_S} s", retry)
        self.reason = reason

    def response(self) -> JSONResponse:
        SHED.labels(self.reason).inc()
        return super().response()


def open_image(data: bytes, max_decode_bytes: int) -> Image.Image:
    """An upload's header read, nothing decoded yet: a PNG/JPEG/WebP/BMP/GIF file (first frame
    of an animation) whose decoding fits in `max_decode_bytes`, or an InputError."""
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
    if (need := decode_bytes(image)) > max_decode_bytes:
        raise InputError(
            413,
            f"image is {image.width}x{image.height} pixels ({image.format}, {image.mode}): "
            f"decoding it would take about {need / MB:,.0f} MB, more than the "
            f"{max_decode_bytes / MB:,.0f} MB allowed (serve.max_decode_mb); send it smaller "
            "(the model sees 28x28 pixels)",
        )
    return image


def fit_upload(data: bytes, invert: bool | None, colour: bool, max_decode_bytes: int) -> Fitted:
    """File bytes -> the model's 28x28 input (and its colour version when asked for) through the
    shared preprocessing; invert=None: automatic."""
    image = open_image(data, max_decode_bytes)
    try:
        shrink_on_load(image)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(
            422, f"{image.format} image could not be decoded (truncated or corrupt?): {err}"
        ) from None
    try:
        return fit_image(image, invert, colour)
    except (OSError, ValueError) as err:
        raise InputError(
            422, f"{image.format} image in mode {image.mode} is not usable: {err}"
        ) from None


class Decoder:
    """One worker's uploads decoded in a pool of `threads`: more wait their turn, at most
    `max_wait` seconds (then Busy: 503). A request cancelled while it waits (its client gone,
    BentoML's timeout) is never decoded."""

    def __init__(self, threads: int, max_decode_mb: float, max_wait: float) -> None:
        # Process-wide, set here rather than at import: the limit is the service's choice.
        PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_TEXT_BYTES
        self.max_decode_bytes = int(max_decode_mb * MB)
        self.max_wait = max_wait
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    async def fit(self, path: Path, invert: bool | None, colour: bool = False) -> Fitted:
        """The upload saved at `path` fitted to the model, or an InputError."""
        loop = asyncio.get_running_loop()
        queued = time.monotonic()
        return await loop.run_in_executor(self.pool, self._fit_file, path, invert, colour, queued)

    def _fit_file(self, path: Path, invert: bool | None, colour: bool, queued: float) -> Fitted:
        if time.monotonic() - queued > self.max_wait:
            raise Busy(
                "decode_wait",
                f"waited over {self.max_wait:g} s for a decoder (serve.request_timeout_s)",
            )
        return fit_upload(path.read_bytes(), invert, colour, self.max_decode_bytes)


def check_count(n: int, limit: int) -> None:
    if n > limit:
        raise InputError(
            413, f"{n} images in one request; the limit is {limit} (serve.max_images_per_request)"
        )
