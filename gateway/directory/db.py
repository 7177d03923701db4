"""SQLite storage for the directory: one file under ``data_dir``, WAL, versioned schema.

Only ``gateway/directory`` runs SQL. Migrations are applied in order at open, each
in its own transaction, so ``serve`` and the CLI can open the same file at any
version and agree on it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

MIGRATIONS: list[str] = [
    # 1: mailboxes, enough for SMTP AUTH; the directory issue extends this table.
    """
    CREATE TABLE mailboxes (
        address       TEXT PRIMARY KEY COLLATE NOCASE,
        full_name     TEXT NOT NULL,
        kind          TEXT NOT NULL DEFAULT 'personal',
        state         TEXT NOT NULL DEFAULT 'active',
        password_hash TEXT,
        must_change   INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        last_access   TEXT
    );
    """,
    # 2: the directory of the regulations: registration-form fields, rank and contract,
    # lock reasons and lifecycle dates, units, unit-mailbox delegation, group membership.
    """
    ALTER TABLE mailboxes ADD COLUMN unit TEXT;
    ALTER TABLE mailboxes ADD COLUMN position TEXT;
    ALTER TABLE mailboxes ADD COLUMN phone TEXT;
    ALTER TABLE mailboxes ADD COLUMN mobile TEXT;
    ALTER TABLE mailboxes ADD COLUMN unit_address TEXT;
    ALTER TABLE mailboxes ADD COLUMN backup_mailbox TEXT;
    ALTER TABLE mailboxes ADD COLUMN person_id TEXT;
    ALTER TABLE mailboxes ADD COLUMN rank TEXT NOT NULL DEFAULT 'staff';
    ALTER TABLE mailboxes ADD COLUMN contract_months INTEGER;
    ALTER TABLE mailboxes ADD COLUMN lock_reason TEXT;
    ALTER TABLE mailboxes ADD COLUMN state_changed_at TEXT;
    ALTER TABLE mailboxes ADD COLUMN retire_on TEXT;
    ALTER TABLE mailboxes ADD COLUMN password_changed_at TEXT;
    CREATE INDEX mailboxes_unit ON mailboxes (unit);
    CREATE INDEX mailboxes_person ON mailboxes (person_id);
    CREATE TABLE units (
        symbol TEXT PRIMARY KEY COLLATE NOCASE,
        name   TEXT NOT NULL
    );
    CREATE TABLE delegations (
        unit_address TEXT PRIMARY KEY COLLATE NOCASE REFERENCES mailboxes (address),
        delegate     TEXT NOT NULL COLLATE NOCASE REFERENCES mailboxes (address),
        since        TEXT NOT NULL
    );
    CREATE TABLE group_members (
        group_address TEXT NOT NULL COLLATE NOCASE REFERENCES mailboxes (address),
        member        TEXT NOT NULL COLLATE NOCASE REFERENCES mailboxes (address),
        PRIMARY KEY (group_address, member)
    );
    """,
    # 3: who may post to a group (MOST 12.5.c); NULL follows [filters.groups].
    """
    ALTER TABLE mailboxes ADD COLUMN post_policy TEXT;
    """,
]


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """Open and migrate the database at ``path``, creating it only if ``create``.

    Without ``create`` a missing file raises FileNotFoundError: ``serve`` must not
    start on an empty directory made up on the spot (it would refuse all local mail).
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Password hashes live here: owner only. SQLite gives -wal/-shm the file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    else:
        os.close(os.open(path, os.O_RDWR))
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


def connect_reader(path: Path, timeout: float = 30) -> sqlite3.Connection:
    """A read-only connection to an existing, migrated database.

    In WAL mode readers never wait for a writer, so each thread gets its own: a
    write stuck on the busy timeout must not hold up the RCPT lookups behind it.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(
        uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the schema version now in force."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current < number:  # another process may have migrated meanwhile
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
