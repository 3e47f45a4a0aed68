"""What a request asks about speakers, checked: by voice or by channel, known speakers' names
and reference clips (OpenAI's ``known_speaker_names[]`` / ``known_speaker_references[]``),
and bounds on how many speakers to find."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from whisperd import audio
from whisperd.errors import AudioError, AudioTooLongError, InvalidRequestError, shown

MAX_KNOWN_SPEAKERS = 8
MAX_SPEAKERS = 32
MAX_NAME_LENGTH = 64
REFERENCE_SECONDS = (2.0, 10.0)
"""How long a reference clip may be (as OpenAI takes them), with a little slack each side."""
_SLACK_SECONDS = 0.1
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)")
_NAMES = "known_speaker_names[]"
_REFERENCES = "known_speaker_references[]"


@dataclass(frozen=True, slots=True)
class SpeakerOptions:
    """How to tell speakers apart: by voice (``diarize``) or by channel (``multichannel``),
    with the names of known speakers (and, by voice, the embeddings of their references)."""

    diarize: bool = False
    multichannel: bool = False
    names: tuple[str, ...] = ()
    references: tuple[tuple[float, ...], ...] = ()
    min_speakers: int | None = None
    max_speakers: int | None = None

    @property
    def active(self) -> bool:
        return self.diarize or self.multichannel

    @property
    def by_voice(self) -> bool:
        """Whether voices are told apart by the speaker model (not by channel)."""
        return self.diarize and not self.multichannel


NO_SPEAKERS = SpeakerOptions()
CARRY_SPEAKERS = ("diarized_json", "verbose_json", "srt", "vtt", "tsv")
"""The formats that show who said what (json and text have the words alone)."""


@dataclass(frozen=True, slots=True)
class SpeakerFields:
    """A request's speaker fields as sent, before they are checked."""

    diarize: bool = False
    multichannel: bool = False
    names: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    min_speakers: int | None = None
    max_speakers: int | None = None
    chunking_strategy: str | None = None

    def checked(self, response_format: str) -> SpeakerOptions:
        """The options for a transcript in ``response_format`` (diarized_json tells speakers
        apart by voice unless it is told by channel), checked; references are embedded."""
        if self.diarize and response_format not in CARRY_SPEAKERS:
            raise InvalidRequestError(
                f"diarize=true labels speakers in {', '.join(CARRY_SPEAKERS)}; "
                f"response_format {response_format} has no speakers.",
                param="diarize",
            )
        return asked(
            diarize=self.diarize or response_format == "diarized_json",
            multichannel=self.multichannel,
            names=self.names,
            references=self.references,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
            chunking_strategy=self.chunking_strategy,
        )


def asked(
    *,
    diarize: bool,
    multichannel: bool,
    names: Sequence[str] = (),
    references: Sequence[str] = (),
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    chunking_strategy: str | None = None,
) -> SpeakerOptions:
    """The options a request asks for, checked; the references embedded (by voice)."""
    check_chunking(chunking_strategy)
    names = tuple(_name(n) for n in names)
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise InvalidRequestError(
            f"At most {MAX_KNOWN_SPEAKERS} known speakers, not {len(names)}.", param=_NAMES
        )
    if len(set(names)) < len(names):
        raise InvalidRequestError("known_speaker_names[] holds a name twice.", param=_NAMES)
    if (names or references or min_speakers or max_speakers) and not (diarize or multichannel):
        raise InvalidRequestError(
            "Known speakers and speaker counts need response_format=diarized_json, "
            "diarize=true or multichannel=true.",
            param=_NAMES if names or references else "min_speakers",
        )
    if multichannel:
        return _by_channel(names, references, min_speakers, max_speakers)
    if len(names) != len(references):
        raise InvalidRequestError(
            f"Send one reference clip per known speaker: {len(names)} name(s), "
            f"{len(references)} reference(s).",
            param=_NAMES if len(names) > len(references) else _REFERENCES,
        )
    _check_counts(min_speakers, max_speakers)
    if diarize:
        from whisperd.speakers.encoder import voice_encoder

        voice_encoder()  # refuses now, before any work, if the speaker model is missing
    embedded = tuple(reference_embedding(r) for r in references)
    return SpeakerOptions(
        diarize=diarize,
        names=names,
        references=embedded,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
    )


