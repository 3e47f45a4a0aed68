"""Running the app under uvicorn with a graceful drain on SIGTERM, and exit status 0.

On the first SIGTERM/SIGINT: ``/readyz`` turns 503 and new transcriptions get 503 (so a load
balancer takes the replica out), requests already admitted run to completion for up to
``drain_timeout`` seconds, then uvicorn closes the listener and the process exits 0. A second
signal stops at once. uvicorn itself would re-raise the signal after its shutdown (exit 143),
so the server here captures signals its own way.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from whisperd.api import create_app
from whisperd.api.services import AppServices, app_services
from whisperd.errors import (
    ClientTooSlowError,
    HeadersTooLargeError,
    InvalidRequestError,
    WhisperdError,
)
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_HEADERS = 100
"""Most header lines in one request; more get 431."""
MIN_BODY_RATE = 1024
"""Bytes a second a request body must come at, over each ``header_timeout``; slower is 408."""
_REFUSED_LINGER_S = 2.0
# Once the drain is over, time left for responses already being written.
_FINAL_GRACE_S = 2.0


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains the app before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self._held: AppServices = app_services(app)
        self._drain_timeout = drain_timeout
        self._drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is None and not self.should_exit:
            logger.info("Signal %d: draining (up to %.0f s)", sig, self._drain_timeout)
            self._drain_started = time.monotonic()
            # Admission refuses new requests, jobs are no longer taken (those still running at
            # the end go back to the queue), live sessions finish their turn, then close.
            self._held.lifecycle.drain()
            return
        logger.info("Second signal: stopping now")
        self.should_exit = True
        self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_started is not None and not self.should_exit:
            elapsed = time.monotonic() - self._drain_started
            services = self._held.current
            busy = 0 if services is None else services.busy()
            if busy == 0 or elapsed >= self._drain_timeout:
                if busy:
                    logger.warning("Drain timeout: stopping with %d request(s) in flight", busy)
                    if services is not None and services.pipeline is not None:
                        services.pipeline.fetcher.stop()  # their threads would outlive the server
                self.should_exit = True
        return await super().on_tick(counter)

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, holding each request's line and headers to limits: past
    ``max_head_bytes`` or ``MAX_HEADERS`` lines a 431 before more is buffered, and a head not
    complete ``head_timeout`` seconds after it began (or after the connection opened) a 408.
    A body gets a 408 too when, over ``head_timeout`` seconds, less than ``MIN_BODY_RATE``
    bytes a second of it came while the server was reading (a client that trickles its upload
    holds a connection and its file descriptor for nothing). Its own errors, and the parser's,
    answer in OpenAI's JSON shape."""

    max_head_bytes = 16 * 1024
    head_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._parsed = 0  # bytes of the head's URL and header lines parsed so far
        self._received = 0  # bytes received while the head is still incomplete
        self._lines = 0
        # the head's deadline until the headers are in, then the body's rate checks
        self._timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0  # of the body since the last rate check
        self._refused: WhisperdError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, check: Callable[[], None]) -> None:
        """Call ``check`` in ``head_timeout`` seconds, unless a check is set already."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.head_timeout, self._fire, check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self, check: Callable[[], None]) -> None:
        self._timer = None
        check()

    def _too_slow(self, message: str) -> None:
        if self._refused is None:
            self._refused = ClientTooSlowError(f"{message} (WHISPERD_HEADER_TIMEOUT).")
            self.send_400_response("")

    def _head_too_slow(self) -> None:
        self._too_slow(f"The request line and headers took longer than {self.head_timeout:g} s")

    def _check_body_rate(self) -> None:
        if self.cycle.response_started:  # answered already: the rest of the body is not wanted
            return
        # the server, not the client, is the slow one while reading is paused (the app has
        # not taken what came) or a 100-continue is not yet sent
        waiting = self.flow.read_paused or self.cycle.waiting_for_100_continue
        if waiting or self._body_bytes >= MIN_BODY_RATE * self.head_timeout:
            self._body_bytes = 0
            self._arm(self._check_body_rate)
            return
        self._too_slow(
            f"The request body came at less than {MIN_BODY_RATE} bytes a second for "
            f"{self.head_timeout:g} s"
        )

    def _refuse(self, message: str) -> None:
        self._refused = HeadersTooLargeError(message)
        raise self._refused  # the parser stops; uvicorn answers through send_400_response

    def _check_size(self, size: int) -> None:
        if size > self.max_head_bytes:
            self._refuse(
                f"The request line and headers are larger than {self.max_head_bytes} bytes "
                "(WHISPERD_MAX_HEADER_BYTES)."
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._parsed, self._received, self._lines = True, 0, 0, 0
        self._arm(self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        self._check_size(self._parsed)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._lines += 1
        if self._lines > MAX_HEADERS:
            self._refuse(f"The request has more than {MAX_HEADERS} headers.")
        self._parsed += len(name) + len(value) + 4
        self._check_size(self._parsed)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        self._body_bytes = 0
        self._arm(self._check_body_rate)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return
        super().data_received(data)
        if self._in_head and self._refused is None:
            # The head is still incomplete, so all of this was head, held by the parser.
            self._received += len(data)
            try:
                self._check_size(self._received)
            except HeadersTooLargeError:
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        """Answer an unusable request (ours, or what the parser refused) and close."""
        self._disarm()
        error = self._refused or InvalidRequestError(f"{msg.rstrip('.')}: not valid HTTP/1.1.")
        body = json.dumps(error.to_dict()).encode()
        status = http.HTTPStatus(error.status_code)
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._refused = error
        # Half-close and keep discarding what the client still sends for a moment: closing
        # at once, with its data unread, would reset the connection before it reads this.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(_REFUSED_LINGER_S, self.transport.close)


def uvicorn_config(app: FastAPI, settings: Settings, **options: Any) -> uvicorn.Config:
    """How uvicorn serves the app: httptools with the header limits; ``options`` add to it."""
    protocol = type(
        "HeadLimitedProtocol",
        (_HeadLimitedProtocol,),
        {"max_head_bytes": settings.max_header_bytes, "head_timeout": settings.header_timeout},
    )
    values: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol,
        "log_config": None,
        "access_log": False,
        # Pings keep a live session's connection open through proxies, but a pong is never
        # awaited: a session that stops reading (its client sends faster than it is
        # transcribed) cannot read one, and it ends when its client leaves or idles out.
        "ws_ping_timeout": None,
        # Live events read off the socket and not yet taken (uvicorn's default is 32 of up to
        # 16 MiB each, per session): past these two, a fast client waits on TCP instead.
        "ws_max_queue": 2,
        "ssl_certfile": settings.tls_certfile,
        "ssl_keyfile": settings.tls_keyfile,
        **options,
    }
    return uvicorn.Config(app, **values)


def spool_in(tmp_dir: Path) -> None:
    """Make ``tmp_dir`` this process's temp dir (created if missing): Starlette's form parser
    spools uploads with ``tempfile``'s default directory, which it offers no way to choose."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp_dir)


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; returns the process exit status."""
    spool_in(settings.tmp_dir)

    if not settings.is_loopback_host() and not settings.all_api_keys():
        logger.warning(
            "Listening on %s with NO API KEY: anyone who can reach this port can use the "
            "server. Set WHISPERD_API_KEYS or WHISPERD_API_KEYS_FILE.",
            settings.host,
        )
    app = create_app(settings)
    config = uvicorn_config(
        app, settings, timeout_graceful_shutdown=int(_FINAL_GRACE_S), proxy_headers=True
    )
    server = DrainingServer(config, app, settings.drain_timeout)
    server.run()
    if not server.started:
        logger.error("The server did not start; see the errors above.")
        return 1
    return 0
