"""The HTTP application: the routes of each resource behind an API key and size limits, and serving it.

Routes, by resource: the page, ``/health`` and ``/v1/models`` (here); ``/v1/chat/completions`` (chat.py);
``/v1/audio/transcriptions``, ``/translations`` and ``/speech`` (audio.py), and the WebSocket ``/v1/audio/live``
(live.py); ``/v1/assistant``, ``/timers`` and ``/wake`` (assistant.py), and the WebSocket ``/v1/assistant/wake``
(wake.py).

Every request's model work runs on that model's worker thread (models.py, workers.py); :class:`Server` waits for it
without blocking the event loop and stops it when the client goes away or the request times out; every error
becomes OpenAI's error JSON with its status code (http.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.llm.chat import ChatTemplate
from edgemm.runtime.server import assistant, audio, chat
from edgemm.runtime.server.connections import (
    LISTEN_BACKLOG,
    BoundedH11Protocol,
    BoundedServer,
    RateLimitedErrors,
    raise_descriptor_limit,
)
from edgemm.runtime.server.guard import Access, Guard
from edgemm.runtime.server.http import error_response, on_http_exception
from edgemm.runtime.server.live import live_transcription
from edgemm.runtime.server.models import ServerModels
from edgemm.runtime.server.openai import APIError
from edgemm.runtime.server.wake import wake_detection
from edgemm.runtime.server.workers import Channel

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting request checks that its client is still there


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None
    timeout: float = 300.0  # seconds one request may take, queueing included
    allow_hosts: tuple[str, ...] = ()  # Host names besides IP addresses, localhost and the listening host
    allow_origins: tuple[str, ...] = ()  # other sites whose pages may use the server (CORS is answered for them)
    idle_timeout: float = 60.0  # seconds a live transcription may send nothing before it is closed


PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",  # no other site may frame the page (and click its buttons for the user)
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _inline_hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def page_policy(html: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style (by hash) and nothing else from
    anywhere; requests only to this server; camera frames and recorded audio as blob:/data: URLs; never framed."""
    return (
        f"default-src 'none'; script-src {_inline_hashes(html, 'script')}; style-src {_inline_hashes(html, 'style')}; "
        "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


class Server:
    """What the routes share: the models and their workers, the configuration, the page."""

    def __init__(self, models: ServerModels, config: ServerConfig):
        self.models, self.config = models, config
        self.template = ChatTemplate(models.lm.chat_template, models.lm.special)
        self.started = time.time()
        self.html = resources.files("edgemm.runtime.server").joinpath("web/index.html").read_text(encoding="utf-8")
        self.csp = page_policy(self.html)
        self.wake_listeners = 0  # open /v1/assistant/wake sockets (each runs its own detector)

    # -- a request's work on a model's worker --

    def start(self, worker: str, job) -> Channel:
        """``job(channel)`` queued on ``worker``; the channel carries what it sends (workers.py)."""
        channel = Channel()
        self.models.workers[worker].submit(channel.run, job)
        return channel

    async def next(self, channel: Channel, request: Request, deadline: float):
        """The next item of a job: waits while the job queues, and cancels it if the client leaves or time runs
        out (504)."""
        while True:
            try:
                return await channel.next(timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    channel.cancel()
                    raise APIError(
                        504, f"the request took longer than {self.config.timeout:g} s", "server_error", code="timeout"
                    ) from None
                if await request.is_disconnected():
                    channel.cancel()
                    raise APIError(499, "the client closed the request") from None
            except BaseException:
                channel.cancel()
                raise

    async def run(self, worker: str, request: Request, fn, *args):
        """``fn(*args)`` on a worker, with the request's timeout and cancellation."""

        def job(channel: Channel):
            channel.put(fn(*args))

        channel = self.start(worker, job)
        return await self.next(channel, request, time.monotonic() + self.config.timeout)


# ---- the server's own routes: the page, health, models ----


async def page(server: Server, request: Request) -> Response:
    return HTMLResponse(server.html, headers=PAGE_HEADERS | {"Content-Security-Policy": server.csp})


async def health(server: Server, request: Request) -> Response:
    m = server.models
    return JSONResponse(
        {
            "status": "ok",
            "uptime_s": round(time.time() - server.started, 1),
            "models": m.names(),
            "workers": {name: w.status() for name, w in m.workers.items()},
            "image_route": m.images.route if m.images is not None else None,
        }
    )


async def list_models(server: Server, request: Request) -> Response:
    created = int(server.started)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "edgemm"} for name in server.models.names()]
    return JSONResponse({"object": "list", "data": data})


