"""Mailboxes: who may authenticate, and what state they are in.

A first cut for SMTP AUTH; the directory issue grows it (kinds, units, lifecycle,
delegation, groups) in place.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.directory import db
from gateway.directory.passwords import hash_password, policy_violation, verify_password

KINDS = ("personal", "unit", "group")
CAN_AUTHENTICATE = ("active", "send-locked")


class DirectoryError(Exception):
    """A refused directory change; the message is the one-line reason shown to the operator."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str
    full_name: str
    kind: str
    state: str
    must_change: bool
    created_at: str
    last_access: str | None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Directory:
    """The directory database; methods are blocking (call them via ``asyncio.to_thread``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = db.connect(path)
        self._lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Directory:
        return cls(data_dir / "directory.sqlite3")

    def _row(self, address: str) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(
                "SELECT * FROM mailboxes WHERE address = ?", (address,)
            ).fetchone()

    def get(self, address: str) -> Mailbox | None:
        row = self._row(address)
        if row is None:
            return None
        return Mailbox(
            row["address"],
            row["full_name"],
            row["kind"],
            row["state"],
            bool(row["must_change"]),
            row["created_at"],
            row["last_access"],
        )

    def add(self, address: str, full_name: str, kind: str, password: str) -> Mailbox:
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            raise DirectoryError(f"{address!r} is not an address (LOCALPART@DOMAIN)")
        if kind not in KINDS:
            raise DirectoryError(f"kind must be one of {', '.join(KINDS)}")
        problem = policy_violation(password, address)
        if problem:
            raise DirectoryError(f"password refused: {problem}")
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO mailboxes (address, full_name, kind, password_hash, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (address.lower(), full_name, kind, hash_password(password), _now()),
                )
        except sqlite3.IntegrityError:
            raise DirectoryError(f"{address} already exists") from None
        mailbox = self.get(address)
        assert mailbox is not None
        return mailbox

    def authenticate(self, login: str, password: str) -> Mailbox | None:
        """The mailbox if the password matches and its state allows logging in; records access."""
        row = self._row(login)
        # Verify even for unknown users, so timing does not reveal which addresses exist.
        ok = verify_password(row["password_hash"] if row else None, password)
        if not ok or row is None or row["state"] not in CAN_AUTHENTICATE:
            return None
        with self._lock:
            self._conn.execute(
                "UPDATE mailboxes SET last_access = ? WHERE address = ?", (_now(), row["address"])
            )
        return self.get(row["address"])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
