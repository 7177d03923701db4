"""``mailgate``: argparse and thin calls into the library.

Every command takes ``-c CONFIG`` (before or after the command word), exits 0 on
success and non-zero with a one-line reason on failure.

Where each command lives (this module parses; the work is done where named):

- ``serve``: :func:`cmd_serve` -> ``gateway.runtime.run`` (refuses a bad config or busy
  port, builds the ``Runtime``, serves until SIGTERM, reloads on SIGHUP).
- ``check-config``: :func:`cmd_check_config` -> ``gateway.config`` (validation, free
  ports) and ``gateway.directory.mailboxes.count_mailboxes`` (is the directory there).
- ``init``: :func:`cmd_init` -> ``gateway.tls`` (self-signed pair), folders, and the empty
  directory database ``serve`` needs.
- ``mailbox``, ``group``, ``unit``, ``address``, ``directory``, ``report``: one function
  each in ``gateway.admin`` (which also declares their arguments).
- ``logs search``, ``logs trace``, ``logs index``: ``gateway.logs_cli`` (search and trace
  also reached without this module through ``gateway.entry``, the console script) ->
  ``gateway.events.search``, ``.trace``, ``.index``.
- ``logs verify``, ``logs export``: :func:`cmd_logs_verify`, :func:`cmd_logs_export` ->
  ``gateway.events.verify`` / ``gateway.events.export`` (arguments: :func:`add_chain_commands`).
- ``maintenance``: :func:`cmd_maintenance` -> ``gateway.directory.lifecycle``,
  ``gateway.events.retention`` and ``gateway.events.index.update``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.admin import Admin, CommandError, add_directory_commands
from gateway.auth import hash_workers
from gateway.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    advisories,
    check_ports_free,
    load_config,
)
from gateway.directory.lifecycle import apply_lifecycle
from gateway.directory.mailboxes import (
    Directory,
    DirectoryError,
    DirectoryMissing,
    count_mailboxes,
    database_path,
)
from gateway.directory.passwords import measure_cost, meets_owasp, meets_rfc9106
from gateway.events.retention import apply_retention
from gateway.events.search import parse_time
from gateway.logs_cli import LogsError, add_logs_commands
from gateway.signing.commands import KeyCommandError, add_key_commands


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(Path(args.config))
    except ConfigError as exc:
        raise CommandError(
            f"invalid config {args.config}: {exc.problems[0]}"
            + (
                f" (and {len(exc.problems) - 1} more; run check-config)"
                if len(exc.problems) > 1
                else ""
            )
        ) from None
    except Exception as exc:  # e.g. ValueError for a NUL byte in a path: one line, no traceback
        raise CommandError(f"invalid config {args.config}: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.runtime import run

    return run(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Errors (exit 1), then where the gateway will keep its data, then warnings (exit 0).

    Whatever goes wrong, the output stays one line per problem: a surprise while
    loading is ``config error: ...`` and exit 2, never a traceback.
    """
    try:
        config = load_config(Path(args.config))
        problems = [] if args.skip_bind else check_ports_free(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{args.config}: {len(exc.problems)} problem(s)")
        return 1
    except Exception as exc:
        print(f"config error: {args.config}: {_why(exc)}")
        return 2
    for problem in problems:
        print(f"error: {problem}")
    try:
        warnings = advisories(config) + _data_report(config) + _auth_report(config)
    except Exception as exc:
        print(f"config error: {args.config}: {_why(exc)}")
        return 2
    for warning in warnings:
        print(f"warning: {warning}")
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)")
        return 1
    print(f"{args.config}: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    return 0


def _data_report(config: Config) -> list[str]:
    """Print the resolved data paths; return what would hurt ``serve`` (a wrong data_dir
    is the usual cause of every local recipient being refused)."""
    data_dir = config.gateway.data_dir.resolve()
    database = database_path(data_dir)
    paths = {
        "data_dir": data_dir,
        "directory database": database,
        "spool dir": config.spool_dir.resolve(),
        "log dir": config.log.dir.resolve(),
    }
    for label, path in paths.items():
        print(f"{label}: {path}")
    _anchor_report(config)
    try:
        count = count_mailboxes(data_dir, config.path)
    except DirectoryMissing as exc:
        return [f"{exc}; serve refuses to start without it"]
    except DirectoryError as exc:
        return [str(exc)]
    if count == 0:
        return [
            f"the directory {database} holds no mailbox: every local recipient gets"
            " 550 user unknown (add one with `mailgate mailbox add`)"
        ]
    return []


def _anchor_report(config: Config) -> None:
    """Where each day's final hash goes off the box, and where metrics are served."""
    log = config.log
    if log.timestamp_authority:
        print(f"log time-stamps: {log.timestamp_authority} (CA {log.timestamp_ca_file})")
    if log.syslog is not None:
        copy = "final hashes and every event" if log.syslog_events else "final hashes"
        print(f"log syslog: {log.syslog} ({copy})")
    if config.metrics is not None:
        print(f"metrics: http://{config.metrics.listen}/metrics")


def _auth_report(config: Config) -> list[str]:
    """Print what a login costs with [auth]'s argon2id parameters (one hash, measured
    here) and how they compare with OWASP's and RFC 9106's; return what falls short."""
    params = config.auth.argon2()
    workers = hash_workers(config.auth)
    shown = f"m={params.memory_kib} KiB t={params.time_cost} p={params.parallelism}"
    mib = params.memory_kib / 1024
    try:
        cost = measure_cost(params)
    except Exception as exc:
        return [f"auth.argon2_*: cannot hash with {shown} on this machine: {_why(exc)}"]
    per_core = 1 / cost.cpu_seconds if cost.cpu_seconds > 0 else float("inf")
    print(
        f"argon2id {shown}: {cost.wall_seconds * 1000:.0f} ms and {mib:.0f} MiB per cold login"
        f" ({cost.cpu_seconds * 1000:.0f} ms of CPU, ~{per_core:.0f} logins/s per core);"
        f" auth.hash_workers = {workers}: at most {workers} at once, {workers * mib:.0f} MiB"
    )
    ttl = config.auth.cache_ttl_seconds
    if config.auth.cache_size:
        print(
            f"login cache: up to {config.auth.cache_size} logins for {ttl:g} s;"
            " a cached login costs no argon2"
        )
    else:
        print("login cache: off (auth.cache_size = 0): every login costs one argon2 hash")
    owasp, rfc = meets_owasp(params), meets_rfc9106(params)
    print(f"argon2id meets OWASP's minimum (m=19 MiB t=2 p=1, or m=46 MiB t=1): {_yes(owasp)}")
    print(f"argon2id meets RFC 9106's second recommended option (m=64 MiB t=3 p=4): {_yes(rfc)}")
    found = []
    if not owasp:
        found.append(
            f"auth.argon2_*: {shown} is below OWASP's minimum for argon2id;"
            " write argon2_memory_kib = 19456 and argon2_time_cost = 2 at least"
        )
    elif not rfc:
        found.append(
            f"auth.argon2_*: {shown} is below RFC 9106's recommended options;"
            " write argon2_memory_kib = 65536, argon2_time_cost = 3 (the default)"
        )
    return found


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def cmd_init(args: argparse.Namespace) -> int:
    """Create what the shipped config needs on a fresh machine: folders and a TLS pair."""
    from gateway.tls import write_self_signed

    path = Path(args.config)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    smtp, gateway = raw.get("smtp", {}), raw.get("gateway", {})
    base = path.resolve().parent
    cert, key = smtp.get("tls_cert"), smtp.get("tls_key")
    if cert and key and not (base / cert).exists() and not (base / key).exists():
        write_self_signed(base / cert, base / key, gateway.get("hostname", "localhost"))
        print(f"wrote a self-signed certificate to {base / cert} (key {base / key}, mode 0600)")
    config = _config(args)
    for folder in (config.gateway.data_dir, config.log.dir):
        folder.mkdir(parents=True, exist_ok=True)
    database = database_path(config.gateway.data_dir)
    if not database.exists():
        Directory.for_data_dir(config.gateway.data_dir).close()
        print(f"created an empty directory database {database.resolve()}")
    print(f"{path}: ready")
    return 0


def _run_admin(args: argparse.Namespace) -> int:
    """Only the commands that create the first entries may create the database."""
    try:
        admin = Admin(_config(args), create=getattr(args, "creates_directory", False))
    except DirectoryError as exc:
        raise CommandError(str(exc)) from None
    try:
        args.admin_handler(admin, args)
    except DirectoryError as exc:
        raise CommandError(str(exc)) from None
    finally:
        admin.close()
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Lifecycle rules, then log retention, as of ``--now`` (idempotent: run it daily)."""
    config = _config(args)
    try:
        now = parse_time(args.now) if args.now else datetime.now(UTC)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        admin = Admin(config)
    except DirectoryError as exc:
        raise CommandError(str(exc)) from None
    try:
        changes = apply_lifecycle(admin.directory, now.date(), admin.emit)
        for change in changes:
            print(f"{change.address}: {change.old_state} -> {change.new_state} ({change.reason})")
        kept = apply_retention(config.log.dir, now, config.log.retention_days)
        admin.emit(
            "log_purged",
            reason=f"retention {config.log.retention_days} days",
            files=kept.deleted or None,
        )
        anchored = _anchor(config, now, admin)
        if kept.compressed:
            admin.emit("log_compressed", files=kept.compressed)
    finally:
        admin.close()
    removed = sum(1 for name in kept.deleted if ".jsonl" in name)
    print(
        f"lifecycle: {len(changes)} change(s); log retention: removed {removed} day file(s),"
        f" compressed {len(kept.compressed)}"
    )
    failed = [line for line in anchored if " failed: " in line]
    for line in anchored:
        print(line)
    _update_log_index(config)
    return 1 if failed else 0


def _anchor(config: Config, now: datetime, admin: Admin) -> list[str]:
    """Time-stamp finished days and send their final hashes to syslog; one line each.

    Syslog gets the days time-stamped now and, every run, yesterday's (a repeat is
    harmless; a site without an authority still gets each day once a day).
    """
    from gateway.events.anchor import (
        anchor_days,
        day_hash,
        day_hash_line,
        finished_days,
        send_to_syslog,
    )

    today = min(now.date(), datetime.now(UTC).date())  # a day still written is not finished
    lines, to_syslog = [], []
    for found, outcome in anchor_days(config.log, today):
        event = "log_anchored" if outcome == "time-stamped" else "log_anchor_failed"
        admin.emit(
            event, day=found.day, events=found.seq, final_hash=found.final_hash, reason=outcome
        )
        lines.append(f"log anchor: {found.day} {outcome}")
        if event == "log_anchored":
            to_syslog.append(found)
    if config.log.syslog is not None:
        days = finished_days(config.log.dir, today)
        yesterday = next((day_hash(d, p) for d, p in reversed(days)), None)
        if yesterday is not None and yesterday.day not in {f.day for f in to_syslog}:
            to_syslog.append(yesterday)
        try:
            send_to_syslog(config.log.syslog, [day_hash_line(f) for f in to_syslog])
        except OSError as exc:
            lines.append(f"log anchor: syslog {config.log.syslog} failed: {exc}")
    return lines


def cmd_logs_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every chain in the period is intact; 1 naming each problem."""
    from gateway.events.verify import verify

    config = _config(args)
    since, until = _day_range(args)
    report = verify(config.log.dir, since, until, _token_check(config))
    for day in report.days:
        final = day.final_hash or "-"
        print(
            f"{day.day}  {day.path.name if day.path else '-'}  {day.events} chained"
            f" {day.unchained} unchained  final {final}"
        )
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"problem: {problem}")
    events = sum(d.events for d in report.days)
    _record(
        config, "log_verified", since=args.since, until=args.until,
        reason="intact" if report.intact else f"{len(report.problems)} problem(s)",
    )  # fmt: skip
    if report.intact:
        print(f"verify: {len(report.days)} day(s), {events} chained event(s): intact")
        return 0
    print(f"verify: {len(report.days)} day(s): {len(report.problems)} problem(s)")
    return 1


