"""ASGI middleware in front of POST /classify, /explain and /predict: method, content type, size,
multipart.

BentoML parses a request body before the API method runs and answers 500 to what its parsers
do not expect: a malformed multipart body, an `image` field sent as text (which it would fetch
as a URL), a non-UTF-8 file in a text field. So the body is read here first, at most
`serve.max_upload_bytes` of it, checked, and replayed to BentoML; bad requests get a 4xx
with {"error": ...} and never reach the service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import settings
from service.inputs import InputError

# Route -> the one request content type it takes.
ROUTES = {
    "/classify": b"multipart/form-data",
    "/explain": b"multipart/form-data",
    "/predict": b"application/json",
}
HINTS = {
    "/classify": "send one image file as multipart field `image`, e.g. curl -F image=@shoe.png",
    "/explain": "send one image file as multipart field `image`, e.g. curl -F image=@shoe.png",
    "/predict": 'send JSON {"images": [...]} with Content-Type: application/json',
}
IMAGE_PART_TYPES = ("image/", "application/octet-stream")


class _Disconnected(Exception):
    pass


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        try:
            body = await self._checked_body(path, Headers(scope=scope), receive)
        except InputError as err:
            await err.response()(scope, receive, send)
            return
        except _Disconnected:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

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


async def read_body(headers: Headers, receive: Receive, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = headers.get("content-length", "")
    too_big = InputError(
        413, f"request body exceeds the limit of {limit:,} bytes (serve.max_upload_bytes)"
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_big
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
