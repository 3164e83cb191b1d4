"""Untrusted uploads in-process: decoded within the memory budget, or refused with a 4xx."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from hostile_images import hostile_uploads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.core.params import load_params
from pipeline.core.preprocess import decode_bytes
from service.inputs import MB, InputError, fit_upload

pytestmark = pytest.mark.unit
BUDGET = int(load_params().serve.max_decode_mb * MB)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def png_header(width: int, height: int, colour_type: int = 6) -> bytes:
    """A PNG that declares width x height pixels (RGBA by default) but carries no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def outcome(data: bytes, colour: bool = False) -> tuple[int, object]:
    """(200, Fitted) or (the InputError's status, its message): nothing else may come out."""
    try:
        return 200, fit_upload(data, None, colour, BUDGET)
    except InputError as err:
        return err.status, str(err)


def test_an_image_declared_too_large_to_decode_is_refused_from_its_header():
    """196 MB decoded from a 57-byte file: 413 naming the limit, before any pixel is decoded."""
    status, message = outcome(png_header(7000, 7000))
    assert status == 413
    assert "7000x7000" in message and "serve.max_decode_mb" in message
    assert int(re.search(r"about ([\d,]+) MB", message)[1].replace(",", "")) >= 196


def test_the_budget_is_the_decoded_size_of_the_mode():
    """A grayscale image may be four times the pixels of an RGBA one; a big JPEG is counted at
    the scale it is decoded at; a progressive one with the coefficients libjpeg keeps."""
    side = 6000
    gray, rgba = Image.new("L", (side, side)), Image.new("RGBA", (side, side))
    assert decode_bytes(Image.open(io.BytesIO(encode(gray, "PNG")))) <= BUDGET
    assert decode_bytes(Image.open(io.BytesIO(encode(rgba, "PNG")))) > BUDGET
    photo = Image.new("RGB", (4000, 3000), (200, 100, 50))
    baseline = decode_bytes(Image.open(io.BytesIO(encode(photo, "JPEG"))))
    progressive = decode_bytes(Image.open(io.BytesIO(encode(photo, "JPEG", progressive=True))))
    assert baseline < 4000 * 3000 * 4 // 8  # decoded at 1/8 scale: 500x375 at 4 bytes a pixel
    assert progressive - baseline >= 2 * 4000 * 3000  # at least the luma coefficients, 2 bytes each
    assert outcome(encode(photo, "JPEG", progressive=True))[0] == 200


def test_a_12_megapixel_phone_photo_is_decoded_at_an_eighth():
    photo = Image.new("RGB", (4000, 3000), (30, 30, 30))
    status, fitted = outcome(encode(photo, "JPEG", quality=90), colour=True)
    assert status == 200
    assert fitted.pixels.shape == (28, 28) and fitted.colour.shape == (28, 28, 3)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(upload=hostile_uploads())
def test_valid_hostile_files_are_fitted_or_refused_with_a_4xx(upload):
    """Every mode, depth, size, frame count and orientation the formats allow reaches the
    preprocessing: a 28x28 image, or a 4xx naming the problem (too large to decode)."""
    for colour in (False, True):
        status, result = outcome(upload.data, colour)
        assert status == 200 or 400 <= status < 500, upload.what
        if status == 200:
            assert result.pixels.shape == (28, 28) and result.pixels.dtype == np.uint8, upload.what
            assert result.colour is None or result.colour.shape == (28, 28, 3), upload.what
        else:
            assert status == 413 and "serve.max_decode_mb" in result, (upload.what, result)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=2000),
        st.tuples(
            st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]),
            st.integers(0, 10**6),
            st.binary(max_size=8),
        ),
    )
)
def test_any_upload_is_decoded_or_refused_with_a_4xx(data):
    """Random bytes, and real images cut short or with bytes overwritten, never escape as a 500."""
    if isinstance(data, tuple):
        fmt, seed, patch = data
        rng = np.random.default_rng(seed)
        valid = encode(rng.integers(0, 256, (40, 30), dtype=np.uint8), fmt)
        at = int(rng.integers(0, len(valid)))
        data = valid[:at] + patch + valid[at + len(patch) :] if seed % 2 else valid[:at]
    status, result = outcome(data)
    if status == 200:
        assert result.pixels.shape == (28, 28) and result.pixels.dtype == np.uint8
    else:
        assert 400 <= status < 500
