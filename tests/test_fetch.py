"""URL fetching against a real HTTP server on 127.0.0.1.

Every connection and name lookup these tests make is watched by an audit hook, which
refuses (and records) any socket connection to a non-loopback address and any DNS lookup
of a name other than ``localhost``: the guard must refuse forbidden destinations before a
socket is opened, and these tests must never send traffic off this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from whisperd import fetch, logs
from whisperd.errors import (
    DeadlineExceededError,
    FetchError,
    ForbiddenURLError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
    WorkCancelledError,
)
from whisperd.fetch import check_url, fetch_to_file, guarded_client
from whisperd.settings import Settings

from support import QuietHandler, make_settings

AUDIO = Path(__file__).parents[2] / "shared" / "audio" / "jfk.flac"


# --- the network watch --------------------------------------------------------------------


@dataclass
class _NetLog:
    connects: list[tuple[str, int]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


_watch: _NetLog | None = None
_hook_installed = False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    log = _watch
    if log is None:
        return
    if event == "socket.connect" and isinstance(args[1], tuple):
        host, port = str(args[1][0]), int(args[1][1])
        log.connects.append((host, port))
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            log.blocked.append(f"connect {host}:{port}")
            raise RuntimeError(f"test refused a connection to non-loopback {host}")
    elif event == "socket.getaddrinfo":
        raw = args[0]
        host = raw.decode() if isinstance(raw, bytes) else str(raw)
        log.lookups.append(host)
        if host != "localhost" and not _is_ip(host):
            log.blocked.append(f"lookup {host}")
            raise RuntimeError(f"test refused a DNS lookup of {host}")


@pytest.fixture(autouse=True)
def net() -> Iterator[_NetLog]:
    """Watch (and confine to loopback) the network use of one test."""
    global _watch, _hook_installed
    if not _hook_installed:
        # Audit hooks cannot be removed; outside these tests this one does nothing.
        sys.addaudithook(_audit)
        _hook_installed = True
    _watch = _NetLog()
    try:
        yield _watch
    finally:
        log, _watch = _watch, None
    assert log.blocked == []


# --- the test server ----------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    stop: threading.Event
    errors: list[BaseException]

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN; skip that lookup.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[1] or RuntimeError("unknown"))


class _Handler(QuietHandler):
    server: _Server

    def do_GET(self) -> None:
        # The client may stop reading, as the size and time limits make it do.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self.path == "/endless":  # an answer that never ends, as fast as it is read
                self.send_response(200)
                self.end_headers()  # HTTP/1.0: the body ends at close
                while not self.server.stop.is_set():
                    self.wfile.write(b"x" * 65536)
            elif self.path == "/slowhead":
                self._slow_head()
            else:
                self.reply(200, b"got:" + body)

    def _slow_head(self) -> None:
        # the status line, then a header a byte at a time: no single read ever times out
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(600):
            if self.server.stop.wait(0.05):
                break
            self.wfile.write(b"x")
            self.wfile.flush()

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        stop = self.server.stop
        if url.path == "/jfk.flac":
            self.reply(200, AUDIO.read_bytes(), {"Content-Type": "audio/flac"})
        elif url.path == "/empty":
            self.reply(200, b"")
        elif url.path == "/redirect":
            self.reply(302, b"", {"Location": query["to"]})
        elif url.path == "/slowhead":
            self._slow_head()
        elif url.path == "/badredirect":
            self.reply(302, b"", {"Location": "http://xn--a/"})
        elif url.path == "/loop":
            self.reply(302, b"", {"Location": "/loop"})
        elif url.path.startswith("/status/"):
            self.reply(int(url.path.rsplit("/", 1)[1]), b"upstream says no")
        elif url.path == "/big":
            size = int(query["size"])
            self.send_response(200)
            if query.get("length") == "1":
                self.send_header("Content-Length", str(size))
            self.end_headers()  # without a length, HTTP/1.0: the body ends at close
            for start in range(0, size, 4096):
                self.wfile.write(b"x" * min(4096, size - start))
        elif url.path == "/liar":
            # Declares a huge body, sends a little, then stalls: only an early refusal on
            # Content-Length answers quickly.
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"x" * 10)
            stop.wait(30)
        elif url.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            stop.wait(30)
            self.wfile.write(b"late")
        elif url.path == "/trickle":
            self.send_response(200)
            self.end_headers()
            for _ in range(1500):
                if stop.wait(0.02):
                    break
                self.wfile.write(b"x")
        else:
            self.reply(404, b"no such path")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URL of a test HTTP server on 127.0.0.1."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.stop = threading.Event()
    httpd.errors = []
    thread = threading.Thread(target=httpd.serve_forever, name="test-fetch-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()  # joins the request threads
        thread.join()
    assert httpd.errors == []


def _port(base: str) -> int:
    port = urlsplit(base).port
    assert port is not None
    return port


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Fetching from 127.0.0.1, spooling to ``tmp_path`` itself."""
    values: dict[str, Any] = {
        "fetch_allow_hosts": ("127.0.0.1",),
        "tmp_dir": tmp_path,
        "fetch_timeout": 5.0,
        "fetch_total_timeout": 30.0,
    }
    return make_settings(tmp_path, **(values | overrides))


