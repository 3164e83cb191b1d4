"""Security headers on every HTTP answer, and an optional bearer token in front of the prediction
and feedback routes: pure ASGI middleware.

`ApiSecurity` is the outermost of the service's own middleware (service/service.py registers it
before `RequestGuard`): a request to a route of PROTECTED_ROUTES without the right token is
answered 401 from its headers alone, before the guard reads any of its body, and every answer
from inside, the guard's 4xx and 503 included, gets the headers. BentoML's own outer layers (its
timeout's 504, its max-concurrency 503) answer outside it, so theirs do not.

The token is FASHION_MNIST_API_TOKEN, or the content of the file FASHION_MNIST_API_TOKEN_FILE
names (a mounted Kubernetes Secret); with neither set, the API is open. `api_token()` reads it
when service/service.py is imported, which `bentoml serve` itself does before it starts any
worker: a bad setting has to stop the server there, because BentoML restarts a worker that fails
to start for ever (measured with BentoML 1.4.39), so an error in a worker would never stop it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping

from prometheus_client import Counter
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# The routes that need the token when one is set: prediction and feedback. Probes (/readyz,
# /livez), /metrics, /metadata, /samples, the page /ui and the OpenAPI docs stay open.
PROTECTED_ROUTES = frozenset({"/classify", "/predict", "/explain", "/feedback"})
TOKEN_ENV = "FASHION_MNIST_API_TOKEN"
TOKEN_FILE_ENV = "FASHION_MNIST_API_TOKEN_FILE"
MAX_TOKEN_BYTES = 4096  # a token file larger than this is the wrong file
REALM = 'realm="fashion-classifier"'

# The page /ui and every API answer: only this origin's files and requests, PNG data: URLs for
# the pictures the API returns (and the page's empty favicon), no plugins, no <base>, no form
# posts, no framing. The page has no inline script or style: it sets styles through the CSSOM,
# which style-src does not restrict.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
# BentoML's OpenAPI page at "/": Swagger UI from /static_content/ (scripts and styles of this
# origin). Its HTML also has inline `style` attributes (the GitHub corner), so inline style
# attributes, and no more, are allowed. Its inline script, which loads Google Tag Manager from
# googletagmanager.com, stays blocked: the page renders without it and calls no other host.
OPENAPI_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src-attr 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
OPENAPI_PAGE = "/"
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Nothing here reads Referer, and the page links only to this origin: send no referrer at
    # all rather than the browsers' default strict-origin-when-cross-origin.
    "Referrer-Policy": "no-referrer",
}

UNAUTHORIZED = Counter(
    "fashion_unauthorized_requests",
    "Requests to a protected route refused for a missing or wrong bearer token",
    ["reason"],
)


def api_token(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The bearer token the protected routes require, or None when neither FASHION_MNIST_API_TOKEN
    nor FASHION_MNIST_API_TOKEN_FILE is set (the API is open). ValueError naming the variable
    when both are set, or when the token is empty, unreadable or not sendable in a header."""
    value, path = environ.get(TOKEN_ENV), environ.get(TOKEN_FILE_ENV)
    if value is not None and path is not None:
        raise ValueError(f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both")
    if path is not None:
        name = TOKEN_FILE_ENV
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_TOKEN_BYTES + 1)
        except OSError as err:
            raise ValueError(
                f"{name}={path!r}: cannot read the token file: {err.strerror or err}"
            ) from None
        if len(raw) > MAX_TOKEN_BYTES:
            raise ValueError(f"{name}={path!r}: over {MAX_TOKEN_BYTES} bytes, not a token file")
        where = f"{name}={path!r}: the file"
    elif value is not None:
        name, raw, where = TOKEN_ENV, value.encode("utf-8", "surrogateescape"), TOKEN_ENV
    else:
        return None
    token = raw.strip()
    if not token:
        raise ValueError(
            f"{where} is empty: put the token in it, or unset {name} to leave the API open"
        )
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise ValueError(
            f"{where} holds characters a client cannot send in an Authorization header: use "
            "printable ASCII without spaces (e.g. the output of `openssl rand -hex 32`)"
        )
    return token


def content_security_policy(path: str) -> str:
    """The Content-Security-Policy of the answer to `path`."""
    return OPENAPI_POLICY if path == OPENAPI_PAGE else PAGE_POLICY


def needs_token(scope: Scope) -> bool:
    """Whether the request is to a protected route. CORS preflights (OPTIONS) never carry
    credentials, so they pass; a trailing slash does not make a route another one."""
    path = scope["path"].rstrip("/") or "/"
    return path in PROTECTED_ROUTES and scope["method"] != "OPTIONS"


class ApiSecurity:
    """Adds the security headers to every HTTP answer; with a token, refuses requests to
    PROTECTED_ROUTES without `Authorization: Bearer <token>` (401, before any body is read)."""

    def __init__(self, app: ASGIApp, token: bytes | None = None) -> None:
        self.app = app
        # Compared as SHA-256 digests, so that the comparison takes the same time whatever the
        # length of what was sent (hmac.compare_digest is constant-time for equal lengths).
        self._digest = None if token is None else hashlib.sha256(token).digest()
        if token is not None:
            logger.info("a bearer token is required on %s", ", ".join(sorted(PROTECTED_ROUTES)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = content_security_policy(scope["path"])
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in COMMON_HEADERS.items():
                    headers[name] = value
                headers["Content-Security-Policy"] = policy
            await send(message)

        if self._digest is not None and needs_token(scope):
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
                return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Starlette's own 500 would be sent outside this middleware, without the headers.
            if not started:
                error = JSONResponse({"error": "internal server error"}, status_code=500)
                await error(scope, receive, send_with_headers)
            raise

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        """The 401 for a request without the right bearer token; None when it has it."""
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        route = f"{scope['method']} {scope['path']}"
        how = (
            "send the header `Authorization: Bearer <token>`, with the token the service was "
            f"started with ({TOKEN_ENV} or {TOKEN_FILE_ENV})"
        )
        scheme, _, credentials = values[0].partition(b" ") if len(values) == 1 else (b"", b"", b"")
        if scheme.lower() != b"bearer" or not credentials.strip():
            reason, challenge = "missing", f"Bearer {REALM}"
            if len(values) > 1:
                message = f"{route}: {len(values)} Authorization headers; send one. To authenticate, {how}"
            elif values:
                message = f"{route} takes a bearer token, not this Authorization scheme: {how}"
            else:
                message = f"{route} needs a bearer token: {how}"
        else:
            sent = hashlib.sha256(credentials.strip()).digest()
            if hmac.compare_digest(sent, self._digest):
                return None
            reason, challenge = "wrong", f'Bearer {REALM}, error="invalid_token"'
            message = f"{route}: the bearer token is wrong; {how}"
        UNAUTHORIZED.labels(reason).inc()
        return JSONResponse(
            {"error": message}, status_code=401, headers={"WWW-Authenticate": challenge}
        )
