"""A short-lived memory of recipients the directory accepted, for the SMTP hot path.

Asking SQLite through a worker thread for every RCPT cost a fifth of the relay's CPU.
Only acceptances are remembered, for ``ttl`` seconds at most, and all are forgotten as
soon as the directory's data version moves (any commit, by any process): a new mailbox
is accepted at once, and a revocation applies to the next RCPT.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AcceptedRecipients:
    def __init__(
        self,
        ttl: float = 10.0,
        size: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
        version: Callable[[], int | None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._version_now = version  # Directory.data_version; None: the ttl alone
        self._version: int | None = None
        # Bumped whenever everything is forgotten: an answer read before that (a lookup
        # in flight while another session saw the new version, or a SIGHUP) is not kept.
        self.generation = 0
        self._until: dict[str, float] = {}

    def _follow_directory(self) -> None:
        """Forget everything once the directory changed (or its version is unreadable)."""
        if self._version_now is None:
            return
        version = self._version_now()
        if version is None or version != self._version:
            self._forget()
            self._version = version

    def _forget(self) -> None:
        self._until.clear()
        self.generation += 1

    def __contains__(self, address: str) -> bool:
        self._follow_directory()
        until = self._until.get(address.lower())
        if until is None:
            return False
        if until < self._clock():
            del self._until[address.lower()]
            return False
        return True

    def clear(self) -> None:
        """A new config (SIGHUP) may change what a mailbox is (groups turned on or off)."""
        self._forget()

    def add(self, address: str, generation: int | None = None) -> None:
        """Remember ``address`` as accepted, unless everything was forgotten since the
        lookup began (``generation``: the value read before it)."""
        if generation is not None and generation != self.generation:
            return
        if len(self._until) >= self.size:
            self._until.clear()  # rare; cheaper than tracking recency for every hit
        self._until[address.lower()] = self._clock() + self.ttl
