"""``mailgate logs search`` and ``mailgate logs trace``: arguments and output.

Incident responders run these in loops, so they answer within 0.3 s at 20 M events,
process start included: :mod:`gateway.entry` sends them here without importing the rest
of the CLI (the directory, argon2, asyncio), and this module imports only the config
loader and the event readers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from gateway.events.index import INDEX_DIR

__all__ = ["add_logs_commands", "cmd_logs_search", "cmd_logs_trace", "log_dir"]


class LogsError(Exception):
    """A one-line reason for the user (exit 1)."""


_CHECKED = ".config-checked"  # in log.dir/index: this config's bytes passed load_config


def log_dir(args: argparse.Namespace) -> Path:
    """``log.dir`` from the config, or a one-line reason why it cannot be read.

    Validating the whole config imports every filter and costs ~0.12 s of the 0.3 s a
    search may take. So the first search with a given config validates it in full and
    records the SHA-256 of its bytes in ``log.dir/index/.config-checked``; later searches
    with the very same bytes read only ``[log] dir``. Any edit of the file, even one
    that does not touch ``[log]``, means a full validation again.
    """
    path = Path(args.config)
    checked = _checked_log_dir(path)
    if checked is not None:
        return checked
    from gateway.config import ConfigError, load_config

    try:
        before = path.read_bytes()
        folder = load_config(path).log.dir
    except ConfigError as exc:
        more = len(exc.problems) - 1
        extra = f" (and {more} more; run check-config)" if more else ""
        raise LogsError(f"invalid config {args.config}: {exc.problems[0]}{extra}") from None
    except Exception as exc:
        raise LogsError(f"invalid config {args.config}: {type(exc).__name__}: {exc}") from None
    _remember(path, before, folder)
    return folder


def _stamp(data: bytes, config: Path, folder: Path) -> str:
    from hashlib import sha256

    return f"{sha256(data).hexdigest()} {config.resolve()} {folder}\n"


def _checked_log_dir(config: Path) -> Path | None:
    """The log dir if these exact config bytes were validated before, else None."""
    import tomllib

    try:
        data = config.read_bytes()
        folder = Path(tomllib.loads(data.decode("utf-8"))["log"]["dir"])
        if not folder.is_absolute():  # as gateway.config resolves relative paths
            folder = config.resolve().parent / folder
        stamp = folder / INDEX_DIR / _CHECKED
        if stamp.read_text(encoding="utf-8") == _stamp(data, config, folder):
            return folder
    except Exception:  # anything unexpected: validate in full, which explains it
        return None
    return None


def _remember(config: Path, data: bytes, folder: Path) -> None:
    """Record that ``data`` passed validation (best effort: only where the index lives)."""
    target = folder / INDEX_DIR / _CHECKED
    try:
        if not target.parent.is_dir() or config.read_bytes() != data:
            return
        tmp = target.with_name(f"{_CHECKED}.{os.getpid()}.tmp")
        tmp.write_text(_stamp(data, config, folder), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        pass


def _progress() -> Callable[[int, int, date], None] | None:
    """A one-line progress bar on stderr, only when a person is watching stderr."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, day: date) -> None:
        filled = 30 * done // max(total, 1)
        bar = "#" * filled + "." * (30 - filled)
        end = "\n" if done + 1 >= total else ""
        sys.stderr.write(f"\rscanning [{bar}] day {done + 1}/{total} {day}{end}")
        sys.stderr.flush()

    return show


