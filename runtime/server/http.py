"""What every route shares: library errors as OpenAI's error JSON, and reading requests and writing responses."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import numpy as np
import soundfile as sf
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from edgemm.runtime.errors import AudioError, BundleError, EdgemmError
from edgemm.runtime.llm import ContextError
from edgemm.runtime.llm.constrain import GrammarError
from edgemm.runtime.server import openai
from edgemm.runtime.server.guard import MB
from edgemm.runtime.server.openai import APIError, bad
from edgemm.runtime.server.workers import Busy, Closed
from edgemm.runtime.tts import NothingToSay, TTSError
from edgemm.runtime.vision.image import ImageError

log = logging.getLogger(__name__)

# ---- errors ----


def api_error(error: BaseException) -> APIError:
    """OpenAI's error for a library error (one sentence, the right status)."""
    if isinstance(error, APIError):
        return error
    message = (str(error).splitlines() or [type(error).__name__])[0]
    if isinstance(error, ClientDisconnect):  # it left while sending: nobody reads this answer, nothing to log
        return APIError(499, "the client closed the request")
    if isinstance(error, Busy):
        return APIError(
            429, message, "requests", code="rate_limit_exceeded", headers={"Retry-After": str(error.retry_after)}
        )
    if isinstance(error, Closed):
        return APIError(503, message, "server_error", code="unavailable", headers={"Retry-After": "5"})
    if isinstance(error, GrammarError):
        return APIError(400, message, param=error.param, code="invalid_schema")
    if isinstance(error, ContextError):
        return APIError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(error, ImageError):
        return APIError(400, message, param="messages", code="invalid_image")
    if isinstance(error, AudioError):
        return APIError(400, message, param="file", code="invalid_audio")
    if isinstance(error, NothingToSay):
        return APIError(400, message, param="input", code="nothing_to_say")
    if isinstance(error, TTSError):
        return APIError(503, message, "server_error", code="voice_unavailable")
    if isinstance(error, BundleError):
        return APIError(500, message, "server_error", code="bundle_error")
    if isinstance(error, EdgemmError):
        return APIError(400, message)
    log.error("internal error: %s", message, exc_info=error)
    return APIError(500, f"internal error: {message}", "server_error")


def error_response(error: BaseException) -> JSONResponse:
    e = api_error(error)
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    kinds = {404: "not_found_error", 405: "invalid_request_error"}
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    e = APIError(
        exc.status_code,
        message.get(exc.status_code, str(exc.detail)),
        kinds.get(exc.status_code, "invalid_request_error"),
    )
    return JSONResponse(e.body(), status_code=e.status, headers=exc.headers)


# ---- requests and responses ----


def parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad("the request body's JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise bad(f"the request body is not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise bad("the request body is not valid JSON (not UTF-8 text)") from None
    except ValueError:  # an integer past Python's 4,300 digits
        raise bad("the request body holds a number too long to read") from None


async def read_json(request: Request, check=None, *args):
    """The body's JSON, checked by ``check(body, *args)`` if given; both run on a thread, so that a large body
    (up to the route's limit) never holds up the event loop."""
    raw = await request.body()
    return await run_in_threadpool(lambda: check(parse_json(raw), *args) if check else parse_json(raw))


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def sse_event(name: str, data) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def owner_of(request: Request, name: str | None = None) -> str:
    """Whose KV caches and conversations a request may use: its API key (or none), and ``name`` (the client's own,
    e.g. prompt_cache_key), else its connection (peer address and port)."""
    auth = request.headers.get("authorization", "")
    who = name if name is not None else "%s:%s" % (request.client or ("?", "?"))
    return hashlib.sha256(f"{auth}\0{who}".encode()).hexdigest()[:24]


def session_of(body) -> str:
    session = body.get("session") if isinstance(body, dict) else None
    if not isinstance(session, str) or not 8 <= len(session) <= 64:
        raise bad("'session' must be the page's conversation id (8 to 64 characters)", "session")
    return session


async def read_upload(form, name: str, limit: int) -> bytes | None:
    upload = form.get(name)
    if upload is None or upload == "":
        return None
    if not isinstance(upload, UploadFile):
        raise bad(f"'{name}' must be a file", name)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, f"'{name}' is over {limit // MB} MB", param=name, code="file_too_large")
    return data or None


def form_flag(form, name: str) -> bool:
    """A boolean field of a multipart form ("true" / "false", as OpenAI's clients send it)."""
    value = form.get(name)
    if value in (None, "", "false", "False", "0"):
        return False
    if value in ("true", "True", "1"):
        return True
    raise bad(f"'{name}' must be true or false", name)


def form_number(form, name: str, low: float, high: float, default: float) -> float:
    """A number field of a multipart form (text), checked as openai.number checks JSON fields."""
    value = form.get(name)
    if value in (None, ""):
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise bad(f"{name} must be a number, not {value!r}", name) from None
    return openai.number({name: value}, name, low, high)
