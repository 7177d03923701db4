"""A short-lived memory of recipients the directory accepted, for the SMTP hot path.

Asking SQLite through a worker thread for every RCPT cost a fifth of the relay's CPU.
Only acceptances are remembered, for ``ttl`` seconds: a new mailbox is accepted at
once, and a revocation takes effect within ``ttl`` (the mail store behind us still
refuses what it does not know).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AcceptedRecipients:
    def __init__(
        self, ttl: float = 10.0, size: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._until: dict[str, float] = {}

    def __contains__(self, address: str) -> bool:
        until = self._until.get(address.lower())
        if until is None:
            return False
        if until < self._clock():
            del self._until[address.lower()]
            return False
        return True

    def add(self, address: str) -> None:
        if len(self._until) >= self.size:
            self._until.clear()  # rare; cheaper than tracking recency for every hit
        self._until[address.lower()] = self._clock() + self.ttl