def cmd_logs_search(args: argparse.Namespace) -> int:
    from gateway.events.names import KNOWN_EVENTS
    from gateway.events.search import Query, parse_time, search, search_lines

    try:
        query = Query(
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until, end_of_day=True) if args.until else None,
            sender=args.sender,
            recipient=args.recipient,
            message_id=args.message_id,
            event=args.event,
            session=args.session,
            client=args.client,
            user=args.user,
            reason=args.reason,
        )
    except ValueError as exc:
        raise LogsError(str(exc)) from None
    from gateway.events.lookup import query_plan

    keys, _ = query_plan(query)
    progress = _progress() if keys is None else None
    found = False
    out = sys.stdout
    if args.json:  # as stored: nothing decoded is encoded again
        for text in search_lines(log_dir(args), query, progress):
            found = True
            out.write(text + "\n")
    else:
        from gateway.events.table import header, row

        for record in search(log_dir(args), query, progress):
            if not found:
                out.write(header() + "\n")
            found = True
            out.write(row(record) + "\n")
    if not found and args.event is not None and args.event not in KNOWN_EVENTS:
        # A typo must not look like "it never happened". Names the gateway does not know
        # are still searched: events imported from elsewhere may carry them.
        print(
            f"mailgate: no event is named {args.event!r}; known events:"
            f" {', '.join(sorted(KNOWN_EVENTS))}",
            file=sys.stderr,
        )
        return 2
    return 0


def cmd_logs_trace(args: argparse.Namespace) -> int:
    """The story of one message; exit 1 when the log holds nothing about it."""
    from gateway.events.trace import story, trace

    records = trace(log_dir(args), args.message_id)
    if not records:
        raise LogsError(f"no event names message {args.message_id!r}")
    if args.json:
        for record in records:
            sys.stdout.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        for line in story(args.message_id, records):
            sys.stdout.write(line + "\n")
    return 0


def cmd_logs_index(args: argparse.Namespace) -> int:
    """Bring the log index up to date now (``maintenance`` does it too, with the rest)."""
    from gateway.events.index import update

    try:
        report = update(log_dir(args))
    except OSError as exc:
        raise LogsError(f"cannot update the log index: {type(exc).__name__}: {exc}") from None
    print(
        f"log index: {len(report.built)} day(s) indexed, {report.kept} up to date,"
        f" {len(report.removed)} removed"
    )
    return 0


def add_logs_commands(
    logs: argparse._SubParsersAction,
    add: Callable[[argparse._SubParsersAction, str, Callable, str], argparse.ArgumentParser],
) -> None:
    """Declare ``logs search``, ``trace`` and ``index`` (used by gateway.cli and gateway.entry)."""
    search = add(logs, "search", cmd_logs_search, "find events (indexed by id, address, client)")
    for option, meaning in (
        ("--since", "from this time (RFC 3339 with a zone, or a date)"),
        ("--until", "up to this time (a date: its end)"),
        ("--sender", "address, or @domain"),
        ("--recipient", "address, or @domain"),
        ("--message-id", "with or without <>"),
        ("--event", "event name (scans)"),
        ("--session", "session id"),
        ("--client", "peer IP address"),
        ("--user", "authenticated login"),
        ("--reason", "text the reason contains, any case (scans)"),
    ):
        search.add_argument(option, help=meaning)
    search.add_argument("--json", action="store_true", help="one JSON object per line, as stored")
    trace = add(logs, "trace", cmd_logs_trace, "one message's story in order, across days")
    trace.add_argument("message_id", metavar="MESSAGE-ID")
    trace.add_argument("--json", action="store_true", help="the events, one JSON object per line")
    add(logs, "index", cmd_logs_index, "index the days not indexed yet (e.g. hourly: today's file)")


def main(argv: list[str]) -> int:
    """Parse and run a ``logs search|trace`` command line without loading the whole CLI."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="mailgate", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    logs = commands.add_parser("logs", parents=[common]).add_subparsers(
        dest="logs_command", required=True
    )

    def add(
        sub: argparse._SubParsersAction, name: str, handler: Callable, help_text: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    add_logs_commands(logs, add)
    os.umask(0o077)
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        from gateway.config import DEFAULT_CONFIG

        args.config = str(DEFAULT_CONFIG)
    try:
        status = args.handler(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except LogsError as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
