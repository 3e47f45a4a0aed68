"""Fetch an audio URL without letting it reach internal networks (an SSRF guard).

A URL given by a client is checked twice:

- before any connection, cheaply: the scheme must be http or https, the URL must have a
  host, and a host written as an IP address (including the numeric forms ``2130706433``,
  ``0x7f000001`` and ``127.1``) must be a public address;
- at connect time, in ``_GuardedBackend``: the host is resolved once, *every* address it
  resolves to must be public, and the socket is opened to one of those checked addresses.
  Because the check and the connection use the same resolution, a DNS answer that changes
  between the two (DNS rebinding) cannot slip through, and every redirect hop is covered
  by construction. TLS still verifies and sends SNI for the hostname.

``settings.fetch_allow_hosts`` lets trusted internal hosts through: an entry is a hostname
(exact, case-insensitive) or an IP/CIDR range. A host named there is allowed whatever it
resolves to; otherwise each resolved address must be public or inside an allowed range.

Environment proxies are ignored on purpose: through a proxy the socket would go to the
proxy, and the address check would check the wrong thing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpcore
import httpx

from whisperd import __version__
from whisperd.errors import (
    DeadlineExceededError,
    FetchError,
    ForbiddenURLError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
    WorkCancelledError,
    shown,
)
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]
"""Resolves (host, port) to addresses; raises ``socket.gaierror`` when the host does not."""

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SPECIAL_PURPOSE = tuple(
    ipaddress.ip_network(block)
    for block in (
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.192: a cloud metadata address)
        "192.0.2.0/24",
        "192.88.99.0/24",  # the former 6to4 relay anycast
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fec0::/10",  # the former site-local
    )
)
"""IANA special-purpose blocks that are not globally reachable: checked here, because the
interpreter's own tables (``is_global``) leave some of them out in older Python releases."""
_SPOOL_BYTES = 8 * 1024 * 1024
"""Downloads up to this size stay in memory; larger ones spill to a file in tmp_dir."""
_ALLOW_HINT = "if the host is trusted, add it to WHISPERD_FETCH_ALLOW_HOSTS"
_CUTOFF_POLL_S = 0.25
"""How often a fetch's watcher asks whether the fetch was stopped."""


def _never() -> bool:
    return False


@dataclass
class _Limits:
    """When one download must end: the fetch time limit, or the caller's deadline if sooner."""

    settings: Settings
    deadline: float | None = None
    stopped: Callable[[], bool] = _never
    started: float = field(default_factory=time.monotonic)

    def end(self) -> float:
        """The monotonic instant the download must be over by."""
        end = self.started + self.settings.fetch_total_timeout
        return end if self.deadline is None else min(end, self.deadline)

    def read_timeout(self) -> float:
        """The longest one connect or read may wait."""
        return max(0.0, min(self.settings.fetch_timeout, self.end() - time.monotonic()))

    def check(self) -> None:
        """Raise if the download must stop now."""
        if self.stopped():
            raise WorkCancelledError("The fetch was stopped: its work is no longer wanted.")
        if time.monotonic() >= self.end():
            raise self.expired()

    def expired(self) -> DeadlineExceededError | UpstreamTimeoutError:
        """The error for a download that ran out of time."""
        total = self.settings.fetch_total_timeout
        if self.deadline is not None and self.deadline < self.started + total:
            return DeadlineExceededError(
                "The request's deadline passed while the URL was being fetched; "
                "try a faster host, or a longer X-Timeout."
            )
        return UpstreamTimeoutError(
            f"Fetching the URL took longer than {total:g} s "
            "(WHISPERD_FETCH_TOTAL_TIMEOUT); try a faster host or a smaller file.",
            retryable=True,
        )


