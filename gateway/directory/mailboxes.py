"""The directory ("danh bạ điện tử"): mailboxes, units, delegations and groups.

Every method is blocking and short (one transaction); ``serve`` calls them through
``asyncio.to_thread``. This class is the one small interface a PostgreSQL backend
would implement for multi-node deployments; only this package runs SQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from gateway.directory import db
from gateway.directory.passwords import hash_password, policy_violation, verify_password

KINDS = ("personal", "unit", "group")
STATES = ("active", "send-locked", "locked", "revoked")
RANKS = ("staff", "director")
CAN_AUTHENTICATE = ("active", "send-locked")
# Who may post to a group: anyone, local (authenticated) senders, or its members only.
POST_POLICIES = ("anyone", "local", "members")
MIN_CONTRACT_MONTHS = 12  # MIC 6.3: personal mailboxes for contracts of at least 1 year


class DirectoryError(Exception):
    """A refused directory change; the message is the one-line reason shown to the operator."""


DATABASE_NAME = "directory.sqlite3"


def database_path(data_dir: Path) -> Path:
    """Where the directory of ``data_dir`` lives."""
    return data_dir / DATABASE_NAME


class DirectoryMissing(DirectoryError):
    """No directory database where the config points: a wrong data_dir, or no ``init`` yet."""

    def __init__(self, path: Path, config_path: Path | None = None) -> None:
        config = str(config_path) if config_path is not None else "CONFIG"
        super().__init__(
            f"no directory database at {path.resolve()} (is gateway.data_dir right?);"
            f" to create an empty one run `mailgate init -c {config}`"
        )
        self.path = path


@dataclass(frozen=True, slots=True)
class Registration:
    """The registration form (MOST Appendix 03) and what the operator adds to it."""

    address: str
    full_name: str
    kind: str = "personal"
    unit: str | None = None
    position: str | None = None
    phone: str | None = None
    mobile: str | None = None
    unit_address: str | None = None
    backup_mailbox: str | None = None
    person_id: str | None = None
    rank: str = "staff"
    contract_months: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mailbox(Registration):
    """A stored mailbox: the registration plus its state and history."""

    state: str
    must_change: bool
    created_at: str
    last_access: str | None = None
    lock_reason: str | None = None
    state_changed_at: str | None = None
    retire_on: str | None = None
    password_changed_at: str | None = None
    post_policy: str | None = None  # groups: one of POST_POLICIES, None for the default

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_MAILBOX_COLUMNS = [f.name for f in fields(Mailbox)]


def now_text(moment: datetime | None = None) -> str:
    """Timestamps as stored: UTC, second precision, sortable as text."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stored(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _valid_domain(domain: str) -> bool:
    """RFC 1035 host name: at least two labels of letters, digits and inner hyphens."""
    labels = domain.split(".")
    return len(labels) >= 2 and all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isalnum() or c == "-" for c in label)
        for label in labels
    )


def check_address(address: str, what: str = "address") -> str:
    """Lower-cased LOCALPART@DOMAIN, or DirectoryError naming what is wrong."""
    text = address.strip()
    name, parsed = parseaddr(text)
    local, at, domain = parsed.rpartition("@")
    if (
        name
        or parsed != text
        or not at
        or not local
        or not _valid_domain(domain)
        or any(c.isspace() for c in text)
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
    ):
        raise DirectoryError(f"{what} {address!r} is not a valid LOCALPART@DOMAIN address")
    return text.lower()