def _fetch_bytes(url: str, settings: Settings) -> bytes:
    file = fetch_to_file(url, settings)
    try:
        assert file.tell() == 0
        return file.read()
    finally:
        file.close()


# --- fetching -----------------------------------------------------------------------------


def test_fetch_returns_the_file(server: str, tmp_path: Path, net: _NetLog) -> None:
    assert _fetch_bytes(f"{server}/jfk.flac", _settings(tmp_path)) == AUDIO.read_bytes()
    assert net.connects == [("127.0.0.1", _port(server))]


def test_credentials_in_the_url_are_fine(server: str, tmp_path: Path) -> None:
    url = server.replace("http://", "http://user:secret@") + "/jfk.flac"
    assert _fetch_bytes(url, _settings(tmp_path)) == AUDIO.read_bytes()


def test_an_empty_body_is_returned_as_an_empty_file(server: str, tmp_path: Path) -> None:
    assert _fetch_bytes(f"{server}/empty", _settings(tmp_path)) == b""


def test_redirects_are_followed(server: str, tmp_path: Path) -> None:
    inner = f"/redirect?to={quote('/jfk.flac', safe='')}"
    url = f"{server}/redirect?to={quote(inner, safe='')}"
    assert _fetch_bytes(url, _settings(tmp_path, fetch_max_redirects=2)) == AUDIO.read_bytes()


def test_too_many_redirects(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="redirected more than 3 times") as caught:
        fetch_to_file(f"{server}/loop", _settings(tmp_path, fetch_max_redirects=3))
    assert not isinstance(caught.value, ForbiddenURLError)
    assert not caught.value.retryable


def test_no_redirects_when_disabled(server: str, tmp_path: Path) -> None:
    url = f"{server}/redirect?to=%2Fjfk.flac"
    with pytest.raises(FetchError, match="redirected more than 0 times"):
        fetch_to_file(url, _settings(tmp_path, fetch_max_redirects=0))


def test_logs_leave_out_credentials_and_query(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="whisperd.fetch")
    url = server.replace("http://", "http://user:pw-secret@") + "/jfk.flac?sig=query-secret"
    _fetch_bytes(url, _settings(tmp_path))
    assert "/jfk.flac" in caplog.text
    assert "secret" not in caplog.text


def test_the_http_clients_own_log_never_shows_a_url() -> None:
    loggers = [logging.getLogger(name) for name in ("", "httpx", "httpcore")]
    handlers, levels = list(loggers[0].handlers), [lg.level for lg in loggers]
    try:
        logs.configure("debug")
        # httpx's "HTTP Request: GET <the whole URL>" lines
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    finally:
        loggers[0].handlers[:] = handlers
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --- refusals -----------------------------------------------------------------------------

FORBIDDEN_URLS = [
    "http://localhost/",
    "http://LocalHost/audio.mp3",
    "http://[::1]/",
    "http://127.0.0.1/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[ff02::1]/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "https://10.0.0.1:8443/audio.wav",
    "ftp://example.com/audio.mp3",
    "file:///etc/passwd",
    "gopher://example.com/",
    "javascript:alert(1)",
    "example.com/audio.mp3",
    "http:///audio.mp3",
    "",
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_forbidden_urls_are_refused_without_connecting(
    url: str, tmp_path: Path, net: _NetLog
) -> None:
    settings = _settings(tmp_path, fetch_allow_hosts=())
    with pytest.raises(ForbiddenURLError) as caught:
        fetch_to_file(url, settings)
    assert caught.value.status_code == 400
    assert caught.value.param == "url"
    assert caught.value.to_dict()["error"]["code"] == "forbidden_url"
    with pytest.raises(ForbiddenURLError):
        check_url(url, settings)
    assert net.connects == []


def test_the_test_server_is_refused_without_the_allow_list(
    server: str, tmp_path: Path, net: _NetLog
) -> None:
    with pytest.raises(ForbiddenURLError, match=r"loopback.*WHISPERD_FETCH_ALLOW_HOSTS"):
        fetch_to_file(f"{server}/jfk.flac", _settings(tmp_path, fetch_allow_hosts=()))
    assert net.connects == []


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3/", "ftp://x/"]
)
def test_a_redirect_to_a_forbidden_url_is_refused_before_connecting(
    server: str, target: str, tmp_path: Path, net: _NetLog
) -> None:
    with pytest.raises(ForbiddenURLError):
        fetch_to_file(f"{server}/redirect?to={quote(target, safe='')}", _settings(tmp_path))
    assert net.connects == [("127.0.0.1", _port(server))]