class _Cutoff:
    """Cuts the connections of one client at an instant, or once ``stopped`` says so, even in
    the middle of a read: per-read timeouts alone let a server that sends a byte at a time
    (of its headers, say) hold a connection for hours."""

    def __init__(self, end: float, stopped: Callable[[], bool] = _never) -> None:
        self._end = end
        self._stopped = stopped
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="whisperd-cutoff", daemon=True)
        self.cut = False

    def __enter__(self) -> _Cutoff:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watcher.join()

    def track(self, stream: httpcore.NetworkStream) -> None:
        """A connection the client opened (the guarded backend reports each one)."""
        sock = stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)
                if self.cut:
                    _shut(sock)

    def _watch(self) -> None:
        while not self._done.wait(min(_CUTOFF_POLL_S, max(0.0, self._end - time.monotonic()))):
            if self._stopped() or time.monotonic() >= self._end:
                with self._lock:
                    self.cut = True
                    for sock in self._sockets:
                        _shut(sock)
                return


def _shut(sock: socket.socket) -> None:
    """End a connection that another thread may be reading: its read returns at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def fetch_to_file(
    url: str,
    settings: Settings,
    *,
    deadline: float | None = None,
    stopped: Callable[[], bool] | None = None,
) -> tempfile.SpooledTemporaryFile[bytes]:
    """Download url into a spooled temp file (in settings.tmp_dir), positioned at 0.

    The caller closes the file. Redirects are followed up to
    ``settings.fetch_max_redirects``, each hop checked like the first URL. The body may be
    at most ``settings.max_upload_bytes``. The whole download may take at most
    ``settings.fetch_total_timeout``, and must end by ``deadline`` (a monotonic instant, the
    caller's); no read waits past either. ``stopped`` is asked between chunks: once it says
    yes, the download ends with WorkCancelledError. An empty body is returned as an empty
    file: whether that is usable audio is for the decoder to say. Name resolution
    (getaddrinfo) has no timeout of its own.

    Raises ForbiddenURLError (a URL or address that may not be fetched),
    PayloadTooLargeError (over the size cap), UpstreamError (the server failed: 502),
    UpstreamTimeoutError (it was too slow: 504), DeadlineExceededError (the caller's
    deadline passed), WorkCancelledError, or FetchError (the URL is wrong: no such host, an
    HTTP 4xx), with ``retryable`` and ``upstream_status`` set. No httpx exception escapes.
    """
    return _fetch(url, _Guard(settings), _Limits(settings, deadline, stopped or _never))


def check_url(url: str, settings: Settings) -> None:
    """Raise ForbiddenURLError if url may not be fetched or posted to.

    That is: a scheme other than http(s), no host, or a host that is or resolves to a
    forbidden address. Used for callback URLs too.

    The host is resolved now; a host that does not resolve raises FetchError (its base
    class). Passing this check does not make a later connection safe by itself (DNS can
    change): connect with ``guarded_client``, which checks again at connect time.
    """
    guard = _Guard(settings)
    parsed = guard.check_static(url)
    guard.addresses(_ascii_host(parsed), parsed.port or _DEFAULT_PORTS[parsed.scheme])


def guarded_client(
    settings: Settings,
    *,
    timeout: float | None = None,
    on_connect: Callable[[httpcore.NetworkStream], None] | None = None,
) -> httpx.Client:
    """An httpx.Client whose every connection is checked by the same rules as fetching.

    That covers the first request and each redirect. ``timeout`` (seconds, per connect and
    read) defaults to ``settings.fetch_timeout``; ``on_connect`` hears of each connection.
    The client does not follow redirects unless a request asks to
    (``follow_redirects=True``), and then at most ``settings.fetch_max_redirects``. A refused
    destination raises ForbiddenURLError and a host that does not resolve raises FetchError
    from the request call; other failures are ordinary httpx exceptions, for the caller to
    translate. Close the client when done.
    """
    per_read = settings.fetch_timeout if timeout is None else timeout
    return _client(_Guard(settings), settings, per_read, on_connect)


def post(
    url: str, settings: Settings, *, content: bytes, headers: dict[str, str], timeout: float
) -> httpx.Response:
    """POST ``content`` to url through the guard, all of it within ``timeout`` seconds; the
    answer's status and headers. Its body is not read: no reply can fill memory.

    Raises what ``guarded_client`` requests raise, and UpstreamTimeoutError when the whole
    exchange takes longer than ``timeout``.
    """
    cutoff = _Cutoff(time.monotonic() + timeout)
    try:
        with (
            cutoff,
            guarded_client(settings, timeout=timeout, on_connect=cutoff.track) as client,
            client.stream("POST", url, content=content, headers=headers) as response,
        ):
            return response
    except httpx.HTTPError as exc:
        if cutoff.cut or isinstance(exc, httpx.TimeoutException):
            raise UpstreamTimeoutError(
                f"{_ascii_host(httpx.URL(url))} did not answer within {timeout:g} s.",
                retryable=True,
                param=None,
            ) from exc
        raise


# --- the address rules --------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _forbidden_reason(ip: IPAddress) -> str | None:
    """Why ip may not be reached (a word for messages), or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            reason = _forbidden_reason(inner)
            if reason is not None:
                return f"{reason} (embedded in IPv6)"
    checks = (
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared (carrier-grade NAT)"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global or any(ip in block for block in _SPECIAL_PURPOSE), "non-public"),
    )
    for matches, reason in checks:
        if matches:
            return reason
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """The address host spells, in any form the C resolver accepts, or None for a name.

    Besides dotted quads and IPv6, ``inet_aton`` reads ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1`` and ``127.1``; getaddrinfo would read them the same way, so they are
    addresses, not names.
    """
    bare = host.removesuffix(".")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except (OSError, ValueError):
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every IPv4 and IPv6 address host resolves to, in the resolver's order."""
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in found:
            found.append(ip)
    return found


def _ascii_host(url: httpx.URL) -> str:
    """The host as it goes on the wire (IDNA-encoded, IPv6 without brackets)."""
    return url.raw_host.decode("ascii")


def _shown(url: httpx.URL) -> str:
    """url for logs: credentials, query and fragment (often secret tokens) left out."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None))


class _Guard:
    """The rules for one settings object: which URLs and addresses may be reached."""

    def __init__(self, settings: Settings, resolver: Resolver = _resolve) -> None:
        self._resolver = resolver
        self._enabled = settings.fetch_enabled
        self._names: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in settings.fetch_allow_hosts:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry.lower().removesuffix("."))

    def _name_allowed(self, host: str) -> bool:
        return host.lower().removesuffix(".") in self._names

    def _ip_allowed(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address):
            # Compare without a scope id ("fe80::1%eth0"), and let a mapped address match
            # an IPv4 range.
            candidates: list[IPAddress] = [ipaddress.IPv6Address(int(ip)), *_embedded_ipv4(ip)]
        else:
            candidates = [ip]
        return any(c in net for c in candidates for net in self._networks)

    def _check_ip(self, host: str, ip: IPAddress) -> None:
        if self._ip_allowed(ip):
            return
        reason = _forbidden_reason(ip)
        if reason is None:
            return
        logger.warning("Refused to connect to %s (%s, a %s address)", host, ip, reason)
        if _literal_ip(host) is not None:
            where = f"The URL's host {shown(host)} is {ip}, a {reason} address"
        else:
            where = f"The URL's host {shown(host)} resolves to {ip}, a {reason} address"
        raise ForbiddenURLError(
            f"{where}; whisperd does not connect to internal networks ({_ALLOW_HINT})."
        )

    def check_static(self, url: str | httpx.URL) -> httpx.URL:
        """Check what can be checked without the network: scheme, host, a literal IP."""
        if not self._enabled:
            raise ForbiddenURLError(
                "This server does not fetch URLs (WHISPERD_FETCH_ENABLED is false); "
                "upload the file instead."
            )
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ForbiddenURLError(f"Not a valid URL: {shown(str(exc))}") from exc
        if not parsed.scheme:
            raise ForbiddenURLError("The URL has no scheme; give a full http:// or https:// URL.")
        if parsed.scheme not in _SCHEMES:
            raise ForbiddenURLError(
                f"Only http and https URLs can be fetched, not {shown(parsed.scheme)} URLs."
            )
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise ForbiddenURLError(f"The URL's port {parsed.port} is not a valid TCP port.")
        host = _ascii_host(parsed)
        try:
            parsed.host  # noqa: B018  (decodes the IDNA labels, which may be malformed)
        except UnicodeError as exc:
            raise ForbiddenURLError(
                f"The URL's host {shown(host)} is not a valid internationalized domain name "
                f"({exc})."
            ) from exc
        if not host:
            raise ForbiddenURLError("The URL has no host; give a full http(s)://host/path URL.")
        if not self._name_allowed(host):
            ip = _literal_ip(host)
            if ip is not None:
                self._check_ip(host, ip)
        return parsed

    def check_request(self, request: httpx.Request) -> None:
        """An httpx request hook: the static checks, for the first request and each redirect."""
        self.check_static(request.url)

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Resolve host and check every address; the addresses that may be connected to."""
        ip = _literal_ip(host)
        if ip is not None:
            found: Sequence[IPAddress] = [ip]
        else:
            try:
                found = self._resolver(host, port)
            except (socket.gaierror, UnicodeError) as exc:
                temporary = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
                detail = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
                logger.info("Host %s does not resolve: %s", host, detail)
                message = (
                    f"The URL's host {shown(host)} could not be resolved right now ({detail}); "
                    "try again later."
                    if temporary
                    else f"The URL's host {shown(host)} does not resolve ({detail}); check the URL."
                )
                error = UpstreamError if temporary else FetchError
                raise error(message, retryable=temporary) from exc
            if not found:
                raise FetchError(
                    f"The URL's host {shown(host)} does not resolve to any IP address."
                )
        if not self._name_allowed(host):
            for address in found:
                self._check_ip(host, address)
        return list(found)


# --- the HTTP client ----------------------------------------------------------------------


class _GuardedBackend(httpcore.SyncBackend):
    """Opens each TCP connection to an address the guard has just checked."""

    def __init__(
        self, guard: _Guard, on_connect: Callable[[httpcore.NetworkStream], None] | None
    ) -> None:
        self._guard = guard
        self._on_connect = on_connect

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        error: httpcore.ConnectError | None = None
        for ip in self._guard.addresses(host, port):
            try:
                stream = super().connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                # Like socket.create_connection: try the next address, raise the last error.
                error = exc
                continue
            if self._on_connect is not None:
                self._on_connect(stream)
            return stream
        assert error is not None  # addresses() returns at least one address
        raise error


def _transport(
    guard: _Guard, on_connect: Callable[[httpcore.NetworkStream], None] | None
) -> httpx.HTTPTransport:
    ssl_context = httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=ssl_context, trust_env=False)
    # httpx.HTTPTransport takes no network backend, so replace the pool it built (unused,
    # no connections yet) by the same kind of pool connecting through the guarded backend.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        network_backend=_GuardedBackend(guard, on_connect),
        max_connections=10,
        max_keepalive_connections=5,
        keepalive_expiry=5.0,
    )
    return transport