class Directory:
    """The directory database at ``path`` (SQLite, WAL).

    Writes go through one connection behind a lock; every thread reads through its own
    read-only connection, so lookups run in parallel and never queue behind a write
    that is waiting for another process's lock.
    """

    def __init__(
        self, path: Path, create: bool = True, hasher: PasswordHasher | None = None
    ) -> None:
        self.path = path
        self.hasher = hasher  # argon2id as [auth] configures it; None: the library default
        self._writer = db.connect(path, create=create)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: Path, hasher: PasswordHasher | None = None) -> Directory:
        """Open the directory of ``data_dir``, creating it if missing (init, mailbox add)."""
        return cls(database_path(data_dir), hasher=hasher)

    @classmethod
    def open_existing(
        cls, data_dir: Path, config_path: Path | None = None, hasher: PasswordHasher | None = None
    ) -> Directory:
        """Open the directory of ``data_dir``; never create it (``serve``).

        A mistyped data_dir must stop the gateway, not give it an empty directory
        that refuses every local recipient with 550. ``config_path`` goes into the hint.
        """
        path = database_path(data_dir)
        try:
            return cls(path, create=False, hasher=hasher)
        except FileNotFoundError:
            raise DirectoryMissing(path, config_path) from None
        except (OSError, sqlite3.DatabaseError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DirectoryError(f"cannot open the directory database {path}: {why}") from None

    def close(self) -> None:
        """Readers first: the last connection to close checkpoints the WAL, and only the
        writer may."""
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._writer.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; all or nothing."""
        with self._lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (autocommit: each query sees the latest commit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = db.connect_reader(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._reader().execute(sql, args).fetchall()

    def data_version(self) -> int | None:
        """A number that changes whenever a change is committed, by any process (this
        one's writer included: SQLite's ``PRAGMA data_version`` on a connection of its
        own), or None when it cannot be read at once (busy timeout 0). A few microseconds:
        the event loop asks it to know whether what it remembers is still true. (SQLite
        may still retry briefly inside when a writer resets the WAL at that instant.)"""
        conn: sqlite3.Connection | None = getattr(self._local, "version_conn", None)
        try:
            if conn is None:
                conn = db.connect_reader(self.path, timeout=0)
                self._local.version_conn = conn
                with self._readers_lock:
                    self._readers.append(conn)
            (version,) = conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(version)

    # -- reading ------------------------------------------------------------------------

    def get(self, address: str) -> Mailbox | None:
        rows = self._query("SELECT * FROM mailboxes WHERE address = ?", (address.strip(),))
        return _mailbox(rows[0]) if rows else None

    def get_many(self, addresses: list[str]) -> dict[str, Mailbox]:
        """The mailboxes of ``addresses`` that exist, by lower-case address (one query per
        500: the IMAP proxy checks every open session's mailbox every few seconds)."""
        found: dict[str, Mailbox] = {}
        for start in range(0, len(addresses), 500):
            chunk = [a.strip() for a in addresses[start : start + 500]]
            marks = ", ".join("?" * len(chunk))
            rows = self._query(f"SELECT * FROM mailboxes WHERE address IN ({marks})", tuple(chunk))
            found.update({row["address"].lower(): _mailbox(row) for row in rows})
        return found

    def require(self, address: str) -> Mailbox:
        mailbox = self.get(address)
        if mailbox is None:
            raise DirectoryError(f"no mailbox {address}")
        return mailbox

    def list(
        self, unit: str | None = None, state: str | None = None, must_change: bool = False
    ) -> list[Mailbox]:
        clauses, args = [], []
        if unit:
            clauses.append("unit = ? COLLATE NOCASE")
            args.append(unit)
        if state:
            if state not in STATES:
                raise DirectoryError(f"state must be one of {', '.join(STATES)}")
            clauses.append("state = ?")
            args.append(state)
        if must_change:
            clauses.append("must_change = 1")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM mailboxes{where} ORDER BY address", tuple(args))
        return [_mailbox(row) for row in rows]

    def is_unavailable(self, address: str) -> bool:
        """Taken, or revoked but reserved (a revoked address is never handed out again)."""
        return bool(self._query("SELECT 1 FROM mailboxes WHERE address = ?", (address,)))

    def accepts_mail(self, address: str) -> bool:
        """MIC 7.1: locked mailboxes still receive; revoked and unknown ones do not."""
        rows = self._query("SELECT state FROM mailboxes WHERE address = ?", (address,))
        return bool(rows) and rows[0]["state"] != "revoked"

    # -- units --------------------------------------------------------------------------

    def add_unit(self, symbol: str, name: str) -> None:
        if not symbol.strip() or not name.strip():
            raise DirectoryError("a unit needs a symbol and a name")
        try:
            with self._transaction() as conn:
                conn.execute("INSERT INTO units VALUES (?, ?)", (symbol.strip(), name.strip()))
        except sqlite3.IntegrityError:
            raise DirectoryError(f"unit {symbol} already exists") from None

    def units(self) -> dict[str, str]:
        return {row["symbol"]: row["name"] for row in self._query("SELECT * FROM units")}

    def unit_symbol_of(self, symbol_or_name: str) -> str | None:
        rows = self._query(
            "SELECT symbol FROM units WHERE symbol = ? OR name = ? COLLATE NOCASE",
            (symbol_or_name.strip(), symbol_or_name.strip()),
        )
        return rows[0]["symbol"] if rows else None

    # -- creating -----------------------------------------------------------------------

    def validate(self, form: Registration, password: str | None) -> Registration:
        """The form as it would be stored, or DirectoryError with the first rule it breaks."""
        address = check_address(form.address)
        if not form.full_name.strip():
            raise DirectoryError("full name is empty")
        if form.kind not in KINDS:
            raise DirectoryError(f"kind must be one of {', '.join(KINDS)}")
        if form.rank not in RANKS:
            raise DirectoryError(f"rank must be one of {', '.join(RANKS)}")
        unit = None
        if form.unit:
            unit = self.unit_symbol_of(form.unit)
            if unit is None:
                raise DirectoryError(f"unknown unit {form.unit!r} (add it with: mailgate unit add)")
        if form.kind == "unit" and unit is None:
            raise DirectoryError("a unit mailbox needs --unit")
        if form.backup_mailbox:
            check_address(form.backup_mailbox, "backup mailbox")
        if form.contract_months is not None:
            if form.contract_months <= 0:
                raise DirectoryError("contract term must be a positive number of months")
            if form.kind == "personal" and form.contract_months < MIN_CONTRACT_MONTHS:
                raise DirectoryError(
                    f"contract of {form.contract_months} months: personal mailboxes need"
                    f" at least {MIN_CONTRACT_MONTHS} (MIC 6.3)"
                )
        if self.is_unavailable(address):
            raise DirectoryError(f"{address} is taken or reserved")
        if form.kind == "personal" and form.person_id:
            twin = self._query(
                "SELECT address FROM mailboxes WHERE kind = 'personal' AND person_id = ?"
                " AND state != 'revoked'",
                (form.person_id,),
            )
            if twin:
                raise DirectoryError(
                    f"person {form.person_id} already has {twin[0]['address']}"
                    " (one personal mailbox per person, MOST 12.3)"
                )
        if form.kind == "unit":
            twin = self._query(
                "SELECT address FROM mailboxes WHERE kind = 'unit' AND unit = ?"
                " AND state != 'revoked'",
                (unit,),
            )
            if twin:
                raise DirectoryError(
                    f"unit {unit} already has {twin[0]['address']} (one per unit, MOST 12.3)"
                )
        if form.kind != "group" and password is not None:
            problem = policy_violation(password, address)
            if problem:
                raise DirectoryError(f"password refused: {problem}")
        return Registration(**{**asdict(form), "address": address, "unit": unit})

    def add(self, form: Registration, password: str | None, must_change: bool = True) -> Mailbox:
        """Create a mailbox. Groups have no password; others start with "must change"
        set (MOST 15.2) unless the operator's password is the user's own."""
        (mailbox,) = self.add_many([(form, password)], must_change)
        return mailbox

    def add_many(
        self, items: list[tuple[Registration, str | None]], must_change: bool = True
    ) -> list[Mailbox]:
        """Create several mailboxes in one transaction: all of them or none (CSV import)."""
        rows = []
        for form, password in items:
            form = self.validate(form, password)
            password_hash = (
                hash_password(password, self.hasher) if password and form.kind != "group" else None
            )
            now = now_text()
            rows.append(
                asdict(form)
                | {
                    "password_hash": password_hash,
                    "must_change": int(bool(password_hash) and must_change),
                    "created_at": now,
                    "state_changed_at": now,
                    "password_changed_at": now if password_hash else None,
                }
            )
        try:
            with self._transaction() as conn:
                for values in rows:
                    columns = ", ".join(values)
                    marks = ", ".join("?" for _ in values)
                    conn.execute(
                        f"INSERT INTO mailboxes ({columns}) VALUES ({marks})",
                        tuple(values.values()),
                    )
        except sqlite3.IntegrityError:
            raise DirectoryError("nothing created: an address is taken or reserved") from None
        return [self.require(values["address"]) for values in rows]

    # -- passwords and authentication ------------------------------------------------

    def set_password(self, address: str, password: str, must_change: bool) -> None:
        mailbox = self.require(address)
        if mailbox.kind == "group":
            raise DirectoryError(f"{mailbox.address} is a group: groups have no password")
        problem = policy_violation(password, mailbox.address)
        if problem:
            raise DirectoryError(f"password refused: {problem}")
        new_hash = hash_password(password, self.hasher)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE mailboxes SET password_hash = ?, must_change = ?,"
                " password_changed_at = ? WHERE address = ?",
                (new_hash, int(must_change), now_text(), mailbox.address),
            )

    def check_password(self, address: str, password: str) -> bool:
        """Whether ``password`` is the mailbox's current one; no access is recorded."""
        rows = self._query("SELECT password_hash FROM mailboxes WHERE address = ?", (address,))
        return verify_password(rows[0]["password_hash"] if rows else None, password, self.hasher)

    def authenticate(self, login: str, password: str) -> Mailbox | None:
        """The mailbox if the password matches and its state allows logging in
        (locked and revoked do not: MIC 7.1); records the access (MOST 13.3)."""
        rows = self._query("SELECT * FROM mailboxes WHERE address = ?", (login.strip(),))
        row = rows[0] if rows else None
        # Verify even for unknown users, so timing does not reveal which addresses exist.
        ok = verify_password(row["password_hash"] if row else None, password, self.hasher)
        if not ok or row is None or row["state"] not in CAN_AUTHENTICATE:
            return None
        self.record_access(row["address"])
        return self.get(row["address"])

    def password_owner(self, login: str, password: str) -> Mailbox | None:
        """The mailbox ``password`` belongs to, whatever its state: the authenticator
        decides what a locked owner is told (only someone with the password learns it)."""
        rows = self._query("SELECT * FROM mailboxes WHERE address = ?", (login.strip(),))
        row = rows[0] if rows else None
        # Verify even for unknown users, so timing does not reveal which addresses exist.
        stored = row["password_hash"] if row else None
        if not verify_password(stored, password, self.hasher) or row is None:
            return None
        return self.get(row["address"])

    def login_record(self, login: str) -> tuple[Mailbox, str | None] | None:
        """The mailbox and its stored hash, in one cheap read: the authenticator checks
        every login (cached or not) against the row as it is now, so a change made by
        another process (the CLI, maintenance) counts at once."""
        rows = self._query("SELECT * FROM mailboxes WHERE address = ?", (login.strip(),))
        return (_mailbox(rows[0]), rows[0]["password_hash"]) if rows else None

    def change_password(self, address: str, old_hash: str, new_hash: str) -> bool:
        """A user's own change (the password page): store ``new_hash`` and clear "must
        change", only if the stored hash is still ``old_hash`` (the one the user's current
        password was checked against) and the mailbox may still log in. ``new_hash`` is
        made by the caller on its argon2 pool; the policy was checked on the password."""
        allowed = tuple(sorted(CAN_AUTHENTICATE))
        marks = ", ".join("?" for _ in allowed)
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE mailboxes SET password_hash = ?, must_change = 0,"
                " password_changed_at = ? WHERE address = ? AND password_hash = ?"
                f" AND state IN ({marks})",
                (new_hash, now_text(), address, old_hash, *allowed),
            )
        return cursor.rowcount == 1

    def upgrade_password_hash(self, address: str, old_hash: str, new_hash: str) -> bool:
        """Store a re-made hash of the same password (new argon2 parameters), unless the
        password changed meanwhile; not a password change, so no date or flag moves."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE mailboxes SET password_hash = ? WHERE address = ? AND password_hash = ?",
                (new_hash, address, old_hash),
            )
        return cursor.rowcount == 1

    def login_refusal(self, login: str) -> str | None:
        """Why a correct password would still be refused, for the event log only."""
        mailbox = self.get(login)
        if mailbox and mailbox.state not in CAN_AUTHENTICATE:
            return f"mailbox {mailbox.state}: {mailbox.lock_reason or 'no reason recorded'}"
        return None

    def record_access(self, address: str, moment: datetime | None = None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE mailboxes SET last_access = ? WHERE address = ?",
                (now_text(moment), address),
            )

    # -- states ---------------------------------------------------------------------

    def set_state(
        self, address: str, state: str, reason: str, moment: datetime | None = None
    ) -> Mailbox:
        if state not in STATES:
            raise DirectoryError(f"state must be one of {', '.join(STATES)}")
        mailbox = self.require(address)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE mailboxes SET state = ?, lock_reason = ?, state_changed_at = ?"
                " WHERE address = ?",
                (state, None if state == "active" else reason, now_text(moment), mailbox.address),
            )
        return self.require(address)

    def unlock(self, address: str, new_password: str) -> Mailbox:
        """MIC 7.3: reactivate, reset the password, "must change" at first login. Counts as
        an access, so the inactivity rule does not lock it again at once."""
        mailbox = self.require(address)
        if mailbox.state == "revoked":
            raise DirectoryError(f"{mailbox.address} is revoked; revocation is final")
        if mailbox.kind != "group":
            self.set_password(mailbox.address, new_password, must_change=True)
        self.record_access(mailbox.address)
        return self.set_state(mailbox.address, "active", "unlocked")

    def set_retirement(self, address: str, day: str) -> Mailbox:
        try:
            left = date.fromisoformat(day.strip())
        except ValueError:
            raise DirectoryError(f"date {day!r} is not YYYY-MM-DD") from None
        mailbox = self.require(address)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE mailboxes SET retire_on = ? WHERE address = ?",
                (left.isoformat(), mailbox.address),
            )
        return self.require(address)

    # -- delegation (MOST 14.4, MIC 12.3) ---------------------------------------------

    def delegate(self, unit_address: str, person: str) -> str | None:
        """Let ``person`` send as the unit mailbox; returns the previous delegate."""
        unit = self.require(unit_address)
        delegate = self.require(person)
        if unit.kind != "unit":
            raise DirectoryError(f"{unit.address} is not a unit mailbox")
        if delegate.kind != "personal" or delegate.state == "revoked":
            raise DirectoryError(f"{delegate.address} is not an active personal mailbox")
        previous = self.delegate_of(unit.address)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO delegations VALUES (?, ?, ?) ON CONFLICT (unit_address)"
                " DO UPDATE SET delegate = excluded.delegate, since = excluded.since",
                (unit.address, delegate.address, now_text()),
            )
        return previous

    def undelegate(self, unit_address: str) -> str | None:
        previous = self.delegate_of(unit_address)
        with self._transaction() as conn:
            conn.execute("DELETE FROM delegations WHERE unit_address = ?", (unit_address,))
        return previous

    def delegate_of(self, unit_address: str) -> str | None:
        rows = self._query(
            "SELECT delegate FROM delegations WHERE unit_address = ?", (unit_address,)
        )
        return rows[0]["delegate"] if rows else None

    def sender_identities(self, address: str) -> frozenset[str]:
        """Who ``address`` may send as: itself and the active unit mailboxes delegated to it
        (a locked unit mailbox may not send, whoever speaks for it: MIC 7.1)."""
        rows = self._query(
            "SELECT d.unit_address FROM delegations AS d"
            " JOIN mailboxes AS m ON m.address = d.unit_address"
            " WHERE d.delegate = ? AND m.state = 'active'",
            (address,),
        )
        return frozenset({address.lower(), *(row["unit_address"].lower() for row in rows)})

    # -- groups -------------------------------------------------------------------------

    def add_member(self, group: str, member: str) -> None:
        """Add ``member`` (a mailbox or another group); a cycle is refused."""
        owner = self.require(group)
        target = self.require(member)
        if owner.kind != "group":
            raise DirectoryError(f"{owner.address} is not a group")
        if owner.address == target.address or owner.address in self._reachable(target.address):
            raise DirectoryError(
                f"adding {target.address} to {owner.address} would make a cycle of groups"
            )
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO group_members VALUES (?, ?)", (owner.address, target.address)
                )
        except sqlite3.IntegrityError:
            raise DirectoryError(f"{target.address} is already in {owner.address}") from None

    def remove_member(self, group: str, member: str) -> None:
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM group_members WHERE group_address = ? AND member = ?",
                (group.strip(), member.strip()),
            )
        if cursor.rowcount == 0:
            raise DirectoryError(f"{member} is not a member of {group}")

    def members(self, group: str) -> list[str]:
        rows = self._query(
            "SELECT member FROM group_members WHERE group_address = ? ORDER BY member",
            (group,),
        )
        return [row["member"] for row in rows]

    def _reachable(self, group: str) -> set[str]:
        """Every address reachable from ``group`` through membership (groups included)."""
        seen: set[str] = set()
        todo = [group]
        while todo:
            for member in self.members(todo.pop()):
                if member not in seen:
                    seen.add(member)
                    todo.append(member)
        return seen

    def is_member(self, group: str, address: str) -> bool:
        """Whether ``address`` belongs to ``group``, directly or through nested groups."""
        wanted = address.strip().lower()
        return any(member.lower() == wanted for member in self._reachable(group))

    def group_routes(self, group: str) -> dict[str, tuple[str, ...]]:
        """Each mailbox ``group`` delivers to, with the chain of groups that reaches it
        (``group`` first, the member's own group last; the shortest chain when several
        do). Revoked members and groups themselves get nothing; locked members still
        receive (MIC 7.1). Breadth first, so the order is stable: nearer members first."""
        return dict(self._group_walk(group))

    def has_deliverable_member(self, group: str) -> bool:
        """Whether ``group`` reaches any mailbox (RCPT asks): stops at the first one."""
        return next(self._group_walk(group), None) is not None

    def _group_walk(self, group: str) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(mailbox, chain of groups) for each deliverable member, breadth first, lazily."""
        head = self.get(group)
        if head is None or head.kind != "group":
            return
        seen = {head.address.lower()}
        level = [(head.address, (head.address,))]
        while level:
            following = []
            for owner, chain in level:
                for address in self.members(owner):
                    if address.lower() in seen:
                        continue
                    seen.add(address.lower())
                    mailbox = self.get(address)
                    if mailbox is None or mailbox.state == "revoked":
                        continue
                    if mailbox.kind == "group":
                        following.append((mailbox.address, (*chain, mailbox.address)))
                    else:
                        yield mailbox.address, chain
            level = following

    def set_post_policy(self, group: str, policy: str | None) -> Mailbox:
        """Who may post to ``group`` (None: the configured default)."""
        if policy is not None and policy not in POST_POLICIES:
            raise DirectoryError(f"post policy must be one of {', '.join(POST_POLICIES)}")
        mailbox = self.require(group)
        if mailbox.kind != "group":
            raise DirectoryError(f"{mailbox.address} is not a group")
        with self._transaction() as conn:
            conn.execute(
                "UPDATE mailboxes SET post_policy = ? WHERE address = ?",
                (policy, mailbox.address),
            )
        return self.require(group)

    def expand_group(self, group: str) -> list[str]:
        """The flattened, de-duplicated set of non-group mailboxes a group reaches, revoked
        ones left out (what the policy filter delivers to), sorted."""
        found = []
        for address in self._reachable(group):
            mailbox = self.get(address)
            if mailbox and mailbox.kind != "group" and mailbox.state != "revoked":
                found.append(mailbox.address)
        return sorted(found)


def count_mailboxes(data_dir: Path, config_path: Path | None = None) -> int:
    """Mailboxes in the directory of ``data_dir``, read without creating or migrating
    anything (``check-config`` may run beside a live gateway)."""
    path = database_path(data_dir)
    if not path.is_file():
        raise DirectoryMissing(path, config_path)
    try:
        conn = db.connect_reader(path)
        try:
            return int(conn.execute("SELECT count(*) FROM mailboxes").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DirectoryError(f"cannot read the directory database {path}: {exc}") from None


def _mailbox(row: sqlite3.Row) -> Mailbox:
    values = {name: row[name] for name in _MAILBOX_COLUMNS}
    values["must_change"] = bool(values["must_change"])
    return Mailbox(**values)
