"""The ``mailgate`` console script: ``logs search|trace`` take a fast path, the rest the CLI.

The full CLI imports the directory, argon2, asyncio and every filter's config (~130 ms
before any work); a search must answer within 0.3 s with process start included, so
those two commands are parsed by :mod:`gateway.logs_cli` alone. Both paths declare the
commands with the same function, so their options cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_FAST = {("logs", "search"), ("logs", "trace")}


def command_words(argv: Sequence[str]) -> tuple[str, ...]:
    """The first two words that are not ``-c CONFIG`` (or ``--config[=]CONFIG``)."""
    words: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-c", "--config"):
            skip = True
        elif arg.startswith("-"):
            if arg in ("-h", "--help"):
                break  # help lists every command: the full CLI
            continue
        else:
            words.append(arg)
            if len(words) == 2:
                break
    return tuple(words)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if command_words(args) in _FAST:
        from gateway.logs_cli import main as logs_main

        return logs_main(args)
    from gateway.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