def _client(
    guard: _Guard,
    settings: Settings,
    timeout: float,
    on_connect: Callable[[httpcore.NetworkStream], None] | None = None,
) -> httpx.Client:
    return httpx.Client(
        transport=_transport(guard, on_connect),
        timeout=httpx.Timeout(timeout),
        max_redirects=settings.fetch_max_redirects,
        trust_env=False,
        event_hooks={"request": [guard.check_request]},
        headers={"User-Agent": f"whisperd/{__version__}"},
    )


# --- downloading --------------------------------------------------------------------------


def _fetch(url: str, guard: _Guard, limits: _Limits) -> tempfile.SpooledTemporaryFile[bytes]:
    settings = limits.settings
    target = guard.check_static(url)
    logger.info("Fetching %s", _shown(target))
    # Not a with block: on success the open file is handed to the caller.
    file: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=_SPOOL_BYTES, mode="w+b", dir=str(settings.tmp_dir)
    )
    try:
        cutoff = _Cutoff(limits.end(), limits.stopped)
        with cutoff, _client(guard, settings, limits.read_timeout(), cutoff.track) as client:
            size = _download(client, target, file, limits)
        if cutoff.cut:  # a body that ends at close looks whole when its connection is cut
            limits.check()
        file.seek(0)
    except BaseException:
        file.close()
        raise
    elapsed = time.monotonic() - limits.started
    logger.info("Fetched %s: %d bytes in %.2f s", _shown(target), size, elapsed)
    return file


