"""OpenAI's GA Realtime protocol, transcription sessions: the session's configuration, the
client events it takes, and the server events it sends (plain dicts, as JSON goes out).

A session is configured by ``session.update`` events, each merged into what is set already
(a field given as ``null`` turns that part off, as ``turn_detection: null`` does); the result
is validated as a whole, so a bad update changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from whisperd import models
from whisperd.engine import clipped
from whisperd.errors import WhisperdError, shown

LOGPROBS = "item.input_audio_transcription.logprobs"
SUBPROTOCOL = "realtime"
"""The subprotocol browsers offer (with the key as ``openai-insecure-api-key.KEY``)."""
MAX_REASON = 120
"""Longest close reason sent (a close frame holds at most 123 bytes of it)."""
GOING_AWAY = 1001
"""The close code of a session ended by the server's drain."""
POLICY_VIOLATION = 1008
"""The close code of a session refused for good (no key, live transcription off)."""
TOO_MANY = 1013
"""The close code of a session refused while the server is full ("try again later")."""
CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
THRESHOLD = 0.5
PREFIX_PADDING_MS = 300
"""Server VAD's defaults, which semantic VAD uses too."""
EAGERNESS_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 500}
"""Semantic VAD's eagerness as the silence that ends a turn (server VAD decides here)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PcmFormat(_Model):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class G711Format(_Model):
    type: Literal["audio/pcmu", "audio/pcma"]


InputFormat = Annotated[PcmFormat | G711Format, Field(discriminator="type")]


class Transcription(_Model):
    model: str | None = "whisper-1"
    language: str | None = None
    prompt: str | None = None

    @field_validator("prompt")
    @classmethod
    def _readable(cls, prompt: str | None) -> str | None:
        return clipped(prompt, keep="tail")


class ServerVad(_Model):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(default=THRESHOLD, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=PREFIX_PADDING_MS, ge=0, le=5000)
    silence_duration_ms: int = Field(default=500, ge=100, le=10000)
    # taken for compatibility; a transcription session creates no responses
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None

    @property
    def silence_ms(self) -> int:
        return self.silence_duration_ms


class SemanticVad(_Model):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool | None = None
    interrupt_response: bool | None = None

    @property
    def threshold(self) -> float:
        return THRESHOLD

    @property
    def prefix_padding_ms(self) -> int:
        return PREFIX_PADDING_MS

    @property
    def silence_ms(self) -> int:
        return EAGERNESS_SILENCE_MS[self.eagerness]


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class NoiseReduction(_Model):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class AudioInput(_Model):
    format: InputFormat = Field(default_factory=PcmFormat)
    transcription: Transcription | None = Field(default_factory=Transcription)
    turn_detection: TurnDetection | None = Field(default_factory=lambda: ServerVad())
    noise_reduction: NoiseReduction | None = None


class Audio(_Model):
    input: AudioInput = Field(default_factory=AudioInput)


class SessionConfig(_Model):
    type: Literal["transcription"] = "transcription"
    audio: Audio = Field(default_factory=Audio)
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None

    @property
    def input(self) -> AudioInput:
        return self.audio.input

    @property
    def logprobs(self) -> bool:
        return LOGPROBS in (self.include or ())

    @property
    def model(self) -> str | None:
        """The engine's name for the model asked for (None: the default)."""
        transcription = self.input.transcription
        name = None if transcription is None else transcription.model
        return None if models.is_default(name) else name

    def updated(self, update: Any) -> SessionConfig:
        """This configuration with ``update`` (a ``session.update``'s session) merged in."""
        if not isinstance(update, dict):
            raise ProtocolError("session must be an object.", param="session")
        kind = update.get("type", "transcription")
        if kind != "transcription":
            raise ProtocolError(
                f"This server runs transcription sessions only, not {shown(str(kind))}; set "
                "session.type to 'transcription'.",
                param="session.type",
                code="invalid_value",
            )
        merged = _merge(self.model_dump(exclude_none=False), update)
        try:
            return SessionConfig.model_validate(merged)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(["session", *(str(p) for p in first["loc"] if not _tag(p))])
            code = "unknown_parameter" if first["type"] == "extra_forbidden" else "invalid_value"
            raise ProtocolError(
                f"Invalid {param}: {first['msg']}.", param=param, code=code
            ) from None

    def described(self, session_id: str) -> dict[str, Any]:
        """The session as ``session.created`` and ``session.updated`` show it."""
        return {"object": "realtime.transcription_session", "id": session_id, **self.model_dump()}


_TAGS = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma", "server_vad", "semantic_vad"})


def _tag(part: object) -> bool:
    """Whether a validation error's location part is a union's tag, not a field."""
    return part in _TAGS


def _merge(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``current``: objects merged key by key, anything else replaced; an
    object that changes its ``type`` replaces the old one whole."""
    merged = dict(current)
    for key, value in update.items():
        old = merged.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("type", old.get("type")) == old.get("type")
        ):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


class ProtocolError(WhisperdError):
    """A client event this session cannot take; answered with an ``error`` event."""

    error_type = "invalid_request_error"
    default_code = "invalid_event"


def parse(message: str | bytes | None) -> dict[str, Any]:
    """A client event: a JSON object with a ``type`` (see :func:`check_type`)."""
    if not isinstance(message, str):
        raise ProtocolError("Events are JSON text frames; this one was binary.")
    try:
        event = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: nested past what Python parses
        raise ProtocolError("The event is not valid JSON.", code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("An event is a JSON object with a 'type'.", param="type")
    return event


def check_type(event: dict[str, Any]) -> None:
    """Refuse an event whose ``type`` a transcription session does not take."""
    if event["type"] not in CLIENT_EVENTS:
        raise ProtocolError(
            f"Unknown or unsupported event type {shown(event['type'])}; a transcription "
            f"session takes {', '.join(CLIENT_EVENTS)}.",
            param="type",
        )


def audio_bytes(event: dict[str, Any]) -> bytes:
    """The audio of an ``input_audio_buffer.append`` event, base64-decoded."""
    data = event.get("audio")
    if not isinstance(data, str):
        raise ProtocolError("audio must be a base64 string.", param="audio")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "audio is not valid base64.", param="audio", code="invalid_base64"
        ) from None


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: WhisperdError, client_event_id: str | None = None) -> dict[str, Any]:
    """``error``, in OpenAI's shape, answering the client event ``client_event_id``."""
    return server_event("error", error={**error.to_dict()["error"], "event_id": client_event_id})


def user_item(item_id: str) -> dict[str, Any]:
    """The conversation item a committed turn becomes."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": None}],
    }
