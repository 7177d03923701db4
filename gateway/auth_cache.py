"""Logins verified recently, so a client that reconnects for every message (msmtp,
Outlook, phones, IMAP clients all day) costs one argon2 verification per ``ttl``,
not one per connection (Dovecot's ``auth_cache_*`` does the same).

An entry holds an HMAC of the address and the NFC password under a key drawn at
process start, never the password: a memory dump gives an attacker nothing to test
offline without the key, and the key dies with the process. Each entry also holds
a *version* of the mailbox row (its stored hash and every field its state is made
of), so a change made anywhere, by this process or by the CLI in another one,
no longer matches on the next login: the authenticator compares it against a fresh
read of the row on every hit. Only successes are remembered.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.directory.mailboxes import Mailbox
from gateway.directory.passwords import normalized


@dataclass(frozen=True, slots=True)
class _Entry:
    proof: bytes  # HMAC(address, password)
    version: bytes  # HMAC of the row's hash and state fields when it was proved
    until: float


class VerifiedLogins:
    """At most ``size`` entries (least recently used go first), each for ``ttl`` seconds;
    ``size`` 0 remembers nothing."""

    def __init__(
        self, ttl: float = 3600.0, size: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _mac(self, *parts: str) -> bytes:
        message = "\0".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def version(self, mailbox: Mailbox, stored_hash: str | None) -> bytes:
        """What must not have changed for a remembered login to stand: the password (its
        hash), and the stored state with everything its deadlines are computed from."""
        return self._mac(
            stored_hash or "",
            mailbox.kind,
            mailbox.state,
            mailbox.lock_reason or "",
            mailbox.state_changed_at or "",
            mailbox.retire_on or "",
            mailbox.rank,
            mailbox.password_changed_at or "",
        )

    def proves(self, address: str, password: str, version: bytes) -> bool:
        """True if ``address`` proved ``password`` within ``ttl`` and its row is unchanged.
        A stale or outdated entry is dropped; a wrong password leaves the entry alone (it
        is still the right one), and the caller verifies it the slow way."""
        entry = self._entries.get(address)
        if entry is None:
            self.misses += 1
            return False
        if entry.until < self._clock() or not hmac.compare_digest(entry.version, version):
            del self._entries[address]
            self.misses += 1
            return False
        if not hmac.compare_digest(entry.proof, self._mac(address, normalized(password))):
            self.misses += 1
            return False
        self._entries.move_to_end(address)
        self.hits += 1
        return True

    def remember(self, address: str, password: str, version: bytes) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        proof = self._mac(address, normalized(password))
        self._entries[address] = _Entry(proof, version, self._clock() + self.ttl)
        self._entries.move_to_end(address)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, address: str) -> None:
        """Drop ``address`` now (a change this process made, or a refusal)."""
        self._entries.pop(address, None)

    def resize(self, ttl: float, size: int) -> None:
        """SIGHUP: a shorter lifetime applies to entries made before it, too."""
        self.size = size
        now = self._clock()
        if ttl < self.ttl:
            for address, entry in list(self._entries.items()):
                if entry.until > now + ttl:
                    self._entries[address] = _Entry(entry.proof, entry.version, now + ttl)
        self.ttl = ttl
        while len(self._entries) > max(size, 0):
            self._entries.popitem(last=False)