async def get_model(server: Server, request: Request) -> Response:
    name = request.path_params["model"]
    if name not in server.models.names():
        raise APIError(404, f"no model {name!r} here (see /v1/models)", "not_found_error", "model", "model_not_found")
    return JSONResponse({"id": name, "object": "model", "created": int(server.started), "owned_by": "edgemm"})


ROUTES = [
    ("/", page, ["GET"]),
    ("/health", health, ["GET"]),
    ("/v1/models", list_models, ["GET"]),
    ("/v1/models/{model:path}", get_model, ["GET"]),
]


def _answering_errors(endpoint):
    """Every failure of ``endpoint`` becomes OpenAI's error JSON with its status: no traceback, no dropped
    connection."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPException as e:  # e.g. a malformed multipart body
            return error_response(APIError(e.status_code, str(e.detail)))
        except Exception as e:
            return error_response(e)

    return wrapped


def create_app(models: ServerModels, config: ServerConfig | None = None, host: str = "127.0.0.1"):
    """The ASGI application serving ``models`` (run it with uvicorn; ``edgemm serve`` does); ``host``: the address
    it listens on (a name given there is one clients may use). Each route is ``endpoint(server, request)``."""
    config = config or ServerConfig()
    server = Server(models, config)
    routes = [
        Route(path, _answering_errors(functools.partial(endpoint, server)), methods=methods)
        for path, endpoint, methods in [*ROUTES, *chat.ROUTES, *audio.ROUTES, *assistant.ROUTES]
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().set_exception_handler(RateLimitedErrors())
        yield
        models.shutdown()

    async def live(websocket):
        await live_transcription(server, websocket)

    async def wake(websocket):
        await wake_detection(server, websocket)

    app = Starlette(
        routes=[*routes, WebSocketRoute("/v1/audio/live", live), WebSocketRoute("/v1/assistant/wake", wake)],
        exception_handlers={HTTPException: on_http_exception},
        lifespan=lifespan,
    )
    app.state.server = server
    guarded = Guard(app, Access(config.api_key, host, config.allow_hosts, config.allow_origins))
    if not config.allow_origins:
        return guarded
    # Pages of the allowed sites read the answers too: CORS, preflight requests included (answered before the key
    # is asked for: they carry none).
    return CORSMiddleware(
        guarded,
        allow_origins=list(config.allow_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one); a clear error when it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise EdgemmError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    models: ServerModels, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None, ready=None
) -> None:
    """Serve ``models`` over HTTP until interrupted. ``ready(url)`` is called once the socket listens."""
    import uvicorn

    config = config or ServerConfig()
    if not config.api_key and not is_loopback(host):
        log.warning(
            "listening on %s without an API key: anyone who can reach this machine can use it (set --api-key)", host
        )
    sock = listen_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    raise_descriptor_limit()
    uv = BoundedServer(
        uvicorn.Config(
            create_app(models, config, host),
            http=BoundedH11Protocol,
            backlog=LISTEN_BACKLOG,
            log_level="warning",
            timeout_keep_alive=5,
            lifespan="on",
        )
    )
    if ready is not None:
        ready(f"http://{shown}:{bound}")
    uv.run(sockets=[sock])