def test_the_allow_list_matches_names_exactly(server: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, fetch_allow_hosts=("LocalHost",))
    by_name = f"http://localhost:{_port(server)}/jfk.flac"
    assert _fetch_bytes(by_name, settings) == AUDIO.read_bytes()
    # The allowed name does not allow the address it resolves to, even as a redirect.
    with pytest.raises(ForbiddenURLError):
        fetch_to_file(f"{server}/jfk.flac", settings)
    to_address = f"{by_name.removesuffix('/jfk.flac')}/redirect?to={quote(server, safe='')}"
    with pytest.raises(ForbiddenURLError):
        fetch_to_file(to_address, settings)


def test_the_allow_list_takes_cidr_ranges_for_resolved_names(server: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, fetch_allow_hosts=("127.0.0.0/8", "::1/128"))
    url = f"http://localhost:{_port(server)}/jfk.flac"
    assert _fetch_bytes(url, settings) == AUDIO.read_bytes()
    check_url(url, settings)


# --- resolution, with a resolver under the test's control --------------------------------


def _resolver(
    table: Mapping[str, Sequence[str] | socket.gaierror],
) -> Callable[[str, int], list[fetch.IPAddress]]:
    def resolve(host: str, port: int) -> list[fetch.IPAddress]:
        answer = table[host]
        if isinstance(answer, socket.gaierror):
            raise answer
        return [ipaddress.ip_address(a) for a in answer]

    return resolve


def test_connects_to_the_address_it_checked(server: str, tmp_path: Path, net: _NetLog) -> None:
    # The name is resolved once, by the guard, and the socket goes to that checked
    # address: a second lookup (where DNS rebinding would strike) would be refused by
    # the watch, since audio.test is not localhost.
    settings = _settings(tmp_path, fetch_allow_hosts=("127.0.0.0/8",))
    guard = fetch._Guard(settings, resolver=_resolver({"audio.test": ["127.0.0.1"]}))
    file = fetch._fetch(
        f"http://audio.test:{_port(server)}/jfk.flac", guard, fetch._Limits(settings)
    )
    with file:
        assert file.read() == AUDIO.read_bytes()
    assert net.connects == [("127.0.0.1", _port(server))]
    assert "audio.test" not in net.lookups


def test_every_resolved_address_must_be_allowed(tmp_path: Path, net: _NetLog) -> None:
    settings = _settings(tmp_path, fetch_allow_hosts=())
    table = {"mixed.test": ["93.184.216.34", "10.0.0.7"], "public.test": ["93.184.216.34"]}
    guard = fetch._Guard(settings, resolver=_resolver(table))
    with pytest.raises(ForbiddenURLError, match=r"'mixed\.test' resolves to 10\.0\.0\.7"):
        guard.addresses("mixed.test", 80)
    with pytest.raises(ForbiddenURLError):
        fetch._fetch("http://mixed.test/a.mp3", guard, fetch._Limits(settings))
    assert guard.addresses("public.test", 443) == [ipaddress.ip_address("93.184.216.34")]
    assert net.connects == []


@pytest.mark.parametrize(
    ("errno", "retryable"), [(socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)]
)
def test_a_host_that_does_not_resolve(
    errno: int, retryable: bool, tmp_path: Path, net: _NetLog
) -> None:
    settings = _settings(tmp_path)
    failure = socket.gaierror(errno, "no such name")
    guard = fetch._Guard(settings, resolver=_resolver({"gone.test": failure}))
    with pytest.raises(FetchError, match=r"gone\.test") as caught:
        fetch._fetch("https://gone.test/a.mp3", guard, fetch._Limits(settings))
    assert not isinstance(caught.value, ForbiddenURLError)
    assert caught.value.retryable is retryable
    assert caught.value.status_code == (502 if retryable else 400)
    if not retryable:
        assert "does not resolve" in caught.value.message
    assert net.connects == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.251",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        # special-purpose blocks some Python releases count as global
        "192.0.0.192",
        "192.88.99.1",
        "fec0::1",
    ],
)
def test_internal_addresses_have_a_reason(address: str) -> None:
    assert fetch._forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert fetch._forbidden_reason(ipaddress.ip_address(address)) is None


