"""The host measured on (CPU, cores, memory, load), and a local server's PID and memory."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, memory, load average."""
    from whisperd.engine import available_cores

    cpu = platform.processor() or platform.machine()
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "usable_cores": available_cores(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": list(os.getloadavg()),
    }


def describe(info: Mapping[str, Any]) -> str:
    """``AMD EPYC, 2 cores, 23.5 GiB``: for titles and headings."""
    cores = info["cores"]
    usable = info.get("usable_cores", cores)
    text = f"{info['cpu']}, {cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    if info.get("memory_bytes"):
        text += f", {info['memory_bytes'] / 2**30:.1f} GiB"
    return text


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``1.02 0.87 0.60``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (VmRSS in ``/proc/PID/status``); None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def pid_listening_on(port: int) -> int | None:
    """The local process listening on TCP ``port`` (one of ours: /proc shows only those)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cells = line.split()
                if len(cells) > 9 and cells[3] == "0A" and int(cells[1].split(":")[1], 16) == port:
                    inodes.add(f"socket:[{cells[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def local_pid(url: str) -> int | None:
    """The PID of the server at ``url`` when it runs on this machine, else None."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    return pid_listening_on(parts.port or (443 if parts.scheme == "https" else 80))
