"""Pure-ASGI middleware: request context (id, timings), API keys, body size limit."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whisperd.errors import AuthenticationError, PayloadTooLargeError, WhisperdError
from whisperd.logs import printable
from whisperd.metrics import Metrics
from whisperd.realtime.protocol import MAX_REASON, POLICY_VIOLATION, SUBPROTOCOL, error_event
from whisperd.timings import Timings

logger = logging.getLogger("whisperd.access")

# Routes anyone may call, keys or not: probes must work without credentials.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/_/health", "/_/ready"})
# The web page and its assets load without a key (the page asks for one on a 401); GET only:
# ``POST /`` is the OpenFaaS function and needs a key like the rest of the API.
PUBLIC_PAGE_PATHS = frozenset({"/"})
PUBLIC_PAGE_PREFIX = "/ui/"


def is_public_page(scope: Scope) -> bool:
    """Whether ``scope`` is a GET (or HEAD) of the web page or one of its assets."""
    path: str = scope["path"]
    return scope.get("method") in ("GET", "HEAD") and (
        path in PUBLIC_PAGE_PATHS or path.startswith(PUBLIC_PAGE_PREFIX)
    )


async def send_error(
    send: Send, error: WhisperdError, headers: dict[str, str] | None = None
) -> None:
    """Send ``error`` as OpenAI's JSON body, outside FastAPI's exception handlers."""
    body = json.dumps(error.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _HttpMiddleware:
    """ASGI middleware for HTTP requests: anything else (the lifespan, a WebSocket) passes
    straight through to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestContextMiddleware(_HttpMiddleware):
    """Gives every request an id and a :class:`Timings`; logs and records it when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        timings = Timings()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["timings"] = timings
        status = 500
        started = state["started"] = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if timings.stages and not any(
                    k.lower() == b"server-timing" for k, _ in message.get("headers", [])
                ):
                    extra.append((b"server-timing", timings.server_timing().encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client left while sending its body: there is no one to answer, and it is
            # not a server error (uncaught, it would be logged as one, with a traceback).
            status = 499
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", scope["path"])
            logger.info(
                "%s %s %d %.3fs audio=%.1fs %s",
                scope["method"],
                printable(scope["path"]),
                status,
                elapsed,
                timings.audio_seconds,
                timings.summary(),
                extra={
                    "request_id": request_id,
                    "route": path,
                    "method": scope["method"],
                    "status": status,
                    "duration_s": round(elapsed, 4),
                    "audio_s": round(timings.audio_seconds, 3),
                    "stages": timings.rounded(),
                },
            )
            if self.metrics is not None:
                self.metrics.observe(scope, status, elapsed, timings)


KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""How a browser, which cannot set headers on a WebSocket, sends its key: a subprotocol."""


class ApiKeyMiddleware:
    """When keys are configured, every route except the health probes needs a Bearer key
    (a WebSocket may send it as a ``KEY_SUBPROTOCOL`` subprotocol instead); the key a request
    was let in with is its ``request.state.api_key``."""

    def __init__(
        self, app: ASGIApp, keys: frozenset[str], public: frozenset[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self._keys = tuple(k.encode() for k in keys)
        self._public = public

    def _key(self, scope: Scope) -> str | None:
        """The request's key, if it is one of ours."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return self._ours(token) if scheme.lower() == b"bearer" else None
        if scope["type"] == "websocket":
            for offered in scope.get("subprotocols") or ():
                if offered.startswith(KEY_SUBPROTOCOL):
                    return self._ours(offered.removeprefix(KEY_SUBPROTOCOL).encode())
        return None

    def _ours(self, token: bytes) -> str | None:
        token = token.strip()
        if not token:
            return None
        # compare against every key so the time taken does not depend on which matched
        if any([hmac.compare_digest(token, key) for key in self._keys]):
            return bytes(token).decode()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in self._public
            or is_public_page(scope)
        ):
            await self.app(scope, receive, send)
            return
        key = self._key(scope)
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await refuse_websocket(
                scope,
                receive,
                send,
                AuthenticationError(
                    "Missing or invalid API key; send it as 'Authorization: Bearer KEY', or "
                    f"from a browser as the subprotocol '{KEY_SUBPROTOCOL}KEY'."
                ),
            )
            return
        await send_error(
            send,
            AuthenticationError(
                "Missing or invalid API key; send it as 'Authorization: Bearer KEY'."
            ),
            {"www-authenticate": "Bearer"},
        )


async def refuse_websocket(
    scope: Scope, receive: Receive, send: Send, error: WhisperdError
) -> None:
    """Accept the WebSocket only to say why it is refused, in an ``error`` event (a browser
    sees no reason in a refused handshake), then close it with 1008."""
    if (await receive())["type"] != "websocket.connect":
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if SUBPROTOCOL in (scope.get("subprotocols") or ()):
        accept["subprotocol"] = SUBPROTOCOL
    await send(accept)
    await send({"type": "websocket.send", "text": json.dumps(error_event(error))})
    reason = error.message[:MAX_REASON]
    await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": reason})


FORM_OVERHEAD = 1 << 20
"""What a multipart body may carry beyond its file: the envelope and the other fields."""


def upload_too_large(limit: int, param: str = "file") -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The upload is larger than the limit of {limit} bytes; send a smaller file (or "
        "compress it) or raise WHISPERD_MAX_UPLOAD_BYTES.",
        param=param,
    )


class BodyLimitMiddleware(_HttpMiddleware):
    """Refuses request bodies over ``max_upload_bytes`` with 413, by Content-Length or while
    reading. A multipart body may be FORM_OVERHEAD larger: the file in it is held to the
    limit exactly once the form is parsed (``inputs.AudioInput.opened``)."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        super().__init__(app)
        self.max_upload_bytes = max_upload_bytes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_upload_bytes
        for name, value in scope["headers"]:
            if name == b"content-type" and value.lower().startswith(b"multipart/"):
                limit += FORM_OVERHEAD
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await send_error(send, upload_too_large(self.max_upload_bytes))
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body parsing; the handler maps it.
                    raise HTTPException(413, detail=upload_too_large(self.max_upload_bytes).message)
            return message

        await self.app(scope, limited_receive, send)
