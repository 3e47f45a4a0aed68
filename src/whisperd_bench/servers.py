"""Servers under test: one at a URL, or ``whisperd serve`` started on a free port for a block."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from whisperd_bench.errors import BenchError


@dataclass(slots=True)
class Server:
    """A server under test: a name for the tables, its base URL, and its PID when local."""

    name: str
    url: str
    pid: int | None = None
    command: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def started_server(
    name: str,
    args: Sequence[str] = (),
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 300.0,
) -> Iterator[Server]:
    """``whisperd serve ARGS`` on a free port of 127.0.0.1 until the block ends (SIGTERM).

    Async jobs are off unless ``env`` turns them on (the bench measures synchronous requests,
    and several started servers would otherwise share one embedded Redis).
    """
    port = free_port()
    command = [sys.executable, "-m", "whisperd", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    full_env = {"WHISPERD_JOBS_ENABLED": "false", **os.environ, **(env or {})}
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"server {name} ({' '.join(args)}) did not start:\n{tail}")
            time.sleep(0.2)
        yield Server(name, url, process.pid, " ".join(["whisperd serve", *args]))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
