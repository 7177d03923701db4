"""filters/clamav.py against a real clamd (tests/integration/clamd.py): EICAR plain,
zipped, forwarded and at the end of a 20 MiB attachment; clean mail passes; a stopped,
hung, size-limited or unconfigured clamd is a 451, never a pass."""

from __future__ import annotations

import asyncio
import io
import os
import time
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.filter_config import read_filters
from gateway.filters.clamav import Config, check, validate
from gateway.pipeline import Action, MessageContext, Verdict
from gateway.smtp import replies
from gateway.spool import Body
from tests.integration.clamd import EICAR, SIGNATURE, PrivateClamd, SilentClamd
from tests.unit.fakes import message_context

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateClamd]:
    instance = PrivateClamd(tmp_path_factory.mktemp("clamd")).start()
    yield instance
    instance.cleanup()


def message(*attachments: tuple[str, bytes], text: str = "Gửi anh tài liệu.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "an@example.com"
    msg["To"] = "binh@example.gov.vn"
    msg["Subject"] = "Tài liệu"
    msg.set_content(text)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return out.getvalue()


def context(raw: bytes, tmp_path: Path | None = None) -> MessageContext:
    if tmp_path is None:
        body = Body.from_bytes(raw)
    else:  # a spilled body, as big messages are
        path = tmp_path / "body.eml"
        path.write_bytes(raw)
        body = Body.from_file(path, raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    return message_context(body=body)


def virus(verdict: Verdict, where: str) -> None:
    assert verdict.action is Action.REJECT and verdict.reply is not None, verdict
    assert (verdict.reply.code, verdict.reply.status) == (554, "5.7.1")
    assert verdict.reply.text.startswith(replies.VIRUS_FOUND.text + " [clamav]")
    assert SIGNATURE in verdict.reply.text and where in verdict.reply.text, verdict.reply.text


def unavailable(verdict: Verdict, *fragments: str) -> None:
    assert verdict.action is Action.TEMPFAIL and verdict.reply is not None, verdict
    assert (verdict.reply.code, verdict.reply.status) == (451, "4.7.1")
    assert "[clamav]" in verdict.reply.text
    for fragment in fragments:
        assert fragment in verdict.reply.text, verdict.reply.text


async def test_eicar_attachment_is_554_naming_signature_and_file(clamd: PrivateClamd) -> None:
    raw = message(("bao-cao.txt", b"header line\n" + EICAR + b"\n"))
    virus(await check(context(raw), Config(address=clamd.tcp_address)), "attachment bao-cao.txt")


async def test_eicar_in_the_message_text_over_the_unix_socket(clamd: PrivateClamd) -> None:
    raw = message(text=EICAR.decode() + "\n")
    virus(await check(context(raw), Config(address=clamd.unix_address)), "part 1")


async def test_zipped_eicar_is_found(clamd: PrivateClamd) -> None:
    raw = message(("tai-lieu.zip", zipped("readme.com", EICAR)))
    virus(await check(context(raw), Config(address=clamd.tcp_address)), "attachment tai-lieu.zip")


async def test_eicar_in_a_forwarded_message_is_found(clamd: PrivateClamd) -> None:
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("xem tệp")
    inner.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="x.bin")
    outer = EmailMessage()
    outer["Subject"] = "Fwd: inner"
    outer.set_content("chuyển tiếp")
    outer.add_attachment(inner)
    raw = outer.as_bytes().replace(b"\n", b"\r\n")
    virus(await check(context(raw), Config(address=clamd.tcp_address)), "attachment x.bin")


async def test_clean_mail_passes(clamd: PrivateClamd) -> None:
    raw = message(("bao-cao.pdf", b"%PDF-1.4\n%%EOF\n"), ("notes.txt", b"EICAR is a test file"))
    verdict = await check(context(raw), Config(address=clamd.tcp_address))
    assert verdict.action is Action.ACCEPT, verdict


async def test_20_mib_attachment_is_scanned_whole_under_debians_25m_limit(
    tmp_path: Path,
) -> None:
    """~28 MB on the wire, over Debian's StreamMaxLength 25M: the decoded parts are what
    goes to clamd, so the virus at the very end of the big attachment is still found."""
    debian_like = PrivateClamd(tmp_path, stream_max_length="25M").start()
    try:
        big = os.urandom(20 * MIB - len(EICAR)) + EICAR
        raw = message(("du-lieu.bin", big), ("phu-luc.pdf", b"%PDF-1.4\n%%EOF\n"))
        assert len(raw) > 25 * 1024 * 1024
        verdict = await check(context(raw, tmp_path), Config(address=debian_like.tcp_address))
        virus(verdict, "attachment du-lieu.bin")
        clean = message(("du-lieu.bin", big[: -len(EICAR)]))
        verdict = await check(context(clean, tmp_path), Config(address=debian_like.tcp_address))
        assert verdict.action is Action.ACCEPT, verdict
    finally:
        debian_like.cleanup()


async def test_eicar_beside_a_19_mib_attachment_is_found(clamd: PrivateClamd) -> None:
    raw = message(("lon.bin", os.urandom(19 * MIB)), ("nho.txt", EICAR))
    virus(await check(context(raw), Config(address=clamd.tcp_address)), "attachment nho.txt")


async def test_size_limit_answer_is_451_never_clean(tmp_path: Path) -> None:
    small = PrivateClamd(tmp_path, stream_max_length="1M").start()
    try:
        raw = message(("lon.bin", os.urandom(2 * MIB)))
        verdict = await check(context(raw), Config(address=small.tcp_address))
        unavailable(verdict, "attachment lon.bin")
    finally:
        small.cleanup()


async def test_stopped_clamd_is_451(tmp_path: Path) -> None:
    stopped = PrivateClamd(tmp_path).start()
    tcp, unix = stopped.tcp_address, stopped.unix_address
    stopped.cleanup()
    raw = message(("bao-cao.txt", b"clean"))
    unavailable(await check(context(raw), Config(address=tcp)), tcp)
    unavailable(await check(context(raw), Config(address=unix)), unix)


@pytest.mark.parametrize("size", [1, 19 * MIB])
async def test_hung_clamd_is_451_within_timeout_seconds(size: int) -> None:
    """A clamd that never answers, also one that stops reading mid-stream."""
    silent = SilentClamd()
    try:
        raw = message(("a.bin", os.urandom(size)))
        started = time.monotonic()
        config = Config(address=silent.address, timeout_seconds=0.5)
        # The outer bound turns a broken timeout into a failure instead of a hung run.
        verdict = await asyncio.wait_for(check(context(raw), config), 20)
        elapsed = time.monotonic() - started
        unavailable(verdict, "no answer within 0.5 s")
        assert elapsed < 10, elapsed  # decoding 19 MiB of base64 included
    finally:
        silent.close()


async def test_section_without_address_is_451_not_a_pass() -> None:
    unavailable(await check(context(message()), Config()), "filters.clamav.address is not set")


def test_address_is_checked_by_check_config() -> None:
    assert validate(Config(address="127.0.0.1:3310")) == []
    assert validate(Config(address="unix:/run/clamav/clamd.ctl")) == []
    for bad in ("localhost", "127.0.0.1:99999", "unix:relative.sock"):
        (problem,) = validate(Config(address=bad))
        assert problem.startswith("address:") and "127.0.0.1:3310" in problem
    errors: list[tuple[str, str]] = []
    raw = {"clamav": {"address": "clamd", "timeout_seconds": 5}}
    read_filters(raw, lambda key, msg: errors.append((key, msg)))
    assert [key for key, _ in errors] == ["filters.clamav.address"]


def test_off_without_a_section_and_on_when_enabled() -> None:
    errors: list[tuple[str, str]] = []
    assert "clamav" not in read_filters(None, lambda k, m: errors.append((k, m))).names()
    raw = {"clamav": {"enabled": True, "address": "127.0.0.1:3310"}}
    section = read_filters(raw, lambda k, m: errors.append((k, m)))
    assert not errors and "clamav" in section.names()
    assert section.settings("clamav") == Config(address="127.0.0.1:3310", timeout_seconds=30.0)


# CONTRACT.md: the section alone turns scanning on, and `address` is required in it.
def test_the_section_alone_turns_scanning_on() -> None:
    section = read_filters({"clamav": {"address": "127.0.0.1:3310"}}, lambda k, m: None)
    assert "clamav" in section.names()


def test_a_section_without_address_is_a_check_config_error() -> None:
    errors: list[tuple[str, str]] = []
    read_filters({"clamav": {"timeout_seconds": 5}}, lambda k, m: errors.append((k, m)))
    assert [key for key, _ in errors] == ["filters.clamav.address"]
