"""The one settings object. Every field is also an environment variable: ``WHISPERD_<NAME>``."""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
ComputeType = Literal[
    "auto",
    "default",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
]
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "tsv", "diarized_json"]
StrList = Annotated[tuple[str, ...], NoDecode]


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "whisperd"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "whisperd"


def _entries(value: object) -> object:
    """A list setting's entries: a string (or each string of a list, as repeated flags give)
    split at commas, stripped, without the empty ones."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        parts = (part.strip() for entry in value for part in str(entry).split(","))
        return tuple(part for part in parts if part)
    return value


class Settings(BaseSettings):
    """whisperd's configuration; read from ``WHISPERD_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="WHISPERD_",
        env_file=None,
        extra="ignore",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    # --- server -----------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Interface to listen on; use 0.0.0.0 in a container (and set API keys)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""
    tls_certfile: Path | None = None
    """A PEM certificate (chain) to serve HTTPS and wss:// with, beside `tls_keyfile`; a
    browser gives the page's microphone only to an https page or one at localhost."""
    tls_keyfile: Path | None = None
    """The PEM private key of `tls_certfile`."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""
    log_format: Literal["text", "json"] = "text"
    """Log line format: human-readable text or one JSON object per line."""

    # --- model and engine -------------------------------------------------------------
    model: str = "tiny.en"
    """Model served by default (and for OpenAI's `whisper-1`): a catalog name, a model of
    `models_dir`, or the path of a directory holding a CTranslate2 Whisper model."""
    preload_models: StrList = ()
    """More models to load at start and keep loaded, besides `model` (the same kinds of name;
    comma-separated in the environment)."""
    models_dir: Path | None = None
    """A directory of CTranslate2 Whisper models (each a subdirectory with model.bin and
    config.json) that clients may name by the subdirectory's name."""
    load_on_demand: bool = True
    """Load another model the first time a request names it (a catalog name or a model of
    `models_dir`; clients never name paths)."""
    max_loaded_models: int = Field(3, ge=1)
    """Most models in memory at once; loading another unloads the least recently used idle one
    (the default and preloaded models stay), or answers 503 while all are in use."""
    model_ttl: float = Field(3600.0, ge=0)
    """Seconds a model loaded on demand stays in memory unused; 0 keeps it until it is the
    least recently used one and room is needed."""
    device: Device = "auto"
    """Where inference runs: `auto` picks CUDA when CTranslate2 sees a GPU, else CPU."""
    compute_type: ComputeType = "auto"
    """CTranslate2 compute type; `auto` is float16 on CUDA and int8 on CPU."""
    cpu_threads: int = Field(0, ge=0)
    """CPU threads of the engine's batches, all together; 0 means every available core."""
    cpu_workers: int = Field(0, ge=0)
    """Batches run at once on a CPU, the threads shared among them; 0 means one per thread,
    up to 4."""
    batch_size: int = Field(0, ge=0, le=64)
    """Most 30 s windows decoded together in one batch, across all requests; 0 means 4
    shared among the CPU's workers (2 each with two, and at least 2 each) and, on a GPU,
    what half its free memory holds (at most 32)."""
    max_active: int = Field(0, ge=0)
    """Requests decoded and batched at once; 0 means twice the windows of all the batches."""
    max_queue: int = Field(16, ge=0)
    """Requests waiting (not yet decoded) beyond the active ones; more get 429."""
    beam_size: int = Field(5, ge=1, le=20)
    """Default beam size."""
    vad_filter: bool = True
    """Default for the VAD filter: leaves out silences of 2 s or more, where Whisper invents
    text (the speech around them is decoded whole)."""
    section_seconds: float = Field(
        300.0,
        ge=30,
        validation_alias=AliasChoices(
            "section_seconds", "whisperd_section_seconds", "whisperd_chunk_seconds"
        ),
    )
    """Longer audio is decoded and transcribed in sections of about this length, cut at
    pauses, so a request's memory is bounded by a section, not by the file (the older name
    WHISPERD_CHUNK_SECONDS is read too)."""
    model_cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where assembled bundled models and downloaded models are kept."""
    offline: bool = False
    """Never contact a model hub, even for models that are not local."""

    # --- limits -----------------------------------------------------------------------
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1)
    """Largest accepted upload or fetched file, in bytes (default 200 MiB)."""
    max_audio_seconds: float = Field(4 * 3600.0, gt=0)
    """Longest audio accepted, in seconds; longer input is refused before inference."""
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Largest request line and headers together, in bytes; larger requests get 431."""
    header_timeout: float = Field(30.0, gt=0)
    """Seconds a client may take to send a request line and headers; slower ones get 408."""
    request_timeout: float = Field(600.0, gt=0)
    """Execution deadline for a synchronous request, in seconds (504 beyond it)."""
    drain_timeout: float = Field(30.0, ge=0)
    """On SIGTERM, how long in-flight requests may run before the server exits."""
    tmp_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()))
    """Where uploads are spooled while a request runs."""

    # --- live transcription -----------------------------------------------------------
    realtime_max_sessions: int = Field(16, ge=0)
    """Live transcription sessions (the /v1/realtime WebSocket) at once; more are refused with
    an error event and close code 1013. 0 turns live transcription off."""
    realtime_idle_timeout: float = Field(60.0, gt=0)
    """Seconds a live session may send nothing the server takes (an event answered with an
    error does not count) before the server closes it."""
    realtime_max_turn_seconds: float = Field(30.0, ge=1, le=600)
    """Longest live turn: one that reaches it is committed and transcribed, as if the speaker
    had paused."""
    realtime_partial_interval: float = Field(0.5, gt=0)
    """Seconds between decodes of a growing live turn, for its partial text."""

    # --- URL fetching -----------------------------------------------------------------
    fetch_timeout: float = Field(30.0, gt=0)
    """Connect and read timeout for fetching an audio URL, in seconds."""
    fetch_total_timeout: float = Field(300.0, gt=0)
    """Overall time limit for fetching an audio URL, in seconds."""
    fetch_allow_hosts: StrList = ()
    """Hosts or CIDR ranges that URL fetching may reach even when private (trusted internal)."""
    fetch_max_redirects: int = Field(5, ge=0)
    """Redirects followed when fetching a URL."""
    fetch_enabled: bool = True
    """Accept audio and callback URLs; false refuses them (400) before any DNS lookup."""
    fetch_concurrency: int = Field(16, ge=1)
    """Audio URLs the API fetches at once, on threads of their own; more get 429."""

    # --- security ---------------------------------------------------------------------
    api_keys: StrList = ()
    """API keys accepted as `Authorization: Bearer KEY`; none configured means no auth."""
    api_keys_file: Path | None = None
    """A file with one API key per line (blank lines and # comments ignored)."""
    admin_api_keys: StrList = ()
    """API keys accepted like `api_keys` that also see and cancel every key's jobs (each other
    key sees only its own)."""
    metrics_public: bool = False
    """Serve /metrics without an API key (for a Prometheus that cannot send a bearer token)."""
    metrics_port: int = Field(0, ge=0, le=65535)
    """`whisperd worker` serves its Prometheus metrics on this port (on WHISPERD_HOST); 0: off."""

    # --- jobs -------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where the embedded Redis keeps its append-only file."""
    redis_url: str | None = None
    """The Redis (redis://...) API servers and workers share; unset, `serve` runs an embedded
    Redis in the data dir (a worker needs one set)."""
    queue_consumers: bool = True
    """Run job consumers in this server process (false: API only; jobs run on workers)."""
    job_ttl: float = Field(24 * 3600.0, gt=0)
    """How long a finished job's record and result are kept, in seconds."""
    job_max_retries: int = Field(3, ge=0)
    """Retries of a transient job failure, with exponential backoff."""
    job_max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1)
    """Largest file stored in Redis for an uploaded job, in bytes."""
    job_max_queued: int = Field(1000, ge=1)
    """Jobs accepted and not yet ended (queued or running), all keys together; more get 429."""
    job_max_queued_per_key: int = Field(100, ge=1)
    """Jobs accepted and not yet ended for one API key; more get 429 (no keys: only the total)."""
    job_max_queued_bytes: int = Field(0, ge=0)
    """Uploaded bytes held in Redis by jobs not yet ended, all keys together; more get 429.
    0 means 3 x job_max_upload_bytes (300 MiB by default)."""
    job_max_queued_bytes_per_key: int = Field(0, ge=0)
    """Uploaded bytes held in Redis by one API key's jobs not yet ended; more get 429.
    0 means 2 x job_max_upload_bytes (200 MiB by default), at most the total."""
    callback_secret: str | None = None
    """Secret for the HMAC-SHA256 signature header on job callbacks."""
    callback_max_retries: int = Field(8, ge=0)
    """Retries of a failed callback delivery, with exponential backoff."""
    jobs_enabled: bool = True
    """Serve the async job endpoints (they need Redis); false serves the synchronous API only."""
    job_workers: int = Field(0, ge=0)
    """Jobs run at once by one process; 0 means 2."""
    job_time_limit: float = Field(6 * 3600.0, gt=0)
    """Longest a job's transcription may run, in seconds; past it the job fails."""
    job_chunk_seconds: float = Field(600.0, ge=60)
    """Longer jobs are cut at pauses into chunks of about this many seconds, run by any worker."""
    job_retry_backoff: float = Field(5.0, gt=0)
    """Delay before the first retry of a transient job failure, in seconds; doubles each retry."""
    job_poll_interval: float = Field(1.0, gt=0)
    """Seconds between polls of an idle queue consumer, and between checks of cancels and leases."""
    job_heartbeat_timeout: float = Field(30.0, gt=0)
    """Seconds without a heartbeat after which a worker is dead and its jobs run elsewhere."""
    callback_workers: int = Field(2, ge=1)
    """Callback deliveries in flight at once, per process."""
    callback_timeout: float = Field(10.0, gt=0)
    """Time limit of one callback delivery (connecting, sending, the answer's head), in
    seconds."""
    callback_retry_backoff: float = Field(2.0, gt=0)
    """Delay before the first retry of a failed callback, in seconds; doubles each retry."""

    @field_validator("preload_models", "fetch_allow_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return _entries(value)

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        """Keys without the empty entries; keys given but all empty are an error (an unset
        variable in ``--api-key "$KEY"`` must not leave the server open). An empty
        WHISPERD_API_KEYS is the same as leaving it unset; one of only spaces or commas is
        not."""
        keys = _entries(value)
        if value and not keys:
            msg = "an API key was given, but it is empty; give a key, or none"
            raise ValueError(msg)
        return keys

    @model_validator(mode="after")
    def _check(self) -> Settings:
        for entry in self.fetch_allow_hosts:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    msg = f"fetch_allow_hosts: {entry!r} is not a valid CIDR range"
                    raise ValueError(msg) from exc
        if self.job_heartbeat_timeout < 3 * self.job_poll_interval:
            msg = (
                "job_heartbeat_timeout must be at least 3 x job_poll_interval (heartbeats are "
                "sent at each poll); raise WHISPERD_JOB_HEARTBEAT_TIMEOUT or lower "
                "WHISPERD_JOB_POLL_INTERVAL"
            )
            raise ValueError(msg)
        pinned = len({self.model, *self.preload_models})
        if pinned > self.max_loaded_models:
            msg = (
                f"max_loaded_models ({self.max_loaded_models}) is less than the {pinned} models "
                "loaded at start (model and preload_models); raise WHISPERD_MAX_LOADED_MODELS"
            )
            raise ValueError(msg)
        if self.api_keys_file is not None:
            if not self.api_keys_file.is_file():
                msg = f"api_keys_file: {self.api_keys_file} does not exist; create it or unset it"
                raise ValueError(msg)
            if not self._file_keys():
                msg = f"api_keys_file: {self.api_keys_file} holds no key (one key per line)"
                raise ValueError(msg)
        self._check_tls()
        for name in ("job_max_queued_bytes", "job_max_queued_bytes_per_key"):
            value = getattr(self, name)
            if 0 < value < self.job_max_upload_bytes:
                msg = (
                    f"{name} ({value}) is below job_max_upload_bytes "
                    f"({self.job_max_upload_bytes}): an upload of the largest size could never "
                    f"be queued; raise WHISPERD_{name.upper()} (or 0 for the default) or lower "
                    "WHISPERD_JOB_MAX_UPLOAD_BYTES"
                )
                raise ValueError(msg)
        return self

    def _check_tls(self) -> None:
        """Both TLS files or neither, and a key that is the certificate's."""
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            msg = "tls_certfile and tls_keyfile go together: set both (or neither)"
            raise ValueError(msg)
        if self.tls_certfile is None or self.tls_keyfile is None:
            return
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls_certfile, self.tls_keyfile)
        except (OSError, ssl.SSLError) as exc:
            msg = (
                f"tls_certfile {self.tls_certfile} and tls_keyfile {self.tls_keyfile} are not "
                f"a readable PEM certificate and its key: {exc}"
            )
            raise ValueError(msg) from exc

    @property
    def job_queued_bytes_limit(self) -> int:
        """Uploaded bytes that jobs not yet ended may hold in Redis, all keys together."""
        return self.job_max_queued_bytes or 3 * self.job_max_upload_bytes

    @property
    def job_queued_bytes_per_key_limit(self) -> int:
        """Uploaded bytes that one key's jobs not yet ended may hold in Redis."""
        if self.job_max_queued_bytes_per_key:
            return self.job_max_queued_bytes_per_key
        return min(2 * self.job_max_upload_bytes, self.job_queued_bytes_limit)

    def _file_keys(self) -> set[str]:
        if self.api_keys_file is None:
            return set()
        lines = (line.strip() for line in self.api_keys_file.read_text().splitlines())
        return {line for line in lines if line and not line.startswith("#")}

    def all_api_keys(self) -> frozenset[str]:
        """The configured keys, from the settings (admin keys too) and the key file."""
        return frozenset({*self.api_keys, *self.admin_api_keys, *self._file_keys()})

    def is_loopback_host(self) -> bool:
        """Whether `host` only accepts connections from this machine."""
        if self.host in ("localhost", ""):
            return self.host == "localhost"
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