def _download(
    client: httpx.Client,
    url: httpx.URL,
    file: tempfile.SpooledTemporaryFile[bytes],
    limits: _Limits,
) -> int:
    """GET url into file, following redirects by hand; the number of bytes written."""
    settings = limits.settings
    request = client.build_request("GET", url)
    redirects = 0
    while True:
        limits.check()
        try:
            # Redirects are followed here rather than by httpx, which reads each redirect's
            # body into memory with no size limit. Each hop's waits end with the limits.
            request.extensions["timeout"] = httpx.Timeout(limits.read_timeout()).as_dict()
            response = client.send(request, stream=True)
            try:
                next_request = response.next_request
                if next_request is None:
                    _check_status(response)
                    return _read_body(response, file, limits)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise _translate(exc, request.url, limits) from exc
        except UnicodeError as exc:  # httpx reading a Location with a malformed name
            raise UpstreamError(
                f"{_ascii_host(request.url)} redirected to an invalid URL ({exc})."
            ) from exc
        if redirects >= settings.fetch_max_redirects:
            raise FetchError(
                f"The URL redirected more than {settings.fetch_max_redirects} times "
                "(WHISPERD_FETCH_MAX_REDIRECTS); give the file's final URL."
            )
        redirects += 1
        logger.info("%s redirects to %s", _shown(request.url), _shown(next_request.url))
        request = next_request


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    said = f"HTTP {status} {response.reason_phrase}".rstrip()
    logger.info("Fetch of %s failed: %s", _shown(response.url), said)
    if status >= 500 or status in (408, 425, 429):
        raise UpstreamError(
            f"The URL's server answered {said}; try again later.",
            upstream_status=status,
            retryable=True,
        )
    if 400 <= status < 500:
        message = (
            f"The URL answered {said}; check that it is correct and that the file "
            "can be downloaded without logging in."
        )
    else:
        message = f"The URL answered {said} instead of the file."
    raise FetchError(message, upstream_status=status)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The file at the URL is larger than the {limit} byte limit (WHISPERD_MAX_UPLOAD_BYTES).",
        param="url",
    )


