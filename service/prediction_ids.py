"""Prediction ids: each answer's id is a signed receipt that carries the answer with it.

An id holds the 28x28 pixels the model saw (zlib-compressed), the model version, the class and
confidence it answered, and when; HMAC-SHA256 signs it. POST /feedback takes it back in place of
the pixels: any worker of any pod can check it without shared state, and the service keeps no
input to honour it (a feedback shard is the one place an input is stored). Ids are about 300-700
characters; they expire after serve.feedback.id_ttl_hours.

The key: FASHION_MNIST_FEEDBACK_KEY, or the file FASHION_MNIST_FEEDBACK_KEY_FILE names (a
mounted Secret); else a random key created once in the records directory (so the workers and pods
that share that directory share it); else, without a records directory, one per process (an id
is then only accepted by the worker that gave it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import numpy as np

from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from service.inputs import InputError

FORMAT = 1
KEY_ENV = "FASHION_MNIST_FEEDBACK_KEY"
KEY_FILE_ENV = "FASHION_MNIST_FEEDBACK_KEY_FILE"
KEY_FILE = ".prediction-id-key"  # in the records directory
_HEAD = struct.Struct(">BIBH")  # format, issued (Unix s), class, confidence (1/65535)
_SIGNATURE = 16  # bytes of the HMAC kept


@dataclass(frozen=True)
class Receipt:
    """What a prediction id says: the answer, for these pixels, from this model, at that time."""

    pixels: np.ndarray  # uint8 (28, 28)
    model_version: str
    predicted: int
    confidence: float
    issued: int  # Unix seconds


def load_key(records_dir: Path | None) -> bytes:
    """The signing key (see the module docstring for where it comes from)."""
    if value := os.environ.get(KEY_ENV):
        return value.encode()
    if path := os.environ.get(KEY_FILE_ENV):
        try:
            key = Path(path).read_bytes().strip()
        except OSError as err:
            raise RuntimeError(f"{KEY_FILE_ENV}={path}: cannot read it: {err.strerror}") from None
        if not key:
            raise RuntimeError(f"{KEY_FILE_ENV}={path}: the file is empty")
        return key
    if records_dir is None:
        return secrets.token_bytes(32)
    records_dir.mkdir(parents=True, exist_ok=True)
    final = records_dir / KEY_FILE
    if not final.exists():
        # Written whole under a temporary name, then linked: of several workers starting at
        # once, one key wins and every worker reads that one.
        tmp = records_dir / f".{KEY_FILE}.{os.getpid()}"
        tmp.write_bytes(secrets.token_hex(32).encode())
        tmp.chmod(0o600)
        try:
            os.link(tmp, final)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return final.read_bytes()


class PredictionIds:
    """Issues and checks prediction ids with one key."""

    def __init__(self, key: bytes, ttl_seconds: float) -> None:
        self.key = key
        self.ttl = ttl_seconds

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, sha256).digest()[:_SIGNATURE]

    def issue(self, receipt: Receipt) -> str:
        version = receipt.model_version.encode()[:255]
        payload = (
            _HEAD.pack(FORMAT, receipt.issued, receipt.predicted, round(receipt.confidence * 65535))
            + bytes([len(version)])
            + version
            + zlib.compress(np.ascontiguousarray(receipt.pixels, np.uint8).tobytes(), 9)
        )
        return base64.urlsafe_b64encode(payload + self._sign(payload)).rstrip(b"=").decode()

    def check(self, prediction_id: str, now: float) -> Receipt:
        """The receipt an id carries, or an InputError: malformed, not issued here, expired."""
        try:
            padded = prediction_id + "=" * (-len(prediction_id) % 4)
            raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise InputError(400, "prediction_id is not a prediction id (not base64url)") from None
        payload, signature = raw[:-_SIGNATURE], raw[-_SIGNATURE:]
        if len(payload) < _HEAD.size + 1 or not hmac.compare_digest(signature, self._sign(payload)):
            raise InputError(
                422,
                "prediction_id was not issued by this service (or its key has changed since): "
                "send the image's pixels instead",
            )
        version, issued, predicted, confidence = _HEAD.unpack_from(payload)
        n = payload[_HEAD.size]
        model_version = payload[_HEAD.size + 1 : _HEAD.size + 1 + n].decode()
        pixels = np.frombuffer(zlib.decompress(payload[_HEAD.size + 1 + n :]), np.uint8)
        if version != FORMAT or predicted >= NUM_CLASSES or pixels.size != IMAGE_SIZE**2:
            raise InputError(422, "prediction_id is of a format this service does not read")
        if now - issued > self.ttl:
            hours = (now - issued) / 3600
            raise InputError(
                410,
                f"prediction_id expired: issued {hours:,.1f} h ago, accepted for "
                f"{self.ttl / 3600:g} h (serve.feedback.id_ttl_hours); send the pixels instead",
            )
        image = pixels.reshape(IMAGE_SIZE, IMAGE_SIZE)
        return Receipt(image, model_version, predicted, confidence / 65535, issued)
