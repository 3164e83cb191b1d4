"""service/security.py on a small Starlette app: the token settings, the headers on every kind of
answer, the 401s and what passes. The real service behind it is tests/test_security.py's."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from service import security
from service.security import (
    OPENAPI_POLICY,
    PAGE_POLICY,
    PROTECTED_ROUTES,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    ApiSecurity,
    api_token,
)

pytestmark = pytest.mark.unit

TOKEN = b"s3cret-Token_0123456789"


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"read": len(await request.body())})


class Client:
    """Requests to an ASGI app in this process, one event loop per request."""

    def __init__(self, asgi) -> None:
        self.asgi = asgi

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.asgi, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def options(self, path: str, **kwargs) -> httpx.Response:
        return self.request("OPTIONS", path, **kwargs)


def app(token: bytes | None) -> Client:
    routes = [Route(p, echo, methods=["POST"]) for p in sorted(PROTECTED_ROUTES)]
    routes += [
        Route(p, lambda _: PlainTextResponse("ok"))
        for p in ("/", "/readyz", "/livez", "/metrics", "/metadata", "/ui/", "/samples")
    ]
    routes_app = Starlette(routes=routes)

    async def inner(scope, receive, send):
        # In the service, Starlette's error handler is outside every middleware: what raises
        # behind ApiSecurity (a bug in the guard, say) passes through it.
        if scope["type"] == "http" and scope["path"] == "/boom":
            raise RuntimeError("a bug behind the middleware")
        await routes_app(scope, receive, send)

    return Client(ApiSecurity(inner, token=token))


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("fashion_unauthorized_requests_total", {"reason": reason})
    return value or 0.0


# --- the token's settings -------------------------------------------------------------------


def test_no_token_set_leaves_the_api_open():
    assert api_token({}) is None
    client = app(None)
    assert all(client.post(p, content=b"x").status_code == 200 for p in PROTECTED_ROUTES)


def test_the_token_comes_from_the_variable_or_the_file_a_secret_mounts(tmp_path):
    assert api_token({TOKEN_ENV: TOKEN.decode()}) == TOKEN
    secret = tmp_path / "token"
    secret.write_bytes(TOKEN + b"\n")  # `kubectl create secret` keeps a file's trailing newline
    assert api_token({TOKEN_FILE_ENV: str(secret)}) == TOKEN


@pytest.mark.parametrize(
    ("content", "names", "problem"),
    [
        (None, TOKEN_FILE_ENV, "cannot read the token file: No such file"),
        (b"", TOKEN_FILE_ENV, "is empty"),
        (b" \n\t\n", TOKEN_FILE_ENV, "is empty"),
        (b"two words", TOKEN_FILE_ENV, "printable ASCII without spaces"),
        ("jeton-\u00e9t\u00e9".encode(), TOKEN_FILE_ENV, "printable ASCII without spaces"),
        (b"\xff\xfe", TOKEN_FILE_ENV, "printable ASCII without spaces"),
        (b"x" * 5000, TOKEN_FILE_ENV, "over 4096 bytes"),
    ],
)
def test_a_bad_token_file_is_refused_naming_the_variable(tmp_path, content, names, problem):
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as err:
        api_token({TOKEN_FILE_ENV: str(path)})
    assert str(err.value).startswith(f"{names}={str(path)!r}")


def test_an_unreadable_file_a_directory_an_empty_variable_and_both_at_once_are_refused(tmp_path):
    secret = tmp_path / "token"
    secret.write_bytes(TOKEN)
    secret.chmod(0)
    if os.geteuid() != 0:  # root reads a file whatever its mode
        with pytest.raises(ValueError, match=f"{TOKEN_FILE_ENV}=.*Permission denied"):
            api_token({TOKEN_FILE_ENV: str(secret)})
    with pytest.raises(ValueError, match=f"{TOKEN_FILE_ENV}=.*cannot read the token file"):
        api_token({TOKEN_FILE_ENV: str(tmp_path)})
    with pytest.raises(ValueError, match=f"^{TOKEN_ENV} is empty.*unset {TOKEN_ENV}"):
        api_token({TOKEN_ENV: ""})
    with pytest.raises(ValueError, match=f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both"):
        api_token({TOKEN_ENV: "a", TOKEN_FILE_ENV: str(secret)})


# --- headers --------------------------------------------------------------------------------


def test_every_answer_carries_the_headers_the_openapi_page_its_own_policy():
    client = app(TOKEN)
    answers = {
        "ok": client.get("/metadata"),
        "page": client.get("/ui/"),
        "not found": client.get("/nowhere"),
        "wrong method": client.put("/metadata"),
        "401": client.post("/predict", content=b"{}"),
        "500": client.get("/boom"),
    }
    assert answers["not found"].status_code == 404 and answers["wrong method"].status_code == 405
    assert answers["500"].status_code == 500
    assert answers["500"].json() == {"error": "internal server error"}
    for name, resp in answers.items():
        assert resp.headers["x-content-type-options"] == "nosniff", name
        assert resp.headers["referrer-policy"] == "no-referrer", name
        assert resp.headers["content-security-policy"] == PAGE_POLICY, name
    assert client.get("/").headers["content-security-policy"] == OPENAPI_POLICY
    for policy in (PAGE_POLICY, OPENAPI_POLICY):
        directives = dict(d.split(" ", 1) for d in policy.split("; "))
        assert directives["frame-ancestors"] == "'none'" and directives["default-src"] == "'self'"
        assert "unsafe-eval" not in policy and "script-src" not in directives  # scripts: 'self'
    assert "unsafe-inline" not in PAGE_POLICY


# --- the token ------------------------------------------------------------------------------


def test_protected_routes_need_the_token_and_say_how_to_send_it():
    client = app(TOKEN)
    missing, wrong = refused("missing"), refused("wrong")
    for path in sorted(PROTECTED_ROUTES):
        none = client.post(path, content=b"{}")
        assert none.status_code == 401
        assert none.headers["www-authenticate"] == 'Bearer realm="fashion-classifier"'
        assert "Authorization: Bearer <token>" in none.json()["error"]
        assert none.json()["error"].startswith(f"POST {path} needs a bearer token")
        bad = client.post(path, content=b"{}", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "the bearer token is wrong" in bad.json()["error"]
        assert bad.headers["www-authenticate"].endswith('error="invalid_token"')
        good = client.post(
            path, content=b"{}", headers={"Authorization": f"Bearer {TOKEN.decode()}"}
        )
        assert good.status_code == 200 and good.json() == {"read": 2}
    assert refused("missing") - missing == refused("wrong") - wrong == len(PROTECTED_ROUTES)

    token = TOKEN.decode()
    cases = {  # header(s) -> status
        (f"bearer {token}",): 200,  # the scheme is case-insensitive (RFC 7235)
        (f"Bearer  {token} ",): 200,
        (f"Basic {token}",): 401,
        ("Bearer",): 401,
        ("Bearer ",): 401,
        (f"Bearer {token}x",): 401,
        (f"Bearer {token[:-1]}",): 401,
        (f"Bearer {token}", f"Bearer {token}"): 401,  # two headers: ambiguous
    }
    for values, status in cases.items():
        headers = [("authorization", v) for v in values]
        resp = client.post("/classify", content=b"", headers=headers)
        assert resp.status_code == status, (values, resp.text)
    two = client.post("/classify", headers=[("authorization", f"Bearer {token}")] * 2)
    assert "2 Authorization headers" in two.json()["error"]
    basic = client.post("/classify", headers={"Authorization": "Basic eDp5"})
    assert "not this Authorization scheme" in basic.json()["error"]
    # a trailing slash is the same route; CORS preflights carry no credentials
    assert client.post("/classify/", content=b"").status_code == 401
    assert client.options("/classify").status_code != 401


def test_probes_metrics_metadata_and_the_page_stay_open():
    client = app(TOKEN)
    for path in ("/readyz", "/livez", "/metrics", "/metadata", "/ui/", "/samples", "/"):
        assert client.get(path).status_code == 200, path


def test_the_token_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    client = app(TOKEN)
    for sent in ("x", TOKEN.decode(), "y" * 500):
        client.post("/predict", headers={"Authorization": f"Bearer {sent}"})
    # digests of equal length, whatever was sent: the time does not tell how long the token is
    assert calls == [(32, 32)] * 3


def test_a_refused_request_is_answered_before_its_body_is_read():
    inner_called = []

    async def inner(scope, receive, send):
        inner_called.append(scope["path"])

    received: list[str] = []
    sent: list[dict] = []

    async def receive() -> dict:
        received.append("receive")
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/explain",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
        "query_string": b"",
    }
    asyncio.run(ApiSecurity(inner, token=TOKEN)(scope, receive, send))
    assert received == [] and inner_called == []
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401
    names = {k for k, _ in sent[0]["headers"]}
    assert {b"www-authenticate", b"content-security-policy", b"x-content-type-options"} <= names
