"""Who may use the server (runtime/server/guard.py), on a stand-in app: the probe's cross-site and rebinding requests
are refused before any route runs; local pages, programs and allowed sites get through."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

pytest.importorskip("starlette")
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgemm.runtime.server.app import page_policy
from edgemm.runtime.server.guard import Access, Guard

CHAT = "/v1/chat/completions"
BODY = '{"model": "x", "messages": [{"role": "user", "content": "hi"}]}'


@dataclass
class Reply:
    status_code: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """Calls an ASGI app as uvicorn would, one HTTP request at a time."""

    def __init__(self, app):
        self.app = app

    def request(self, method: str, path: str, content: str = "", headers: dict | None = None) -> Reply:
        headers = {"Host": "127.0.0.1:8000", **(headers or {})}
        body = content.encode()
        if body and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "scheme": "http",
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "asgi": {"version": "3.0"},
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items() if v is not None],
        }
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        asyncio.run(self.app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        got = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return Reply(
            start["status"], got, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        )

    def post(self, path, content="", headers=None):
        return self.request("POST", path, content, headers)

    def get(self, path, headers=None):
        return self.request("GET", path, "", headers)

    def options(self, path, headers=None):
        return self.request("OPTIONS", path, "", headers)


def _client(access: Access | None = None, cors: bool = False) -> tuple[Client, list]:
    ran = []

    async def route(request):
        ran.append(request.url.path)
        return JSONResponse({"ok": True})

    paths = [CHAT, "/v1/assistant", "/health", "/"]
    access = access or Access()
    app = Guard(Starlette(routes=[Route(p, route, methods=["GET", "POST"]) for p in paths]), access)
    if cors:
        app = CORSMiddleware(app, allow_origins=list(access.allow_origins), allow_methods=["GET", "POST"])
    return Client(app), ran


def _post(client, path=CHAT, content=BODY, **headers):
    headers.setdefault("Content-Type", "application/json")
    return client.post(path, content=content, headers=headers)


def test_simple_browser_requests_are_refused_by_media_type():
    client, ran = _client()
    text = _post(client, **{"Content-Type": "text/plain"})
    assert text.status_code == 415 and text.json()["error"]["code"] == "unsupported_media_type"
    form = _post(
        client, "/v1/assistant", "session=abcdefgh&text=hi", **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415 and "multipart/form-data" in form.json()["error"]["message"]
    assert _post(client, **{"Content-Type": ""}).status_code == 415
    assert ran == []
    assert _post(client, **{"Content-Type": "application/json; charset=utf-8"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_pages_of_other_sites_cannot_use_the_models(headers):
    client, ran = _client()
    response = _post(client, **headers)
    assert response.status_code == 403 and response.json()["error"]["code"] == "cross_site_request"
    assert ran == []


@pytest.mark.parametrize("host", ["rebind.evil.example:8000", "evil.example", "localhost.evil.example", ""])
def test_dns_rebinding_hosts_are_refused(host):
    client, ran = _client()
    for response in (_post(client, Host=host), client.get("/health", headers={"Host": host})):
        assert response.status_code == 403 and response.json()["error"]["code"] == "bad_host", host
    assert ran == []


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "192.168.1.20:8000", "LOCALHOST"])
def test_local_names_and_addresses_are_answered(host):
    client, _ = _client()
    assert _post(client, Host=host).status_code == 200


def test_the_page_itself_and_programs_get_through():
    client, ran = _client()
    same = _post(client, Origin="http://127.0.0.1:8000", **{"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200
    assert _post(client).status_code == 200  # a program: no Origin, no Sec-Fetch-Site
    # A link from another site to the page or /health is no use of the models: GET is not refused.
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200
    assert ran == [CHAT, CHAT, "/"]


def test_allowed_hosts_and_origins():
    access = Access(host="edge.local", allow_hosts=("assistant.home",), allow_origins=("https://app.example",))
    client, _ = _client(access, cors=True)
    assert _post(client, Host="edge.local:8000").status_code == 200
    assert _post(client, Host="assistant.home").status_code == 200
    assert _post(client, Host="other.home").status_code == 403
    allowed = _post(client, Origin="https://app.example", **{"Sec-Fetch-Site": "cross-site"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert _post(client, Origin="https://app.example.evil").status_code == 403
    preflight = client.options(CHAT, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert (
        _client(Access(allow_hosts=("*",)))[0]
        .post(CHAT, content=BODY, headers={"Host": "anything.example", "Content-Type": "application/json"})
        .status_code
        == 200
    )


def test_the_key_is_asked_after_the_host_and_before_the_body():
    client, ran = _client(Access(api_key="sk-test"))
    assert _post(client, Host="evil.example").status_code == 403
    assert _post(client).status_code == 401
    assert _post(client, Authorization="Bearer sk-test").status_code == 200
    assert ran == [CHAT]


def test_body_limits():
    client, ran = _client()
    assert _post(client, "/health", "x" * (2 << 20)).status_code == 413
    assert _post(client, **{"Content-Length": "nope"}).status_code == 400
    assert ran == []


def test_the_page_policy_allows_its_own_script_and_style_only():
    html = "<style>a{}</style><script>go()</script>"
    policy = page_policy(html)
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
    assert policy.count("'sha256-") == 2 and "unsafe-inline" not in policy
    assert page_policy(html.replace("go()", "evil()")) != policy


def _open_socket(access: Access, path: str = "/v1/audio/live", **headers) -> tuple[list, list]:
    """A WebSocket handshake through the Guard: (what it sent back, whether the app ran)."""
    ran, sent = [], []

    async def app(scope, receive, send):
        ran.append(scope["path"])

    headers = {"Host": "127.0.0.1:8000", **headers}
    scope = {
        "type": "websocket",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    asyncio.run(Guard(app, access)(scope, receive, send))
    return sent, ran


def test_websockets_are_guarded_like_requests_and_by_origin():
    """A WebSocket is opened by any page with the user's credentials, without CORS: the Host, the key and the
    page's Origin are all checked before the route runs."""
    access = Access(api_key="sk-test")
    key = {"Authorization": "Bearer sk-test"}
    for path in ("/v1/audio/live", "/v1/assistant/wake"):
        for headers in ({**key, "Host": "evil.example"}, {}, {**key, "Origin": "https://evil.example"}):
            sent, ran = _open_socket(access, path, **headers)
            assert not ran and [m["type"] for m in sent] == ["websocket.close"] and sent[0]["code"] == 1008, headers
        assert _open_socket(access, path, **key, Origin="http://127.0.0.1:8000")[1] == [path]
        assert _open_socket(access, path, **key)[1] == [path]  # a program: no Origin
