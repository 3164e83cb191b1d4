"""ASGI middleware in front of POST /classify, /explain, /predict and /feedback: load shedding, method,
content type, size, multipart; and a request whose client goes away is cancelled.

Load shedding (docs/serving.md, "Under overload"; service/admission.py): a request beyond what
the worker admits now is answered 503 at once, with Retry-After, and counted in /metrics, before
its body is read. BentoML's own `traffic.max_concurrency` answers a bare 429 without
Retry-After, counts nothing, and counts the page's static files too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Counter, Gauge
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import settings
from service.admission import Admission
from service.inputs import InputError

# Route -> the one request content type it takes.
ROUTES = {
    "/classify": b"multipart/form-data",
    "/explain": b"multipart/form-data",
    "/predict": b"application/json",
    "/feedback": b"application/json",
}
HINTS = {
    "/classify": "send one image file as multipart field `image`, e.g. curl -F image=@shoe.png",
    "/explain": "send one image file as multipart field `image`, e.g. curl -F image=@shoe.png",
    "/predict": 'send JSON {"images": [...]} with Content-Type: application/json',
    "/feedback": 'send JSON {"items": [{"prediction_id": "...", "label": "Coat"}]} with '
    "Content-Type: application/json",
}
IMAGE_PART_TYPES = ("image/", "application/octet-stream")
IN_FLIGHT = Gauge(
    "fashion_requests_in_flight",
    "Prediction requests in progress (admitted and not yet answered), summed over live workers",
    multiprocess_mode="livesum",
)
CLIENT_GONE = Counter(
    "fashion_requests_client_gone",
    "Prediction requests cancelled because their client disconnected before the answer",
)


class _Disconnected(Exception):
    pass


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        serve = settings.serve_params()
        self.admission = Admission(
            serve.min_in_flight,
            serve.max_in_flight,
            int(serve.max_in_flight_mb * 1e6),
            serve.queue_target_s,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in ROUTES:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":  # Starlette's own answer is a plain-text 405
            err = InputError(405, f"{scope['method']} {path}: use POST; {HINTS[path]}")
            response = err.response()
            response.headers["Allow"] = "POST"
            await response(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = settings.serve_params().max_upload_bytes
        reserved = declared_size(headers, limit)
        if reserved > limit:  # refused unread, before it could take a place
            await too_big(limit).response()(scope, receive, send)
            return
        if busy := self.admission.refuse(reserved):
            await busy.response()(scope, receive, send)
            return
        IN_FLIGHT.inc()
        answered = False
        try:
            answered = await self._checked(scope, receive, send, path, headers)
        finally:
            IN_FLIGHT.dec()
            self.admission.release(reserved, answered)

    async def _checked(
        self, scope: Scope, receive: Receive, send: Send, path: str, headers: Headers
    ) -> bool:
        """Check the body, then run the app on it; whether the client got an answer."""
        try:
            body = await self._checked_body(path, headers, receive)
        except InputError as err:
            await err.response()(scope, receive, send)
            return True
        except _Disconnected:
            return False
        replayed = False
        answered = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def sent(message: Message) -> None:
            nonlocal answered
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        async def client_gone() -> None:
            # After the body, all the server can still say is that the client disconnected
            # (uvicorn also says so once the answer is complete).
            while (await receive())["type"] != "http.disconnect":
                pass

        app = asyncio.ensure_future(self.app(scope, replay, sent))
        watch = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({app, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not answered:
                CLIENT_GONE.inc()  # nobody waits for the answer: stop working on it
                app.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await app
                return False
            await app
            return True
        finally:
            watch.cancel()
            app.cancel()  # when BentoML's timeout cancels us: cancel what we started

    async def _checked_body(self, path: str, headers: Headers, receive: Receive) -> bytes:
        ctype, _ = parse_options_header(headers.get("content-type", ""))
        expected = ROUTES[path]
        if ctype != expected and not (ctype == b"" and path == "/predict"):
            got = headers.get("content-type") or "no content type"
            raise InputError(
                415, f"POST {path} takes {expected.decode()}, got {got}: {HINTS[path]}"
            )
        body = await read_body(headers, receive, settings.serve_params().max_upload_bytes)
        if expected == b"multipart/form-data":
            await check_form(headers, body, HINTS[path])
        return body


def declared_size(headers: Headers, limit: int) -> int:
    """The body size a request declares (Content-Length), or `limit` when it declares none."""
    declared = headers.get("content-length", "")
    return int(declared) if declared.isdigit() else limit


def too_big(limit: int) -> InputError:
    return InputError(
        413, f"request body exceeds the limit of {limit:,} bytes (serve.max_upload_bytes)"
    )


async def read_body(headers: Headers, receive: Receive, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    if declared_size(headers, limit) > limit:
        raise too_big(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_big(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def check_form(headers: Headers, body: bytes, hint: str = HINTS["/classify"]) -> None:
    """The multipart body parses and has exactly one `image` file of an image (or unknown) type."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(headers, stream()).parse()
    except MultiPartException as err:
        raise InputError(400, f"malformed multipart body: {err.message}") from None
    try:
        images = form.getlist("image")
        if not images:
            raise InputError(400, f"no `image` field: {hint}")
        if len(images) > 1:
            raise InputError(400, f"{len(images)} `image` fields; send one image per request")
        image = images[0]
        if not isinstance(image, UploadFile):
            raise InputError(400, f"`image` must be a file upload, not a text field: {hint}")
        part_type = (image.content_type or "application/octet-stream").lower()
        if not part_type.startswith(IMAGE_PART_TYPES):
            raise InputError(415, f"`image` has content type {part_type}; expected an image file")
        for key, value in form.multi_items():
            if key != "image" and isinstance(value, UploadFile):
                raise InputError(400, f"field `{key}` must be a text field, not a file")
    finally:
        await form.close()
