"""Whose a job is: the API key that submitted it, kept as a fingerprint (never the key).

A key sees, lists and cancels only its own jobs; an admin key (``WHISPERD_ADMIN_API_KEYS``)
sees every job. A server with no keys is one tenant: every request sees every job, as an
admin would, and the per-key caps do not apply (only the totals).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from whisperd.settings import Settings


def fingerprint(key: str) -> str:
    """A key's fingerprint: 128 bits of its SHA-256, in hex (a key has far more entropy than
    a guess could search, so the fingerprint gives nothing away)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is asking: the fingerprint of the request's key ("" with no keys), and whether it
    sees every key's jobs."""

    fingerprint: str
    admin: bool = False

    @classmethod
    def of(cls, key: str | None, settings: Settings) -> Owner:
        """The owner of a request that sent ``key`` (None: the server has no keys)."""
        if key is None:
            return cls("", admin=True)
        mine = fingerprint(key)
        return cls(mine, admin=mine in {fingerprint(k) for k in settings.admin_api_keys})

    @property
    def scope(self) -> str | None:
        """The fingerprint whose jobs this owner sees; None for all of them."""
        return None if self.admin else self.fingerprint

    def sees(self, job_owner: str) -> bool:
        """Whether this owner may see a job submitted by ``job_owner`` (a fingerprint)."""
        return self.admin or job_owner == self.fingerprint
