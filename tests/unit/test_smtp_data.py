"""DataState against a line-by-line reference, over many inputs and block splits."""

from __future__ import annotations

import random

import pytest

from gateway.smtp import replies
from gateway.smtp.data import DataLimits, DataState

LIMITS = DataLimits(max_message_size=5000, max_line_length=80, max_header_lines=6,
                    max_header_bytes=300)  # fmt: skip


def reference(wire: bytes, limits: DataLimits) -> tuple[int | None, bytes, bytes]:
    """RFC 5321 4.5.2 read the slow way: one CRLF-terminated line at a time.
    Returns (error code or None, body, headers) for the text up to the first "." line."""
    body, headers, error = b"", b"", None
    in_headers, header_lines = True, 0
    lines = wire.split(b"\r\n")
    for line in lines[:-1]:
        if line == b".":
            break
        if error is not None:
            continue
        if b"\r" in line or b"\n" in line:
            error = replies.BARE_LINE_ENDING.code
            continue
        if len(line) >= limits.max_line_length:
            error = replies.LINE_TOO_LONG.code
            continue
        if line.startswith(b"."):
            line = line[1:]
        if len(body) + len(line) + 2 > limits.max_message_size:
            error = replies.MESSAGE_TOO_BIG.code
            continue
        if in_headers:
            if line == b"":
                in_headers = False
            else:
                header_lines += 1
                headers += line + b"\r\n"
                if header_lines > limits.max_header_lines:
                    error = replies.TOO_MANY_HEADERS.code
                    continue
                if len(headers) > limits.max_header_bytes:
                    error = replies.HEADERS_TOO_BIG.code
                    continue
        body += line + b"\r\n"
    return error, body, headers


def run(wire: bytes, cuts: list[int], limit: int = 16) -> tuple[DataState, bytes, int]:
    """Feed ``wire`` as the server does: bytes arrive in pieces cut at ``cuts``; each read
    returns up to the first ".<CR><LF>" or, past ``limit`` bytes without one, all but the
    last two bytes (asyncio's LimitOverrunError.consumed)."""
    state = DataState(LIMITS)
    body, buffer, used = b"", b"", 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        buffer = wire[used:cut]
        while not state.done:
            end = buffer.find(b".\r\n")
            if end >= 0:
                piece = buffer[: end + 3]
            elif len(buffer) > limit:
                piece = buffer[: len(buffer) - 2]
            else:
                break
            buffer = buffer[len(piece) :]
            used += len(piece)
            body += state.feed(piece)
        if state.done:
            break
    return state, body, used


LINES = [b"Subject: hi", b"X-A: 1", b"", b"body", b".dot", b"..two", b"", b"x" * 79,
         b"x" * 78, b"a\nb", b"a\rb", b"tail.", b"."[:0]]  # fmt: skip


@pytest.mark.parametrize("seed", range(300))
def test_matches_line_by_line_reading(seed: int) -> None:
    rng = random.Random(seed)
    lines = [rng.choice(LINES) for _ in range(rng.randint(0, 12))]
    wire = b"".join(line + b"\r\n" for line in lines) + b".\r\nMAIL FROM:<next@x>\r\n"
    cuts = [rng.randint(0, len(wire)) for _ in range(rng.randint(0, 6))]
    state, body, used = run(wire, cuts)
    code, expected_body, expected_headers = reference(wire, LIMITS)
    assert state.done
    assert wire[used:] == b"MAIL FROM:<next@x>\r\n", "nothing after the dot is consumed"
    # Both refuse the same messages; which of several problems is named first may differ,
    # since blocks are checked problem by problem rather than line by line.
    assert (state.error is None) == (code is None)
    if code is None:
        assert body == expected_body
        assert bytes(state.headers) == expected_headers


@pytest.mark.parametrize(
    "smuggled", [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r"]
)
def test_smuggling_sequences_never_end_data(smuggled: bytes) -> None:
    wire = b"Subject: a\r\n\r\nfirst" + smuggled + b"MAIL FROM:<x@y>\r\n" + b".\r\n"
    state, _, used = run(wire, [])
    assert state.done and used == len(wire), "only the real <CRLF>.<CRLF> ends DATA"
    assert state.error is not None and state.error.code == replies.BARE_LINE_ENDING.code


def test_over_long_line_split_across_many_blocks() -> None:
    wire = b"Subject: a\r\n\r\n" + b"y" * 1000 + b"\r\n.\r\n"
    state, body, _ = run(wire, list(range(20, 1000, 37)))
    assert body == b"Subject: a\r\n\r\n", "nothing of the refused line is kept"
    assert state.done and state.error is not None
    assert state.error.code == replies.LINE_TOO_LONG.code
    assert "[smtp.max_line_length]" in state.error.text


def test_empty_message_and_terminator_right_after_a_block() -> None:
    state = DataState(LIMITS)
    assert state.feed(b".\r\n") == b"" and state.done and state.error is None
    state = DataState(LIMITS)
    assert state.feed(b"Subject: x\r\n\r\nbody\r\n") == b"Subject: x\r\n\r\nbody\r\n"
    assert not state.done
    assert state.feed(b".\r\n") == b"" and state.done
    assert bytes(state.headers) == b"Subject: x\r\n"
