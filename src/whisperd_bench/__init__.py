"""Benchmarks of whisperd: load generation, real speech to send, word error rate, reports.

A package apart from ``whisperd``: the server never imports it (``tests/test_bench.py``
checks), only the ``whisperd bench`` command does, when it runs. The ``bench/`` scripts
use the names below (``import whisperd_bench as b``); the report's tables and plots are in
:mod:`whisperd_bench.report`, which ``whisperd bench`` imports by itself.

- :mod:`~whisperd_bench.load`: clips, concurrent clients, levels, the whole benchmark;
- :mod:`~whisperd_bench.servers`: a server at a URL, or ``whisperd serve`` started for a run;
- :mod:`~whisperd_bench.host`: the machine measured on, a local server's PID and memory;
- :mod:`~whisperd_bench.speech`: real speech of a given length, with its text;
- :mod:`~whisperd_bench.wer`: the word error rate.
"""

from whisperd_bench.errors import BenchError
from whisperd_bench.host import (
    describe,
    load_average,
    local_pid,
    machine,
    pid_listening_on,
    rss_bytes,
)
from whisperd_bench.load import (
    AUDIO_SUFFIXES,
    OPENAI_PRICE_PER_MINUTE,
    STATUS_CLASSES,
    TRANSCRIPTIONS,
    Client,
    Clip,
    Level,
    Outcome,
    Report,
    collect_clips,
    default_audio_dir,
    parse_named,
    percentile,
    run_bench,
    run_level,
    status_class,
    warm_up,
)
from whisperd_bench.servers import Server, free_port, started_server
from whisperd_bench.speech import (
    PROMPTS_DIR,
    PROMPTS_PACKAGES,
    PROMPTS_TEXT,
    first_seconds,
    looped_speech,
    prompt_speech,
    prompt_utterances,
)
from whisperd_bench.wer import word_error_rate, word_errors, words

__all__ = [
    "AUDIO_SUFFIXES",
    "OPENAI_PRICE_PER_MINUTE",
    "PROMPTS_DIR",
    "PROMPTS_PACKAGES",
    "PROMPTS_TEXT",
    "STATUS_CLASSES",
    "TRANSCRIPTIONS",
    "BenchError",
    "Client",
    "Clip",
    "Level",
    "Outcome",
    "Report",
    "Server",
    "collect_clips",
    "default_audio_dir",
    "describe",
    "first_seconds",
    "free_port",
    "load_average",
    "local_pid",
    "looped_speech",
    "machine",
    "parse_named",
    "percentile",
    "pid_listening_on",
    "prompt_speech",
    "prompt_utterances",
    "rss_bytes",
    "run_bench",
    "run_level",
    "started_server",
    "status_class",
    "warm_up",
    "word_error_rate",
    "word_errors",
    "words",
]