def cmd_logs_export(args: argparse.Namespace) -> int:
    """The period's events and the verification result, to ``-o FILE`` or stdout; exit 1
    (after writing) when the chain is not intact, so a script notices."""
    from gateway.events.export import export

    config = _config(args)
    try:
        since = parse_time(args.since)
        until = parse_time(args.until, end_of_day=True)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.output in (None, "-"):
        report = export(config.log.dir, since, until, args.format, sys.stdout)
    else:
        target = Path(args.output)
        partial = target.with_name(target.name + ".part")
        with partial.open("w", encoding="utf-8", newline="", errors="surrogateescape") as out:
            report = export(config.log.dir, since, until, args.format, out)
        partial.replace(target)
    verdict = "intact" if report.intact else f"{len(report.problems)} problem(s)"
    _record(
        config, "log_exported", since=args.since, until=args.until, format=args.format,
        file=args.output, reason=f"chain {verdict}",
    )  # fmt: skip
    print(f"export: chain {verdict}", file=sys.stderr)
    return 0 if report.intact else 1


def _record(config: Config, event: str, **fields: Any) -> None:
    """An admin command on record (MIC 8.2: who looked at or took the logs)."""
    from gateway.events.writer import record_cli_event

    record_cli_event(config.log.dir, event, **fields)


