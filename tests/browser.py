"""Headless Debian Chromium through Playwright, with every request (and WebSocket) off
127.0.0.1 blocked."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import pytest


def require(what: str) -> None:
    """Skip without ``what`` on a developer's machine; fail in CI, which installs it."""
    message = f"{what} is not installed (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def offline_page(args: Sequence[str] = ()) -> Iterator[tuple[Any, list[tuple[str, str]]]]:
    """A page whose requests to anything but 127.0.0.1 are aborted, in a Chromium started
    with ``args`` besides its usual flags.

    Yields the page and the list of (resource type, URL) it tried to reach elsewhere.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        require("Debian chromium")
    blocked: list[tuple[str, str]] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname in ("127.0.0.1", None) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append((route.request.resource_type, url))
            route.abort()

    def off_host(url: str) -> bool:
        return urlsplit(url).hostname != "127.0.0.1"

    def refuse_socket(socket: Any) -> None:
        blocked.append(("websocket", socket.url))
        socket.close()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *args])
        try:
            context = browser.new_context()
            context.route("**/*", guard)
            context.route_web_socket(off_host, refuse_socket)  # routes don't see WebSockets
            yield context.new_page(), blocked
        finally:
            browser.close()