# --- size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", ["1", "0"], ids=["content-length", "no-content-length"])
def test_over_the_size_cap(server: str, length: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_upload_bytes=1000)
    with pytest.raises(PayloadTooLargeError) as caught:
        fetch_to_file(f"{server}/big?size=50000&length={length}", settings)
    assert caught.value.status_code == 413
    assert caught.value.param == "url"


def test_exactly_the_size_cap_is_fine(server: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_upload_bytes=1000)
    assert _fetch_bytes(f"{server}/big?size=1000", settings) == b"x" * 1000


def test_a_declared_length_over_the_cap_is_refused_before_reading(
    server: str, tmp_path: Path
) -> None:
    # /liar stalls after 10 bytes: reading would end in a timeout, not a 413.
    settings = _settings(tmp_path, max_upload_bytes=1024 * 1024, fetch_timeout=10.0)
    with pytest.raises(PayloadTooLargeError):
        fetch_to_file(f"{server}/liar", settings)


# --- upstream status, timeouts, connection errors -----------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable", "answer"),
    [
        (404, False, 400),
        (403, False, 400),
        (410, False, 400),
        (429, True, 502),
        (500, True, 502),
        (503, True, 502),
    ],
)
def test_upstream_status(
    server: str, status: int, retryable: bool, answer: int, tmp_path: Path
) -> None:
    """A 4xx means the client's URL is wrong (400); the server failing is a 502."""
    with pytest.raises(FetchError, match=f"HTTP {status}") as caught:
        fetch_to_file(f"{server}/status/{status}", _settings(tmp_path))
    assert caught.value.upstream_status == status
    assert caught.value.retryable is retryable
    assert caught.value.transient is retryable
    assert caught.value.status_code == answer


def test_read_timeout(server: str, tmp_path: Path) -> None:
    with pytest.raises(UpstreamTimeoutError, match="Timed out") as caught:
        fetch_to_file(f"{server}/slow", _settings(tmp_path, fetch_timeout=0.2))
    assert caught.value.retryable
    assert caught.value.status_code == 504


def test_total_timeout(server: str, tmp_path: Path) -> None:
    # /trickle sends a byte every 20 ms for 30 s, so no read times out.
    settings = _settings(tmp_path, fetch_timeout=5.0, fetch_total_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError, match=r"longer than 0\.3 s") as caught:
        fetch_to_file(f"{server}/trickle", settings)
    assert caught.value.retryable
    assert caught.value.status_code == 504
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("path", ["/trickle", "/slow"])
def test_the_callers_deadline_ends_the_fetch(server: str, path: str, tmp_path: Path) -> None:
    """A trickle and a stall both end at the deadline, not at the (longer) fetch limits."""
    settings = _settings(tmp_path, fetch_timeout=20.0, fetch_total_timeout=25.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="deadline"):
        fetch_to_file(f"{server}{path}", settings, deadline=started + 0.3)
    assert time.monotonic() - started < 15.0


@pytest.mark.parametrize(
    ("limit", "error"),
    [
        ("deadline", DeadlineExceededError),
        ("total", UpstreamTimeoutError),
        ("stop", WorkCancelledError),
    ],
)
def test_a_head_sent_a_byte_at_a_time_is_cut_off(
    server: str, limit: str, error: type[Exception], tmp_path: Path
) -> None:
    """No read waits long, so only cutting the connection ends it in time."""
    settings = _settings(tmp_path, fetch_timeout=20.0, fetch_total_timeout=25.0)
    started = time.monotonic()
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        with pytest.raises(error):
            if limit == "deadline":
                fetch_to_file(f"{server}/slowhead", settings, deadline=started + 0.3)
            elif limit == "total":
                fetch_to_file(
                    f"{server}/slowhead", settings.model_copy(update={"fetch_total_timeout": 0.3})
                )
            else:
                fetch_to_file(f"{server}/slowhead", settings, stopped=stop.is_set)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15.0


def test_a_redirect_to_a_malformed_international_name_is_a_502(server: str, tmp_path: Path) -> None:
    with pytest.raises(UpstreamError, match="invalid URL") as caught:
        fetch_to_file(f"{server}/badredirect", _settings(tmp_path))
    assert not caught.value.retryable


def test_post_does_not_read_the_answer(server: str, tmp_path: Path) -> None:
    response = fetch.post(
        f"{server}/endless", _settings(tmp_path), content=b"{}", headers={}, timeout=10.0
    )
    assert response.status_code == 200


