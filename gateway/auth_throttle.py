"""Failed-login throttling per address and per client (MOST 15.2, MIC 15.2).

Counts failures in a sliding window in memory, plus the attempts still being
checked (argon2 takes ~80 ms: without them, N parallel connections would get N
guesses past the limit): a guesser is slowed down without a
database write per attempt, and a restart forgives, which is acceptable for a
window of minutes. Shared by SMTP AUTH and, later, the IMAP proxy.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(
        self,
        per_address: int,
        per_client: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.per_client = per_client
        self.window = window_seconds
        self._clock = clock
        self._by_address: defaultdict[str, deque[float]] = defaultdict(deque)
        self._by_client: defaultdict[str, deque[float]] = defaultdict(deque)
        self._checking_address: Counter[str] = Counter()
        self._checking_client: Counter[str] = Counter()

    def _recent(self, table: defaultdict[str, deque[float]], key: str) -> int:
        stamps = table.get(key)
        if not stamps:
            return 0
        horizon = self._clock() - self.window
        while stamps and stamps[0] < horizon:
            stamps.popleft()
        if not stamps:
            del table[key]
            return 0
        return len(stamps)

    def blocked(self, address: str, client: str) -> str | None:
        """Why a login from ``client`` as ``address`` must wait, or None."""
        key = address.lower()
        if self._recent(self._by_address, key) + self._checking_address[key] >= self.per_address:
            # Not the name itself: it may be a password typed into the user field. The
            # event's ``user`` carries it when it is safe to (auth.loggable_user).
            return "too many failed logins for this user name"
        if self._recent(self._by_client, client) + self._checking_client[client] >= self.per_client:
            return f"too many failed logins from {client}"
        return None

    def begin(self, address: str, client: str) -> None:
        """An attempt is being checked: it counts as a failure until ``end``."""
        self._checking_address[address.lower()] += 1
        self._checking_client[client] += 1

    def end(self, address: str, client: str) -> None:
        for table, key in (
            (self._checking_address, address.lower()),
            (self._checking_client, client),
        ):
            table[key] -= 1
            if table[key] <= 0:
                del table[key]

    MAX_KEYS = 100_000

    def failed(self, address: str, client: str) -> None:
        now = self._clock()
        self._by_address[address.lower()].append(now)
        self._by_client[client].append(now)
        for table in (self._by_address, self._by_client):
            if len(table) > self.MAX_KEYS:  # a guesser spraying addresses: drop stale keys
                for key in list(table):
                    self._recent(table, key)

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address.lower(), None)
