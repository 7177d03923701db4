"""gateway/imap/syntax.py: what the proxy accepts from a client before login."""

from __future__ import annotations

import asyncio

import pytest

from gateway.imap.syntax import LineTooLong, Literal, Malformed, parse, quote, read_command


def test_atoms_quoted_strings_and_literals() -> None:
    command = parse([b'a1 login "an@example.gov.vn" "p\\"w\\\\d" ', Literal("mật".encode())])
    assert (command.tag, command.name) == ("a1", "LOGIN")
    assert command.args == ["an@example.gov.vn", 'p"w\\d', "mật"]
    assert parse([b'x ID ("name" "mutt")']).args == ["(", "name", "mutt", ")"]
    assert quote('p"w\\d') == '"p\\"w\\\\d"'


@pytest.mark.parametrize(
    "line",
    [b"", b"lonely", b'a LOGIN "open', b'a LOGIN "bad\\x"', b"a+ NOOP", b"a NO-OP", b"a NOOP\x00"],
)
def test_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(Malformed):
        parse([line])


def feed(data: bytes, limit: int = 64) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_literals_are_read_and_capped() -> None:
    asked: list[str] = []

    async def go_on() -> None:
        asked.append("+")

    async def read(data: bytes, cap: int = 16):
        return await read_command(feed(data), go_on, cap)

    command = asyncio.run(read(b"a LOGIN {2}\r\nan {3+}\r\npw!\r\n"))
    assert command.args == ["an", "pw!"] and asked == ["+"]  # {3+} needs no "+"
    with pytest.raises(LineTooLong):
        asyncio.run(read(b"a LOGIN {17}\r\n"))
    with pytest.raises(LineTooLong):
        asyncio.run(read(b"a LOGIN " + b"x" * 200))