def _token_check(config: Config) -> Callable:
    """The per-day check of ``events-DAY.tsr`` against the day's final hash."""
    from gateway.events.anchor import AnchorError, check_token, token_path
    from gateway.events.verify import Finding

    today = datetime.now(UTC).date().isoformat()

    def check(day: str, path: Path, result: Any) -> tuple[list, list]:
        token = token_path(config.log.dir, day)
        if not token.exists():
            if config.log.timestamp_authority and day < today:
                return [], [Finding(day, token.name, "not time-stamped yet (maintenance does it)")]
            return [], []
        if config.log.timestamp_ca_file is None:
            return [], [Finding(day, token.name, "not checked: no log.timestamp_ca_file")]
        try:
            when = check_token(token.read_bytes(), result.final_hash, config.log.timestamp_ca_file)
        except (AnchorError, OSError) as exc:
            text = f"does not vouch for the day's final hash (#{result.final_seq}): {exc}"
            return [Finding(day, token.name, text)], []
        return [], [Finding(day, token.name, f"time-stamped {when}: final hash confirmed")]

    return check


def _day_range(args: argparse.Namespace) -> tuple[Any, Any]:
    try:
        since = parse_time(args.since).date() if args.since else None
        until = parse_time(args.until, end_of_day=True).date() if args.until else None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return since, until