def _by_channel(
    names: tuple[str, ...],
    references: Sequence[str],
    min_speakers: int | None,
    max_speakers: int | None,
) -> SpeakerOptions:
    if references:
        raise InvalidRequestError(
            "With multichannel=true the speaker is the channel: name the channels with "
            "known_speaker_names[] alone (in channel order), without references.",
            param=_REFERENCES,
        )
    if min_speakers is not None or max_speakers is not None:
        raise InvalidRequestError(
            "With multichannel=true each channel is one speaker: min_speakers and "
            "max_speakers are for diarization by voice.",
            param="min_speakers" if min_speakers is not None else "max_speakers",
        )
    return SpeakerOptions(multichannel=True, names=names)


def _name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"A known speaker's name has 1 to {MAX_NAME_LENGTH} characters, not {shown(name)}.",
            param=_NAMES,
        )
    return name


def _check_counts(least: int | None, most: int | None) -> None:
    for param, value in (("min_speakers", least), ("max_speakers", most)):
        if value is not None and not 1 <= value <= MAX_SPEAKERS:
            raise InvalidRequestError(
                f"{param} must be 1 to {MAX_SPEAKERS}, not {value}.", param=param
            )
    if least is not None and most is not None and least > most:
        raise InvalidRequestError(
            f"min_speakers ({least}) is above max_speakers ({most}).", param="min_speakers"
        )


def check_chunking(value: str | None) -> None:
    """OpenAI's ``chunking_strategy``: ``auto``, or a ``server_vad`` object as JSON. Either
    is accepted: the server always cuts long audio at pauses."""
    if value is None or value.strip() == "auto":
        return
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict) or parsed.get("type") != "server_vad":
        raise InvalidRequestError(
            f"chunking_strategy is 'auto' or a JSON object of type server_vad, not {shown(value)}.",
            param="chunking_strategy",
        )
    for name, (least, most) in _SERVER_VAD.items():
        number = parsed.get(name, least)
        if isinstance(number, bool) or not isinstance(number, int | float):
            number = math.nan
        if not least <= number <= most:  # NaN fails too
            raise InvalidRequestError(
                f"chunking_strategy's {name} is a number from {least:g} to {most:g}, not "
                f"{shown(str(parsed[name]))}.",
                param="chunking_strategy",
            )


_SERVER_VAD = {
    "threshold": (0.0, 1.0),
    "prefix_padding_ms": (0, 60_000),
    "silence_duration_ms": (0, 60_000),
}
"""The numbers a ``server_vad`` chunking strategy may hold, with their ranges."""


def reference_audio(value: str) -> audio.Audio:
    """A reference clip from its data URL, decoded, of ``REFERENCE_SECONDS``."""
    match = _DATA_URL.fullmatch(value.strip())
    if match is None:
        cut = ";base64," not in value and value.strip().startswith("data:")
        hint = (
            " (its base64 data is missing: curl's -F cuts a value at ';', --form-string does not)"
        )
        raise InvalidRequestError(
            "A known speaker's reference is a data URL of audio "
            f"(data:audio/wav;base64,...), not {shown(value)}{hint if cut else ''}.",
            param=_REFERENCES,
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            "A known speaker's reference is not valid base64.", param=_REFERENCES
        ) from None
    shortest, longest = REFERENCE_SECONDS
    try:
        samples = audio.decode(data, max_seconds=longest + _SLACK_SECONDS)
    except AudioTooLongError:
        raise InvalidRequestError(
            f"A known speaker's reference lasts over {longest:g} s; send {shortest:g} to "
            f"{longest:g} s of their speech.",
            param=_REFERENCES,
        ) from None
    except AudioError as exc:
        raise InvalidRequestError(
            f"A known speaker's reference is not usable audio: {exc.message}",
            param=_REFERENCES,
        ) from None
    if audio.duration(samples) < shortest - _SLACK_SECONDS:
        raise InvalidRequestError(
            f"A known speaker's reference lasts {audio.duration(samples):.1f} s; send "
            f"{shortest:g} to {longest:g} s of their speech.",
            param=_REFERENCES,
        )
    return samples


def reference_embedding(value: str) -> tuple[float, ...]:
    """The voice embedding of a reference clip (a data URL)."""
    from whisperd.speakers.encoder import voice_encoder

    vector = voice_encoder().embed_utterance(reference_audio(value))
    return tuple(float(x) for x in vector)
