"""``whisperd serve`` as a real process: graceful drain on SIGTERM, exit status, warnings."""

from __future__ import annotations

import concurrent.futures
import signal
from pathlib import Path

import httpx
import pytest

from support import assert_jfk, misbehaving_server, poll, server_process, speech_flac

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    speech = speech_flac(100)  # still in flight while the drain is checked
    env = {"WHISPERD_DRAIN_TIMEOUT": "120"}
    with server_process(tmp_path, env) as server, concurrent.futures.ThreadPoolExecutor() as pool:
        in_flight = pool.submit(
            httpx.post,
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("long.flac", speech)},
            timeout=180,
        )
        poll(lambda: "Processing audio" in server.output(), timeout=30)
        server.process.send_signal(signal.SIGTERM)

        def draining() -> bool:
            return httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503

        poll(draining, timeout=10)
        refused = httpx.post(
            f"{server.url}/v1/audio/transcriptions", files={"file": ("b.flac", speech)}, timeout=30
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "service_unavailable"
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200

        finished = in_flight.result(timeout=180)
        assert finished.status_code == 200
        assert_jfk(finished.json()["text"])
        assert server.process.wait(60) == 0, server.output()


def test_drain_timeout_bounds_the_wait(tmp_path: Path) -> None:
    speech = speech_flac(300)
    env = {"WHISPERD_DRAIN_TIMEOUT": "1"}
    with server_process(tmp_path, env) as server, concurrent.futures.ThreadPoolExecutor() as pool:
        in_flight = pool.submit(
            httpx.post,
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("long.flac", speech)},
            timeout=180,
        )
        poll(lambda: "Processing audio" in server.output(), timeout=30)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.output()
        with pytest.raises(httpx.HTTPError):
            in_flight.result(timeout=30).raise_for_status()


def test_the_drain_timeout_also_ends_url_fetches(tmp_path: Path) -> None:
    env = {"WHISPERD_DRAIN_TIMEOUT": "1", "WHISPERD_FETCH_ALLOW_HOSTS": "127.0.0.1"}
    with (
        misbehaving_server() as upstream,
        server_process(tmp_path, env) as server,
        concurrent.futures.ThreadPoolExecutor() as pool,
    ):
        url = upstream.url("/trickle")
        pool.submit(httpx.post, f"{server.url}/function/whisper", content=url, timeout=90)
        poll(lambda: upstream.serving == 1, timeout=30)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.output()


def test_public_host_without_keys_warns(tmp_path: Path) -> None:
    with server_process(tmp_path, {"WHISPERD_HOST": "0.0.0.0"}) as server:
        assert "NO API KEY" in server.output()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0


def test_bad_settings_are_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "whisperd", "serve"],
        env={"WHISPERD_COMPUTE_TYPE": "int3", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "compute_type" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (("--api-key", ""), {}, "it is empty"),
        (("--api-key", " "), {}, "it is empty"),
        ((), {"WHISPERD_API_KEYS": ", ,"}, "it is empty"),
        ((), {"WHISPERD_API_KEYS": " "}, "it is empty"),
        ((), {"WHISPERD_ADMIN_API_KEYS": " "}, "it is empty"),
        ((), {"WHISPERD_API_KEYS_FILE": "KEYS"}, "holds no key"),
    ],
)
def test_an_empty_api_key_is_refused_at_start(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    """``--api-key "$KEY"`` with KEY unset must not start a server that looks protected."""
    import subprocess
    import sys

    keys = tmp_path / "keys"
    keys.write_text("# no keys yet\n\n")
    result = subprocess.run(
        [sys.executable, "-m", "whisperd", "serve", "--port", "9", *args],
        env={
            "PATH": "/usr/bin:/bin",
            **{k: str(keys) if v == "KEYS" else v for k, v in env.items()},
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert said in result.stderr
    assert "Traceback" not in result.stderr