def add_chain_commands(logs: argparse._SubParsersAction, add: Callable) -> None:
    """``logs verify`` and ``logs export`` (the hash chain's commands)."""
    check = add(logs, "verify", cmd_logs_verify, "check the logs' hash chains")
    check.add_argument("--since", help="first day (YYYY-MM-DD); default: the oldest")
    check.add_argument("--until", help="last day (YYYY-MM-DD); default: the newest")
    out = add(logs, "export", cmd_logs_export, "the events of a period, with their verification")
    out.add_argument("--since", required=True, help="date or RFC 3339 time")
    out.add_argument("--until", required=True, help="date (the whole day) or RFC 3339 time")
    out.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    out.add_argument("-o", "--output", help="file to write (default: stdout)")


def _update_log_index(config: Config) -> None:
    """Index the day files not yet indexed as they are now (search works without it,
    only slower), after retention so no deleted day is indexed."""
    from gateway.events.index import update

    try:
        report = update(config.log.dir)
    except OSError as exc:  # e.g. log.dir/index not writable: a cache, not the record
        print(f"log index: not updated ({_why(exc)}); searches scan the days instead")
        return
    print(
        f"log index: {len(report.built)} day(s) indexed, {report.kept} up to date,"
        f" {len(report.removed)} removed"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, help=f"config file (default {DEFAULT_CONFIG})"
    )
    parser = argparse.ArgumentParser(
        prog="mailgate", description="SMTP/IMAP gateway for official mail", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        sub: argparse._SubParsersAction, name: str, handler: Callable, help_text: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    add(commands, "serve", cmd_serve, "run the SMTP listeners until SIGTERM; SIGHUP reloads")
    check = add(commands, "check-config", cmd_check_config, "validate the config, naming each key")
    check.add_argument(
        "--skip-bind",
        action="store_true",
        help="do not test whether listen ports are free (to check a running gateway's config)",
    )
    add(commands, "init", cmd_init, "create data folders and a self-signed TLS pair if missing")

    def add_admin(
        sub: argparse._SubParsersAction, name: str, handler: Callable, help_text: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(handler=_run_admin, admin_handler=handler)
        return command

    add_directory_commands(commands, add_admin)
    add_key_commands(commands, add, _config)

    logs = commands.add_parser("logs", help="event log").add_subparsers(
        dest="logs_command", required=True, metavar="ACTION"
    )
    add_logs_commands(logs, add)  # search, trace, index: gateway/logs_cli.py
    add_chain_commands(logs, add)  # verify, export

    maintenance = add(
        commands, "maintenance", cmd_maintenance, "apply lifecycle rules and log retention"
    )
    maintenance.add_argument("--now", help="act as of this day (YYYY-MM-DD)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Mail, spool, password hashes, keys and logs are nobody else's business on this host.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = str(DEFAULT_CONFIG)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below, not at exit
        return status
    except BrokenPipeError:
        # ``mailgate logs search | head``: the reader has all it wants. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, as a shell reports a writer killed by the pipe
    except (CommandError, KeyCommandError, LogsError) as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
