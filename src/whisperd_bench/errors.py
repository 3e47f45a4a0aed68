"""The benchmarks' error."""

from __future__ import annotations


class BenchError(Exception):
    """The benchmark cannot run as asked (no audio, a server that does not start, ...)."""
