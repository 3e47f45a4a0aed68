"""Which words of a growing turn are stable enough to send: local agreement between successive
decodes of the turn. A word is sent once two decodes in a row agree on it and on the word
after it (the last word of a decode may still change, or gain its punctuation), so sent text
is never taken back."""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w']+")


def _plain(word: str) -> str:
    return _NOT_WORD.sub("", word.lower())


class StableText:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self._previous: list[str] | None = None

    @property
    def text(self) -> str:
        return " ".join(self.sent)

    def update(self, hypothesis: str) -> str:
        """The text to append after this decode of the turn (empty when nothing new is
        stable)."""
        words = hypothesis.split()
        previous, self._previous = self._previous, words
        done = len(self.sent)
        if previous is None or not (self._continues(words) and self._continues(previous)):
            return ""
        agreed = done
        while agreed < min(len(words), len(previous)) and words[agreed] == previous[agreed]:
            agreed += 1
        return self._send(words[done : agreed - 1])

    def finish(self, final: str) -> str:
        """What the final transcript adds to the text sent (empty if it does not continue
        the text sent: the final transcript is the one to keep)."""
        words = final.split()
        return self._send(words[len(self.sent) :]) if self._continues(words) else ""

    def _continues(self, words: list[str]) -> bool:
        return [_plain(w) for w in words[: len(self.sent)]] == [_plain(w) for w in self.sent]

    def _send(self, words: list[str]) -> str:
        if not words:
            return ""
        text = " ".join(words)
        if self.sent:
            text = " " + text
        self.sent.extend(words)
        return text
