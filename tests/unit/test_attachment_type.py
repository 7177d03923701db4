"""filters/attachment_type.py: executables and scripts by name, by content, disguised,
and inside zip attachments; documents pass."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage

import pytest

from gateway.filter_config import read_filters
from gateway.filters.attachment_type import Config, check, validate
from gateway.mime import sniff
from gateway.mime.model import Inspection, InspectionLimits, Part, TextSource
from gateway.mime.parse import inspect_body
from gateway.pipeline import Action, MessageContext, Verdict
from gateway.smtp import replies
from tests.unit.fakes import message_context

# A minimal PE image: DOS header whose e_lfanew (offset 60) points at "PE\0\0".
PE_IMAGE = b"MZ" + b"\x90" * 58 + (64).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200


def context(inspection: Inspection) -> MessageContext:
    return message_context(inspection=inspection)


def part(
    filename: str | None,
    sniffed: str | None = None,
    ctype: str = "application/octet-stream",
    attachment: bool = True,
) -> Part:
    return Part("2", ctype, sniffed, filename, "attachment" if attachment else None, 10, attachment)


async def verdict_of(parts: tuple[Part, ...], texts: tuple[TextSource, ...] = ()) -> Verdict:
    return await check(context(Inspection(parts, texts, 10)), Config())


def refused(verdict: Verdict, *fragments: str) -> None:
    assert verdict.action is Action.REJECT and verdict.reply is not None, verdict
    assert (verdict.reply.code, verdict.reply.status) == (550, "5.7.1")
    assert verdict.reply.text.startswith(replies.BLOCKED_ATTACHMENT.text)
    assert "[attachment_type]" in verdict.reply.text
    for fragment in fragments:
        assert fragment in verdict.reply.text, verdict.reply.text


# -- by name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["setup.exe", "SETUP.EXE", "run.ps1", "a.vbs", "x.js", "l.lnk", "i.hta", "s.sh"]
)
async def test_blocked_extension_is_refused_naming_the_file(name: str) -> None:
    refused(await verdict_of((part(name),)), "blocked file type", name)


async def test_windows_trailing_dots_and_spaces_do_not_hide_the_extension() -> None:
    refused(await verdict_of((part("setup.exe. . "),)), "blocked file type .exe")


async def test_double_extension_is_named_as_such() -> None:
    refused(await verdict_of((part("hop-dong.pdf.exe"),)), "double extension .pdf.exe")


async def test_spaces_before_the_real_extension_are_a_double_extension() -> None:
    verdict = await verdict_of((part("hop-dong.pdf" + " " * 40 + ".exe"),))
    refused(verdict, "double extension .pdf.exe", "[40 spaces]")


async def test_right_to_left_override_is_refused_and_shown_escaped() -> None:
    # Displays as "hop-dongexe.pdf"; the real extension is .pdf here, the override is
    # what gives the disguise away.
    verdict = await verdict_of((part("hop-dong\u202eexe.pdf"),))
    refused(verdict, "direction override", "hop-dong\\u202eexe.pdf")
    assert "\u202e" not in verdict.reply.text  # type: ignore[union-attr]


async def test_override_rule_can_be_turned_off() -> None:
    inspection = Inspection((part("hop-dong\u202eexe.pdf"),), (), 10)
    verdict = await check(context(inspection), Config(refuse_bidi_names=False))
    assert verdict.action is Action.ACCEPT


async def test_documents_pass() -> None:
    parts = (
        part(None, None, "text/plain", attachment=False),
        part("bao-cao.pdf", sniff.PDF),
        part("ke-hoach.docx", sniff.DOCX),
        part("v1.2.final.xlsx", sniff.XLSX),
        part("README"),
    )
    assert (await verdict_of(parts)).action is Action.ACCEPT


async def test_the_extension_list_is_the_operators() -> None:
    inspection = Inspection((part("notes.md"),), (), 10)
    verdict = await check(context(inspection), Config(extensions=(".MD",)))
    refused(verdict, "blocked file type .md")
    inspection = Inspection((part("setup.exe"),), (), 10)
    verdict = await check(context(inspection), Config(extensions=("bat",)))
    assert verdict.action is Action.ACCEPT


# -- by content -----------------------------------------------------------------------


async def test_executable_content_named_pdf_is_refused() -> None:
    verdict = await verdict_of((part("hop-dong.pdf", sniff.PE),))
    refused(verdict, "executable content", "hop-dong.pdf")


async def test_executable_content_without_a_name_is_refused() -> None:
    verdict = await verdict_of((part(None, sniff.ELF, attachment=False),))
    refused(verdict, "executable content", "part 2")


async def test_a_script_pasted_into_the_message_text_is_prose() -> None:
    body = part(None, sniff.SCRIPT, "text/plain", attachment=False)
    assert (await verdict_of((body,))).action is Action.ACCEPT
    refused(await verdict_of((part("notes.txt", sniff.SCRIPT, "text/plain"),)), "notes.txt")


# -- zip members ----------------------------------------------------------------------


def member(archive: str, name: str) -> TextSource:
    return TextSource(f"attachment {archive} member", name, "filename", "2")


async def test_blocked_zip_member_is_refused_naming_archive_and_member() -> None:
    verdict = await verdict_of((part("goi.zip", sniff.ZIP),), (member("goi.zip", "bin/setup.exe"),))
    refused(verdict, "in archive goi.zip", "bin/setup.exe")


async def test_zip_of_documents_passes_and_member_check_can_be_turned_off() -> None:
    ok = (member("goi.zip", "bao-cao.pdf"), member("goi.zip", "thu-muc/"))
    assert (await verdict_of((part("goi.zip", sniff.ZIP),), ok)).action is Action.ACCEPT
    bad = Inspection((part("goi.zip", sniff.ZIP),), (member("goi.zip", "setup.exe"),), 10)
    verdict = await check(context(bad), Config(check_archive_members=False))
    assert verdict.action is Action.ACCEPT


# -- real messages through the one MIME parse ------------------------------------------


def message(*attachments: tuple[str, bytes, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "an@example.com"
    msg["To"] = "binh@example.gov.vn"
    msg["Subject"] = "Hợp đồng"
    msg.set_content("Gửi anh hợp đồng.\n")
    for name, data, ctype in attachments:
        main, sub = ctype.split("/")
        msg.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def zipped(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


async def parsed_verdict(raw: bytes) -> Verdict:
    inspection = inspect_body(b"", raw, None, InspectionLimits())
    assert not inspection.problems, inspection.problems
    return await check(context(inspection), Config())


async def test_parsed_pe_named_pdf_is_refused() -> None:
    raw = message(("hop-dong.pdf", PE_IMAGE, "application/pdf"))
    refused(
        await parsed_verdict(raw), "executable content (application/x-msdownload)", "hop-dong.pdf"
    )


async def test_parsed_large_executable_is_still_sniffed() -> None:
    # Large parts are measured slice by slice; their first bytes must still be sniffed.
    raw = message(("du-lieu.dat", PE_IMAGE + bytes(12 * 1024 * 1024), "application/pdf"))
    refused(await parsed_verdict(raw), "executable content", "du-lieu.dat")


async def test_parsed_zip_holding_setup_exe_is_refused() -> None:
    raw = message(("goi.zip", zipped(**{"setup.exe": PE_IMAGE}), "application/zip"))
    refused(await parsed_verdict(raw), "in archive goi.zip", "setup.exe")


async def test_parsed_double_extension_is_refused() -> None:
    raw = message(("hop-dong.pdf.exe", PE_IMAGE, "application/octet-stream"))
    refused(await parsed_verdict(raw), "double extension .pdf.exe: hop-dong.pdf.exe")


async def test_parsed_pdf_and_docx_pass() -> None:
    import docx
    from fpdf import FPDF

    document = docx.Document()
    document.add_paragraph("Kính gửi: các đơn vị")
    out = io.BytesIO()
    document.save(out)
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=14)
    pdf.cell(text="Hop dong")
    pdf_data = bytes(pdf.output())
    raw = message(
        ("bao-cao.pdf", pdf_data, "application/pdf"),
        ("ke-hoach.docx", out.getvalue(), "application/octet-stream"),
        ("tai-lieu.zip", zipped(**{"a.pdf": pdf_data}), "application/zip"),
    )
    verdict = await parsed_verdict(raw)
    assert verdict.action is Action.ACCEPT, verdict


# -- sniffing and config -----------------------------------------------------------------


def test_sniff_knows_the_executable_formats() -> None:
    assert sniff.sniff(PE_IMAGE) == sniff.PE
    assert sniff.sniff(b"MZ is also how a text may start" + b" " * 64) is None
    assert sniff.sniff(b"\x7fELF\x02\x01\x01" + b"\x00" * 60) == sniff.ELF
    assert sniff.sniff(b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 60) == sniff.MACHO
    assert sniff.sniff(b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + b"\x00" * 60) == sniff.MACHO
    assert sniff.sniff(b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\x00" * 60) == sniff.JAVA_CLASS
    assert sniff.sniff(b"#!/bin/sh\nrm -rf ~\n") == sniff.SCRIPT


def test_validate_names_key_and_fix() -> None:
    assert validate(Config()) == []
    problems = validate(Config(extensions=("exe", "a b"), sniffed_types=("exe",)))
    assert any(p.startswith("extensions:") and '"a b"' in p for p in problems)
    assert any(p.startswith("sniffed_types:") for p in problems)


def test_on_by_default_and_tunable_from_the_config() -> None:
    errors: list[tuple[str, str]] = []
    section = read_filters(None, lambda key, msg: errors.append((key, msg)))
    assert "attachment_type" in section.names() and not errors
    raw = {"attachment_type": {"extensions": ["exe", "x y"]}}
    read_filters(raw, lambda key, msg: errors.append((key, msg)))
    assert errors and errors[0][0] == "filters.attachment_type.extensions"