def _read_body(
    response: httpx.Response, file: tempfile.SpooledTemporaryFile[bytes], limits: _Limits
) -> int:
    limit = limits.settings.max_upload_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    size = 0
    # Decoded bytes are counted, so a compressed body cannot expand past the limit. No
    # chunk_size: with one, httpx holds data back until a chunk fills, so a server
    # trickling bytes would never reach the checks.
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        file.write(chunk)
        limits.check()
    return size


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind an httpx error, if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _translate(exc: httpx.HTTPError, url: httpx.URL, limits: _Limits) -> FetchError:
    """The error to raise for an httpx error while fetching url."""
    host = _ascii_host(url)
    logger.info("Fetch of %s failed: %r", _shown(url), exc)
    limits.check()  # stopped, or out of time altogether: that is the error, not this one
    if isinstance(exc, httpx.TimeoutException):
        doing = {
            httpx.ConnectTimeout: "connecting to",
            httpx.ReadTimeout: "waiting for data from",
            httpx.WriteTimeout: "sending to",
        }.get(type(exc), "waiting for")
        return UpstreamTimeoutError(
            f"Timed out {doing} {shown(host)} after {limits.settings.fetch_timeout:g} s "
            "(WHISPERD_FETCH_TIMEOUT); try again later.",
            retryable=True,
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ForbiddenURLError(f"Only http and https URLs can be fetched: {exc}")
    tls = _ssl_error(exc)
    if tls is not None:
        if isinstance(tls, ssl.SSLCertVerificationError):
            return UpstreamError(
                f"The TLS certificate of {shown(host)} could not be verified "
                f"({tls.verify_message})."
            )
        return UpstreamError(f"The TLS handshake with {shown(host)} failed ({tls.reason or tls}).")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(f"Could not connect to {shown(host)}: {exc}", retryable=True)
    if isinstance(exc, httpx.DecodingError):
        return UpstreamError(f"{shown(host)} sent a body that could not be decoded: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError) and "location header" in str(exc).lower():
        return UpstreamError(f"{shown(host)} redirected to an invalid URL: {exc}")
    if isinstance(exc, httpx.TransportError):
        return UpstreamError(f"The connection to {shown(host)} failed: {exc}", retryable=True)
    return UpstreamError(f"Fetching from {shown(host)} failed: {exc}")
