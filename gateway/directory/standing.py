"""Whether a logged-in user may send now, and as whom, remembered until the directory
changes.

Submission asks this at every MAIL FROM (MIC 6.4.c, 7.1; MOST 14.4). Two queries in a
worker thread per message cost a third of the submission path's CPU, mostly in thread
handoffs and waits for the GIL. The answer depends only on the directory and the date,
so it is kept until either changes: any commit, by serve or by a ``mailgate`` command in
another process, moves the directory's data version and the next MAIL FROM reads again.
It is never older than the last commit: a lock applies to the very next message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime

from gateway.directory.lifecycle import effective_state, sendable_identities
from gateway.directory.mailboxes import Directory


@dataclass(frozen=True, slots=True)
class Standing:
    state: str  # effective: "active", "locked", "revoked", ... or "gone"
    reason: str | None
    identities: frozenset[str]  # who the user may send as; empty unless active


def read_standing(directory: Directory, user: str, today: date) -> Standing:
    """Both reads, in one thread hop. Blocking."""
    mailbox = directory.get(user)
    state, reason = effective_state(mailbox, today) if mailbox else ("gone", None)
    if state != "active":
        return Standing(state, reason, frozenset())
    return Standing(state, reason, sendable_identities(directory, user, today))


class SenderStandings:
    def __init__(self, directory: Directory, size: int = 10_000) -> None:
        self._directory = directory
        self._size = size
        self._known: dict[tuple[str, date], tuple[int, Standing]] = {}

    async def of(self, user: str) -> Standing:
        today = datetime.now(UTC).date()
        key = (user.lower(), today)
        version = self._directory.data_version()  # before the read: a race reads again
        known = self._known.get(key)
        if known is not None and version is not None and known[0] == version:
            return known[1]
        standing = await asyncio.to_thread(read_standing, self._directory, user, today)
        if version is not None:
            if len(self._known) >= self._size:
                self._known.clear()  # rare; cheaper than tracking recency for every hit
            self._known[key] = (version, standing)
        return standing
