"""Operators' directory commands: thin calls into the directory, each change an event.

MIC 8.2 and MOST 18.4/18.9 want admin actions on record, so every command that changes
the directory emits one event (``actor`` = "cli"), never with a password in it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.directory.addresses import suggest
from gateway.directory.importer import import_csv
from gateway.directory.mailboxes import (
    KINDS,
    POST_POLICIES,
    RANKS,
    STATES,
    Directory,
    DirectoryError,
    Mailbox,
    Registration,
    check_address,
)
from gateway.directory.passwords import generate_password
from gateway.directory.report import format_units_report, units_report
from gateway.events.writer import EventLog


class CommandError(Exception):
    """A failure to report as one line on stderr, exit status 1."""


class Admin:
    """The directory and the event log, opened for one CLI command.

    Only ``create`` commands (the ones that add the first entries) may create a missing
    directory database; the others say it is missing instead of showing an empty one.
    """

    def __init__(self, config: Config, create: bool = False) -> None:
        self.config = config
        data_dir = config.gateway.data_dir
        hasher = config.auth.argon2().hasher()  # passwords set here are hashed as serve would
        if create:
            self.directory = Directory.for_data_dir(data_dir, hasher)
        else:
            self.directory = Directory.open_existing(data_dir, config.path, hasher)
        self.events = EventLog(config.log.dir)

    def emit(self, event: str, **fields: Any) -> None:
        fields.setdefault("actor", "cli")
        self.events.emit(event, **fields)

    def close(self) -> None:
        self.directory.close()
        self.events.close()


def describe(mailbox: Mailbox, admin: Admin) -> dict[str, Any]:
    """What ``mailbox show`` prints: the record, plus members or delegate where they apply."""
    directory = admin.directory
    shown = mailbox.as_dict()
    if mailbox.kind == "group":
        shown["members"] = directory.members(mailbox.address)
        shown["expanded"] = directory.expand_group(mailbox.address)
        shown["post_policy_in_force"] = _post_policy(admin, mailbox)
    if mailbox.kind == "unit":
        shown["delegate"] = directory.delegate_of(mailbox.address)
    if mailbox.kind != "group":
        shown["sends_as"] = sorted(directory.sender_identities(mailbox.address))
    return shown


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, ensure_ascii=False))
        return
    width = max(map(len, record))
    for key, value in record.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {'-' if shown is None else shown}")


def mailbox_add(admin: Admin, args: argparse.Namespace) -> None:
    form = Registration(
        address=args.address,
        full_name=args.name,
        kind=args.kind,
        unit=args.unit,
        position=args.position,
        phone=args.phone,
        mobile=args.mobile,
        unit_address=args.unit_address,
        backup_mailbox=args.backup_mailbox,
        person_id=args.person_id,
        rank=args.rank,
        contract_months=args.contract_months,
    )
    if not admin.config.is_local(check_address(args.address)):  # syntax first, then MOST 12.2
        domains = ", ".join(admin.config.gateway.domains)
        raise DirectoryError(
            f"{args.address} is not in an official domain of this gateway ({domains}; MOST 12.2)"
        )
    generated = args.password is None and args.kind != "group"
    password = generate_password(args.address) if generated else args.password
    mailbox = admin.directory.add(form, password, must_change=generated)
    admin.emit("mailbox_added", user=mailbox.address, kind=mailbox.kind, unit=mailbox.unit)
    print(f"created {mailbox.address} ({mailbox.kind})")
    if generated:
        print(f"initial password (must be changed at first login): {password}")


def mailbox_show(admin: Admin, args: argparse.Namespace) -> None:
    mailbox = admin.directory.require(args.address)
    _print_record(describe(mailbox, admin), args.json)


def mailbox_list(admin: Admin, args: argparse.Namespace) -> None:
    mailboxes = admin.directory.list(args.unit, args.state, args.must_change)
    for mailbox in mailboxes:
        if args.json:
            print(json.dumps(mailbox.as_dict(), ensure_ascii=False))
        else:
            flags = " must-change" if mailbox.must_change else ""
            print(
                f"{mailbox.address:<40} {mailbox.kind:<8} {mailbox.state:<11}"
                f" {mailbox.unit or '-':<12} {mailbox.last_access or 'never'}{flags}"
            )


def mailbox_passwd(admin: Admin, args: argparse.Namespace) -> None:
    """The user's own change (clears "must change"; ``--old-password`` proves it is the
    user); an operator reset uses ``--reset`` and sets "must change" (MOST 15.2)."""
    if args.old_password is not None:
        mailbox = admin.directory.require(args.address)
        if not admin.directory.check_password(mailbox.address, args.old_password):
            admin.emit("password_change_refused", user=mailbox.address, reason="wrong old password")
            raise DirectoryError("the old password does not match")
    admin.directory.set_password(args.address, args.password, must_change=args.reset)
    admin.emit(
        "password_changed", user=args.address.lower(), reason="reset" if args.reset else None
    )
    print(f"password of {args.address.lower()} changed")


def mailbox_lock(admin: Admin, args: argparse.Namespace) -> None:
    state = "send-locked" if args.send_only else "locked"
    before = admin.directory.require(args.address)
    if before.state == "revoked":
        raise DirectoryError(f"{before.address} is revoked; revocation is final")
    mailbox = admin.directory.set_state(args.address, state, args.reason)
    admin.emit(
        "mailbox_state", user=mailbox.address, old_state=before.state, state=state,
        reason=args.reason,
    )  # fmt: skip
    print(f"{mailbox.address} {state}: {args.reason}")


def mailbox_unlock(admin: Admin, args: argparse.Namespace) -> None:
    before = admin.directory.require(args.address)
    password = generate_password(before.address)
    mailbox = admin.directory.unlock(before.address, password)
    admin.emit(
        "mailbox_state", user=mailbox.address, old_state=before.state, state="active",
        reason="unlocked after verification; password reset, must change (MIC 7.3)",
    )  # fmt: skip
    print(f"{mailbox.address} active")
    if mailbox.kind != "group":
        print(f"new password (must be changed at first login): {password}")


def mailbox_retire(admin: Admin, args: argparse.Namespace) -> None:
    mailbox = admin.directory.set_retirement(args.address, args.on)
    admin.emit("mailbox_retirement", user=mailbox.address, retire_on=args.on, rank=mailbox.rank)
    print(f"{mailbox.address} leaves on {args.on} (rank {mailbox.rank}); maintenance applies it")


def mailbox_revoke(admin: Admin, args: argparse.Namespace) -> None:
    before = admin.directory.require(args.address)
    reason = args.reason or "revoked by operator"
    mailbox = admin.directory.set_state(before.address, "revoked", reason)
    admin.emit(
        "mailbox_state", user=mailbox.address, old_state=before.state, state="revoked",
        reason=reason,
    )  # fmt: skip
    print(f"{mailbox.address} revoked (the address stays reserved)")


def mailbox_delegate(admin: Admin, args: argparse.Namespace) -> None:
    previous = admin.directory.delegate(args.unit_address, args.person)
    admin.emit(
        "delegation_changed", user=args.unit_address.lower(), delegate=args.person.lower(),
        previous_delegate=previous,
    )  # fmt: skip
    print(f"{args.person.lower()} may now send as {args.unit_address.lower()}")


def mailbox_undelegate(admin: Admin, args: argparse.Namespace) -> None:
    previous = admin.directory.undelegate(args.unit_address.lower())
    admin.emit("delegation_changed", user=args.unit_address.lower(), previous_delegate=previous)
    print(f"{args.unit_address.lower()} has no delegate")


def group_add_member(admin: Admin, args: argparse.Namespace) -> None:
    admin.directory.add_member(args.group, args.address)
    admin.emit("group_member_added", user=args.group.lower(), member=args.address.lower())
    print(f"{args.address.lower()} added to {args.group.lower()}")


def group_policy(admin: Admin, args: argparse.Namespace) -> None:
    policy = None if args.policy == "default" else args.policy
    old = admin.directory.require(args.group).post_policy
    group = admin.directory.set_post_policy(args.group, policy)
    admin.emit(
        "group_policy_changed",
        user=group.address,
        old_policy=old,
        policy=policy,
        reason=f"who may post to {group.address}: {policy or 'the configured default'}",
    )
    print(f"{group.address}: {_post_policy(admin, group)}")


def _post_policy(admin: Admin, group: Mailbox) -> str:
    """The policy in force, saying when it is the configured default."""
    if group.post_policy:
        return group.post_policy
    settings = admin.config.filters.settings("groups")
    if settings is None:
        return "none (group expansion is off: [filters.groups] enabled = false)"
    return f"{settings.default_post_policy} (default, filters.groups.default_post_policy)"


def group_remove_member(admin: Admin, args: argparse.Namespace) -> None:
    admin.directory.remove_member(args.group.lower(), args.address.lower())
    admin.emit("group_member_removed", user=args.group.lower(), member=args.address.lower())
    print(f"{args.address.lower()} removed from {args.group.lower()}")


def unit_add(admin: Admin, args: argparse.Namespace) -> None:
    admin.directory.add_unit(args.symbol, args.name)
    admin.emit("unit_added", unit=args.symbol, reason=args.name)
    print(f"unit {args.symbol} added")


def unit_list(admin: Admin, args: argparse.Namespace) -> None:
    for symbol, name in sorted(admin.directory.units().items()):
        print(f"{symbol:<16} {name}")


def address_suggest(admin: Admin, args: argparse.Namespace) -> None:
    domain = args.domain or admin.config.gateway.domains[0]
    unit = admin.directory.unit_symbol_of(args.unit) if args.unit else None
    if args.unit and unit is None:
        raise DirectoryError(f"unknown unit {args.unit!r} (add it with: mailgate unit add)")
    try:
        local = suggest(args.full_name, domain, admin.directory.is_unavailable, unit=unit)
    except ValueError as exc:
        raise DirectoryError(str(exc)) from None
    print(f"{local}@{domain.lower()}")


def directory_import(admin: Admin, args: argparse.Namespace) -> None:
    domain = args.domain or admin.config.gateway.domains[0]
    report = import_csv(admin.directory, Path(args.file), domain, dry_run=args.dry_run)
    print(report.format())
    if not report.ok:
        raise CommandError(f"{args.file}: {len(report.errors)} problem(s); nothing changed")
    if report.created:
        admin.emit("directory_imported", reason=args.file, users=report.created)


def report_units(admin: Admin, args: argparse.Namespace) -> None:
    rows = units_report(admin.directory)
    if args.json:
        for row in rows:
            print(json.dumps(row.as_dict(), ensure_ascii=False))
    else:
        print(format_units_report(rows))


Handler = Callable[[Admin, argparse.Namespace], None]


def add_directory_commands(
    commands: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]
) -> None:
    """Register the directory's CLI words (CONTRACT.md) on the main parser."""
    mailbox = commands.add_parser("mailbox", help="manage mailboxes").add_subparsers(
        dest="mailbox_command", required=True, metavar="ACTION"
    )
    p = add(mailbox, "add", mailbox_add, "create a mailbox")
    p.set_defaults(creates_directory=True)
    p.add_argument("address")
    p.add_argument("--name", required=True, help="full name, Vietnamese with diacritics")
    p.add_argument("--kind", choices=KINDS, default="personal")
    p.add_argument("--unit", help="unit symbol (see: mailgate unit list)")
    p.add_argument("--rank", choices=RANKS, default="staff", help="for the retirement rules")
    p.add_argument("--password", help="initial password (default: generated, printed)")
    p.add_argument("--position")
    p.add_argument("--phone")
    p.add_argument("--mobile")
    p.add_argument("--unit-address", help="postal address of the unit")
    p.add_argument("--backup-mailbox", help="backup (non-official) mailbox")
    p.add_argument("--person-id", help="staff or citizen id: one personal mailbox per person")
    p.add_argument("--contract-months", type=int, help="contract term; under 12 is refused")
    p = add(mailbox, "show", mailbox_show, "show one mailbox")
    p.add_argument("address")
    p.add_argument("--json", action="store_true")
    p = add(mailbox, "list", mailbox_list, "list mailboxes")
    p.add_argument("--unit")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--must-change", action="store_true", help="only those to change password")
    p.add_argument("--json", action="store_true")
    p = add(mailbox, "passwd", mailbox_passwd, "set a password under the policy")
    p.add_argument("address")
    p.add_argument("--password", required=True)
    p.add_argument("--old-password", help="self-service: prove the current password first")
    p.add_argument("--reset", action="store_true", help="operator reset: set 'must change'")
    p = add(mailbox, "lock", mailbox_lock, "lock a mailbox (it still receives mail)")
    p.add_argument("address")
    p.add_argument("--reason", required=True)
    p.add_argument("--send-only", action="store_true", help="lock only sending")
    p = add(mailbox, "unlock", mailbox_unlock, "unlock; resets the password")
    p.add_argument("address")
    p = add(mailbox, "retire", mailbox_retire, "record a departure date")
    p.add_argument("address")
    p.add_argument("--on", required=True, metavar="YYYY-MM-DD")
    p = add(mailbox, "revoke", mailbox_revoke, "revoke at once (the address stays reserved)")
    p.add_argument("address")
    p.add_argument("--reason")
    p = add(mailbox, "delegate", mailbox_delegate, "let a person send as a unit mailbox")
    p.add_argument("unit_address")
    p.add_argument("person")
    p = add(mailbox, "undelegate", mailbox_undelegate, "end a unit mailbox's delegation")
    p.add_argument("unit_address")

    group = commands.add_parser("group", help="group membership").add_subparsers(
        dest="group_command", required=True, metavar="ACTION"
    )
    for name, handler in (("add-member", group_add_member), ("remove-member", group_remove_member)):
        p = add(group, name, handler, f"{name.replace('-', ' ')} (groups may contain groups)")
        p.add_argument("group")
        p.add_argument("address")
    p = add(group, "policy", group_policy, "who may post: anyone, local senders, or members")
    p.add_argument("group")
    p.add_argument("policy", choices=[*POST_POLICIES, "default"])

    unit = commands.add_parser("unit", help="units").add_subparsers(
        dest="unit_command", required=True, metavar="ACTION"
    )
    p = add(unit, "add", unit_add, "register a unit")
    p.set_defaults(creates_directory=True)
    p.add_argument("symbol")
    p.add_argument("--name", required=True)
    add(unit, "list", unit_list, "list units")

    address = commands.add_parser("address", help="addresses").add_subparsers(
        dest="address_command", required=True, metavar="ACTION"
    )
    p = add(address, "suggest", address_suggest, "the address the naming rule gives (MIC 5)")
    p.add_argument("full_name")
    p.add_argument("--unit")
    p.add_argument("--domain", help="default: the first of gateway.domains")

    directory = commands.add_parser("directory", help="bulk directory work").add_subparsers(
        dest="directory_command", required=True, metavar="ACTION"
    )
    p = add(directory, "import", directory_import, "import registration forms from CSV")
    p.set_defaults(creates_directory=True)
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--domain", help="default: the first of gateway.domains")

    report = commands.add_parser("report", help="reports").add_subparsers(
        dest="report_command", required=True, metavar="ACTION"
    )
    p = add(report, "units", report_units, "mailboxes by unit, kind and state (MIC 14.6)")
    p.add_argument("--json", action="store_true")
