"""Who may use the server: the Host a request names, the page it comes from, its API key, body type and size.

A server on a laptop's loopback is reachable by every web page its owner opens: a page can send "simple" requests
(``text/plain`` bodies, forms) without a CORS preflight, and a DNS-rebinding page can even read the answers under
its own host name. So, before any route runs:

- ``Host`` must name this server: an IP address, ``localhost``, the ``--host`` it listens on or an ``--allow-host``
  name (a rebinding page's own name is none of them) -> 403 otherwise;
- the API key, when one is set (a Bearer token; the page also takes it as HTTP Basic's password) -> 401;
- a request from another site (its ``Origin`` differs from the Host, or ``Sec-Fetch-Site`` says so) may not use the
  models unless ``--allow-origin`` names that origin -> 403; GET requests (the page, /health) are not refused;
- JSON routes take ``application/json`` only, uploads ``multipart/form-data`` only -> 415;
- bodies over the route's limit -> 413, on the declared length and again on the bytes received.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from edgemm.runtime.server.openai import APIError, bad

log = logging.getLogger(__name__)

MB = 1 << 20
# Request bodies: the largest each route needs (an image is base64 in JSON: 4/3 of its size), 1 MB elsewhere.
BODY_LIMITS = (
    ("/v1/chat/completions", 28 * MB),
    ("/v1/audio/transcriptions", 26 * MB),
    ("/v1/audio/translations", 26 * MB),
    ("/v1/assistant/timers", 1 * MB),
    ("/v1/assistant", 46 * MB),
)
JSON_LIMIT = 1 * MB
MEDIA_TYPES = {
    "/v1/chat/completions": "application/json",
    "/v1/audio/speech": "application/json",
    "/v1/audio/transcriptions": "multipart/form-data",
    "/v1/audio/translations": "multipart/form-data",
    "/v1/assistant": "multipart/form-data",
    "/v1/assistant/timers": "application/json",
}
LOCAL_NAMES = ("localhost",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Access:
    """Who may use the server, besides local pages and programs."""

    api_key: str | None = None
    host: str = "127.0.0.1"  # the address it listens on (a name given there is allowed in Host)
    allow_hosts: tuple[str, ...] = ()  # more names clients may use in Host ("*": any)
    allow_origins: tuple[str, ...] = ()  # other sites' pages that may use it ("https://app.example"; "*": any)

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if name is None:
            return False
        if "*" in self.allow_hosts or _is_ip(name) or name in LOCAL_NAMES:
            return True
        return name in {self.host.lower().strip("[]"), *(h.lower() for h in self.allow_hosts)}

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin.rstrip("/").lower() in {
            o.rstrip("/").lower() for o in self.allow_origins
        }


def _host_name(host: str) -> str | None:
    """The name part of a Host header ("[::1]:8000" -> "::1", "Example.com." -> "example.com"), or None if it is
    not one."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _cross_site(headers: dict, host: str, access: Access) -> str | None:
    """Why a request comes from another site's page (None: it does not, or that site is allowed)."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if origin and access.origin_allowed(origin):
        return None
    if origin:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != host.lower() or parts.scheme not in ("http", "https"):
            return f"requests from {origin} are not allowed (start the server with --allow-origin {origin})"
    if site in ("cross-site", "same-site"):
        return "requests from another site's page are not allowed (see --allow-origin)"
    return None


def _media_type(headers: dict) -> str:
    return headers.get(b"content-type", b"").decode("latin-1").partition(";")[0].strip().lower()


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is over {limit // MB} MB", code="request_too_large")


class Guard:
    """ASGI middleware applying :class:`Access` and the body limits to every HTTP request (see the module)."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    def _authorized(self, headers: dict) -> bool:
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self.access.api_key.encode())

    def _denied(self, headers: dict) -> APIError | None:
        """The error for a Host this server does not answer for, or a missing or wrong API key (HTTP and WebSocket)."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.access.host_allowed(host):
            return APIError(
                403, f"this server does not answer for the host {host!r} (see --allow-host)", code="bad_host"
            )
        if self.access.api_key and not self._authorized(headers):
            return APIError(401, "a valid API key is needed (Authorization: Bearer KEY)", code="invalid_api_key")
        return None

    def _refusal(self, scope, headers: dict) -> JSONResponse | None:
        """The error response for a request that may not go on, or None."""
        denied = self._denied(headers)
        if denied is not None and denied.status == 401:
            challenge = 'Basic realm="edgemm", charset="UTF-8"' if scope["path"] == "/" else 'Bearer realm="edgemm"'
            return _response(denied, {"WWW-Authenticate": challenge})
        if denied is not None:
            return _response(denied)
        if scope["method"] in SAFE_METHODS:
            return None
        host = headers.get(b"host", b"").decode("latin-1")
        reason = _cross_site(headers, host, self.access)
        if reason:
            return _response(APIError(403, reason, code="cross_site_request"))
        wanted = MEDIA_TYPES.get(scope["path"])
        if wanted and _media_type(headers) != wanted:
            given = _media_type(headers) or "none"
            return _response(APIError(415, f"send the body as {wanted} (not {given})", code="unsupported_media_type"))
        return None

    def _socket_refusal(self, headers: dict) -> str | None:
        """Why a WebSocket may not open: a host or key refused as for HTTP, or a page of another site (browsers let
        any page open a WebSocket, with the user's credentials: the Origin header must be this site's)."""
        denied = self._denied(headers)
        if denied is not None:
            return str(denied)
        return _cross_site(headers, headers.get(b"host", b"").decode("latin-1"), self.access)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            reason = self._socket_refusal(dict(scope["headers"]))
            if reason is not None:
                log.info("WebSocket refused: %s", reason)
                await receive()  # websocket.connect
                return await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        limit = next((size for prefix, size in BODY_LIMITS if scope["path"].startswith(prefix)), JSON_LIMIT)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await _response(bad("Content-Length is not a number"))(scope, receive, send)
            if too_big:
                return await _response(_too_large(limit))(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited, send)


def _response(error: APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers={**error.headers, **(headers or {})})