def test_post_is_bounded_in_all_by_its_timeout(server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError, match="did not answer within"):
        fetch.post(f"{server}/slowhead", _settings(tmp_path), content=b"", headers={}, timeout=0.5)
    assert time.monotonic() - started < 15.0


def test_a_stopped_fetch_ends_at_its_next_chunk(server: str, tmp_path: Path) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        with pytest.raises(WorkCancelledError):
            fetch_to_file(f"{server}/trickle", _settings(tmp_path), stopped=stop.is_set)
    finally:
        timer.cancel()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://xn--/", "internationalized domain name"),
        ("http://xn--zz/a.mp3", "internationalized domain name"),
        ("http://xn--zz.example/a.mp3", "internationalized domain name"),
        ("http://127.0.0.1:99999/a.mp3", "not a valid TCP port"),
        ("http://127.0.0.1:0/a.mp3", "not a valid TCP port"),
    ],
)
def test_a_malformed_host_or_port_is_refused(
    url: str, said: str, tmp_path: Path, net: _NetLog
) -> None:
    for call in (fetch_to_file, check_url):
        with pytest.raises(ForbiddenURLError, match=said):
            call(url, _settings(tmp_path))
    assert net.lookups == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError, match="Could not connect") as caught:
        fetch_to_file(f"http://127.0.0.1:{port}/a.mp3", _settings(tmp_path))
    assert caught.value.retryable
    assert caught.value.status_code == 502


def test_tls_failure(server: str, tmp_path: Path) -> None:
    url = server.replace("http://", "https://") + "/jfk.flac"
    with pytest.raises(UpstreamError, match="TLS") as caught:
        fetch_to_file(url, _settings(tmp_path))
    assert not caught.value.retryable
    assert caught.value.status_code == 502


# --- check_url and guarded_client ---------------------------------------------------------


def test_check_url_accepts_the_allowed_server(server: str, tmp_path: Path, net: _NetLog) -> None:
    check_url(f"{server}/hook", _settings(tmp_path))
    assert net.connects == []


def test_guarded_client_posts_to_an_allowed_server(server: str, tmp_path: Path) -> None:
    with guarded_client(_settings(tmp_path), timeout=5.0) as client:
        response = client.post(f"{server}/hook", content=b"done")
    assert response.status_code == 200
    assert response.content == b"got:done"


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://169.254.169.254/", "http://0xa9fea9fe/", "file:///x"]
)
def test_guarded_client_refuses_forbidden_urls(url: str, tmp_path: Path, net: _NetLog) -> None:
    with guarded_client(_settings(tmp_path)) as client, pytest.raises(ForbiddenURLError):
        client.post(url, content=b"done")
    assert net.connects == []


def test_guarded_client_refuses_loopback_without_the_allow_list(
    server: str, tmp_path: Path, net: _NetLog
) -> None:
    with (
        guarded_client(_settings(tmp_path, fetch_allow_hosts=())) as client,
        pytest.raises(ForbiddenURLError),
    ):
        client.post(f"{server}/hook", content=b"done")
    assert net.connects == []


def test_guarded_client_checks_redirects(server: str, tmp_path: Path, net: _NetLog) -> None:
    target = quote("http://169.254.169.254/latest/meta-data", safe="")
    with guarded_client(_settings(tmp_path)) as client, pytest.raises(ForbiddenURLError):
        client.get(f"{server}/redirect?to={target}", follow_redirects=True)
    assert net.connects == [("127.0.0.1", _port(server))]


def test_guarded_client_checks_at_connect_time(server: str, tmp_path: Path, net: _NetLog) -> None:
    # A name passes the static check; the address it resolves to is checked at connect.
    with (
        guarded_client(_settings(tmp_path, fetch_allow_hosts=())) as client,
        pytest.raises(ForbiddenURLError, match=r"'localhost' resolves to 127\.0\.0\.1"),
    ):
        client.get(f"http://localhost:{_port(server)}/jfk.flac")
    assert net.connects == []


def test_guarded_client_ignores_environment_proxies(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.9.9.9:3128")
    with guarded_client(_settings(tmp_path)) as client:
        response = client.get(f"{server}/jfk.flac")
    assert response.content == AUDIO.read_bytes()


def test_fetching_can_be_switched_off() -> None:
    off = Settings(fetch_enabled=False, fetch_allow_hosts=("127.0.0.1",))
    for call in (fetch.fetch_to_file, fetch.check_url):
        with pytest.raises(ForbiddenURLError, match="does not fetch URLs"):
            call("http://127.0.0.1:9/a.mp3", off)
    with fetch.guarded_client(off) as client, pytest.raises(ForbiddenURLError):
        client.get("http://127.0.0.1:9/")
