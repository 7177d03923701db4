"""Text inside attachments (office documents and PDFs built here with the libraries
that write them), and bombs that must stop at the inflation caps."""

from __future__ import annotations

import base64
import io
import time
import zipfile
from pathlib import Path

import pytest

from gateway.mime import extract, sniff
from gateway.mime.model import Inspection, InspectionLimits
from gateway.mime.parse import inspect_body

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # fonts-dejavu-core
SECRET = "Tài liệu TỐI MẬT số 12"
LIMITS = InspectionLimits()


def attach(data: bytes, filename: str, ctype: str = "application/octet-stream") -> bytes:
    """A message carrying ``data`` as a base64 attachment."""
    encoded = base64.encodebytes(data).decode("ascii")
    text = (
        "From: a@example.vn\nSubject: attached\nMIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=B\n\n"
        "--B\nContent-Type: text/plain; charset=utf-8\n\nsee attachment\n"
        f"--B\nContent-Type: {ctype}\n"
        f'Content-Disposition: attachment; filename="{filename}"\n'
        f"Content-Transfer-Encoding: base64\n\n{encoded}--B--\n"
    )
    return text.replace("\n", "\r\n").encode()


def attachment_text(result: Inspection, filename: str) -> str:
    found = [
        t.text
        for t in result.texts
        if t.location == f"attachment {filename}" and t.kind == "attachment"
    ]
    assert len(found) == 1, result
    return found[0]


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph("Kính gửi: các đơn vị")
    document.add_paragraph(SECRET)
    document.sections[0].header.paragraphs[0].text = "Độ mật: Mật"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def xlsx_bytes() -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet["A1"] = "Bảng lương"
    sheet["B2"] = SECRET
    sheet["C3"] = 42
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def pptx_bytes() -> bytes:
    """python-pptx is not a dependency: a minimal presentation written by hand, with
    the parts PowerPoint needs to open it (content types, presentation, one slide)."""
    p = "http://schemas.openxmlformats.org/presentationml/2006/main"
    a = "http://schemas.openxmlformats.org/drawingml/2006/main"
    slide = (
        f'<?xml version="1.0" encoding="UTF-8"?><p:sld xmlns:p="{p}" xmlns:a="{a}">'
        "<p:cSld><p:spTree><p:sp><p:txBody><a:p><a:r><a:t>Trang 1</a:t></a:r></a:p>"
        f"<a:p><a:r><a:t>{SECRET}</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld>"
        "</p:sld>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("ppt/presentation.xml", f'<p:presentation xmlns:p="{p}"/>')
        z.writestr("ppt/slides/slide1.xml", slide.encode())
    return out.getvalue()


def odf_bytes(kind: str) -> bytes:
    from odf.opendocument import OpenDocumentSpreadsheet, OpenDocumentText
    from odf.table import Table, TableCell, TableRow
    from odf.text import P

    if kind == "odt":
        document = OpenDocumentText()
        document.text.addElement(P(text="Công văn"))
        document.text.addElement(P(text=SECRET))
    else:
        document = OpenDocumentSpreadsheet()
        table = Table(name="Sheet1")
        row = TableRow()
        for value in ("Bảng", SECRET):
            cell = TableCell()
            cell.addElement(P(text=value))
            row.addElement(cell)
        table.addElement(row)
        document.spreadsheet.addElement(table)
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def pdf_bytes() -> bytes:
    from fpdf import FPDF

    assert FONT.exists(), "install fonts-dejavu-core (scripts/test does)"
    pdf = FPDF()
    pdf.add_page()
    pdf.add_font("DejaVu", fname=str(FONT))
    pdf.set_font("DejaVu", size=14)
    pdf.cell(text="Trang một")
    pdf.ln()
    pdf.cell(text=SECRET)
    return bytes(pdf.output())


DOCUMENTS = {
    "bao-cao.docx": (docx_bytes, sniff.DOCX),
    "bang.xlsx": (xlsx_bytes, sniff.XLSX),
    "trinh-chieu.pptx": (pptx_bytes, sniff.PPTX),
    "cong-van.odt": (lambda: odf_bytes("odt"), sniff.ODT),
    "bang.ods": (lambda: odf_bytes("ods"), sniff.ODS),
    "van-ban.pdf": (pdf_bytes, sniff.PDF),
}


@pytest.mark.parametrize("filename", DOCUMENTS)
def test_document_text_is_extracted(filename):
    make, kind = DOCUMENTS[filename]
    result = inspect_body(b"", attach(make(), filename), None, LIMITS)
    assert result.problems == ()
    assert result.parts[1].sniffed_type == kind
    text = attachment_text(result, filename)
    assert SECRET in text


def test_docx_header_text_is_extracted_too():
    result = inspect_body(b"", attach(docx_bytes(), "a.docx"), None, LIMITS)
    assert "Độ mật: Mật" in attachment_text(result, "a.docx")


def test_document_under_a_wrong_name_is_read_by_content():
    result = inspect_body(b"", attach(docx_bytes(), "anh.jpg", "image/jpeg"), None, LIMITS)
    assert SECRET in attachment_text(result, "anh.jpg")


def test_text_and_html_attachments():
    html = f"<html><body><h1>{SECRET}</h1></body></html>".encode()
    result = inspect_body(b"", attach(html, "trang.html", "text/html"), None, LIMITS)
    assert attachment_text(result, "trang.html").strip() == SECRET
    plain = SECRET.encode("utf-8")
    result = inspect_body(b"", attach(plain, "ghi-chu.txt"), None, LIMITS)
    assert attachment_text(result, "ghi-chu.txt") == SECRET


def test_forwarded_docx_location_names_the_forwarded_message():
    inner = attach(docx_bytes(), "bao-cao.docx").decode()
    raw = (
        "Subject: Fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=OUT\r\n\r\n"
        f"--OUT\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--OUT--\r\n"
    ).encode()
    result = inspect_body(b"", raw, None, LIMITS)
    assert result.problems == ()
    assert SECRET in attachment_text(result, "bao-cao.docx in forwarded message")


def test_document_that_is_not_one_is_a_problem():
    result = inspect_body(b"", attach(b"just bytes", "bao-cao.docx"), None, LIMITS)
    assert result.problems == (
        "cannot inspect attachment bao-cao.docx: broken zip archive (File is not a zip file)",
    )


def test_docx_with_broken_xml_is_a_problem():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document><w:body>")
    result = inspect_body(b"", attach(out.getvalue(), "x.docx"), None, LIMITS)
    assert len(result.problems) == 1
    assert "word/document.xml: broken XML" in result.problems[0]


def test_docx_with_entity_expansion_is_refused():
    lol = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<w:document xmlns:w="urn:w"><w:t>&b;</w:t></w:document>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", lol)
    result = inspect_body(b"", attach(out.getvalue(), "lol.docx"), None, LIMITS)
    assert len(result.problems) == 1
    assert "forbidden XML construct" in result.problems[0]


def test_encrypted_zip_member_is_a_problem():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("a.txt", "x")
    data = bytearray(out.getvalue())
    # Set the "encrypted" flag in the local and central headers.
    data[6] |= 1
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 1
    result = inspect_body(b"", attach(bytes(data), "a.zip"), None, LIMITS)
    assert result.problems == ("cannot inspect attachment a.zip: a.txt is encrypted",)


def test_zip_member_names_are_texts():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("tài liệu mật.txt", "x")
    result = inspect_body(b"", attach(out.getvalue(), "goi.zip"), None, LIMITS)
    assert result.problems == ()
    names = [t.text for t in result.texts if t.location == "attachment goi.zip member"]
    assert names == ["tài liệu mật.txt"]


# --- bombs --------------------------------------------------------------------------


def deflated_member(name: str, head: bytes, fill: bytes, size: int, tail: bytes) -> bytes:
    """A zip whose member ``name`` inflates to ``size`` bytes, written in 1 MiB
    chunks (the archive itself is a few hundred kilobytes)."""
    out = io.BytesIO()
    chunk = fill * (1024 * 1024 // len(fill))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open(name, "w", force_zip64=True) as member:
            member.write(head)
            left = size - len(head) - len(tail)
            while left > 0:
                member.write(chunk[:left])
                left -= len(chunk)
            member.write(tail)
    return out.getvalue()


@pytest.fixture(scope="module")
def docx_bomb() -> bytes:
    # Well-formed XML all the way (spaces between elements), so only the cap stops it.
    head = b'<w:document xmlns:w="urn:w"><w:body><w:p><w:r><w:t>mat</w:t></w:r></w:p>'
    return deflated_member(
        "word/document.xml", head, b" ", 200 * 1024 * 1024, b"</w:body></w:document>"
    )


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    return deflated_member("zeros.bin", b"", b"\0", 500 * 1024 * 1024, b"")


def test_docx_bomb_stops_at_the_member_cap(docx_bomb):
    assert len(docx_bomb) < 2 * 1024 * 1024
    started = time.monotonic()
    result = inspect_body(b"", attach(docx_bomb, "bao-cao.docx"), None, LIMITS)
    elapsed = time.monotonic() - started
    assert result.problems == (
        "cannot inspect attachment bao-cao.docx: word/document.xml inflates past "
        f"{LIMITS.max_inflated_member} bytes",
    )
    assert elapsed < 5


def test_inflation_is_counted_while_streaming_not_only_as_declared():
    """Declared sizes can lie: the bytes are counted as they inflate, too."""
    data = deflated_member(
        "word/document.xml", b"<w:document>", b" ", 40 * 1024 * 1024, b"</w:document>"
    )
    archive = extract._Archive(data, extract.Budget(InspectionLimits()))  # declared: fine
    archive._budget = extract.Budget(InspectionLimits(max_inflated_member=16 * 1024 * 1024))
    (info,) = [i for i in archive.infos if i.filename == "word/document.xml"]
    with pytest.raises(extract.Uninspectable, match="inflates past 16777216 bytes"):
        archive.drain(info)


def test_zip_of_500_mb_of_zeros_is_refused_quickly(zip_bomb):
    started = time.monotonic()
    result = inspect_body(b"", attach(zip_bomb, "zeros.zip"), None, LIMITS)
    assert time.monotonic() - started < 5
    assert result.problems == (
        f"cannot inspect attachment zeros.zip: zeros.bin inflates past "
        f"{LIMITS.max_inflated_member} bytes",
    )


def test_archive_total_cap():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(5):
            z.writestr(f"m{i}.bin", b"\0" * 300_000)
    limits = InspectionLimits(max_inflated_total=1_000_000)
    result = inspect_body(b"", attach(out.getvalue(), "many.zip"), None, limits)
    assert result.problems == (
        "cannot inspect attachment many.zip: archive members inflate past 1000000 bytes",
    )


def test_archive_member_count_cap():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i in range(12):
            z.writestr(f"m{i}", b"")
    limits = InspectionLimits(max_archive_members=10)
    result = inspect_body(b"", attach(out.getvalue(), "many.zip"), None, limits)
    assert result.problems == ("cannot inspect attachment many.zip: more than 10 archive members",)


# --- the XML reader (expat, bound directly) -------------------------------------------


def docx_with(document_xml: str | bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", document_xml)
    return out.getvalue()


@pytest.mark.parametrize(
    "prolog",
    [
        "<!DOCTYPE d>",  # office XML never has one: refused before anything is declared
        '<!DOCTYPE d SYSTEM "file:///etc/passwd">',
        '<!DOCTYPE d [<!ENTITY x SYSTEM "http://example.invalid/x">]>',
        '<!DOCTYPE d [<!ENTITY % p "x">]>',
    ],
)
def test_any_doctype_is_refused(prolog):
    xml = f'<?xml version="1.0"?>{prolog}<w:document xmlns:w="urn:w"><w:t>x</w:t></w:document>'
    result = inspect_body(b"", attach(docx_with(xml), "d.docx"), None, LIMITS)
    assert result.problems == (
        "cannot inspect attachment d.docx: word/document.xml: forbidden XML construct (DOCTYPE)",
    )


def test_undefined_entity_is_broken_xml_not_text():
    xml = '<w:document xmlns:w="urn:w"><w:t>&b;</w:t></w:document>'
    result = inspect_body(b"", attach(docx_with(xml), "d.docx"), None, LIMITS)
    assert len(result.problems) == 1
    assert "word/document.xml: broken XML" in result.problems[0]


def test_ooxml_text_runs_tabs_and_breaks():
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    xml = (
        f'<w:document xmlns:w="{w}"><w:body><w:p><w:r><w:t>Số</w:t><w:tab/>'
        "<w:t xml:space='preserve'> 12 &amp; &#x1EA0;</w:t></w:r><w:r><w:instrText>HYPERLINK"
        "</w:instrText><w:delText>cũ</w:delText></w:r></w:p><w:p><w:r><w:t><![CDATA[a<b]]>"
        "</w:t></w:r></w:p></w:body></w:document>"
    )
    budget = extract.Budget(LIMITS)
    out = budget.part_text()
    extract.office_text(docx_with(xml), sniff.DOCX, out, budget)
    assert out.text() == "Số\t 12 & Ạcũ\na<b\n\n"


def test_xml_reader_stops_at_the_inflated_cap_while_streaming():
    """The cap is checked per inflated chunk, inside the XML loop: the parser never
    sees the bytes past it."""
    data = deflated_member(
        "word/document.xml",
        b'<w:document xmlns:w="urn:w"><w:t>',
        b"a",
        40 * 1024 * 1024,
        b"</w:t></w:document>",
    )
    archive = extract._Archive(data, extract.Budget(InspectionLimits()))  # declared: fine
    archive._budget = extract.Budget(InspectionLimits(max_inflated_member=4 * 1024 * 1024))
    (info,) = [i for i in archive.infos if i.filename == "word/document.xml"]
    fed = 0

    def counted():
        nonlocal fed
        for chunk in archive.chunks(info):
            fed += len(chunk)
            yield chunk

    out = extract.Budget(InspectionLimits(max_part_text=10**9)).part_text()
    with pytest.raises(extract.Uninspectable, match="inflates past 4194304 bytes"):
        extract._xml_text(counted(), False, out)
    assert fed <= 4 * 1024 * 1024


def test_xml_reader_stops_at_the_text_cap_without_reading_the_rest():
    data = deflated_member(
        "word/document.xml",
        b'<w:document xmlns:w="urn:w"><w:t>',
        b"a",
        40 * 1024 * 1024,
        b"</w:t></w:document>",
    )
    limits = InspectionLimits(max_part_text=100_000)
    archive = extract._Archive(data, extract.Budget(limits))
    (info,) = [i for i in archive.infos if i.filename == "word/document.xml"]
    fed = 0

    def counted():
        nonlocal fed
        for chunk in archive.chunks(info):
            fed += len(chunk)
            yield chunk

    with pytest.raises(extract.Uninspectable, match="text exceeds 100000 characters"):
        extract._xml_text(counted(), False, extract.Budget(limits).part_text())
    assert fed < 1024 * 1024


CHUNK = 64 * 1024


def test_ooxml_text_outside_text_elements_is_dropped_and_capped():
    """Character data waits for the next end tag; outside a ``t`` it is dropped, and
    it can never pile up past the part's text cap meanwhile."""
    xml = (
        '<w:document xmlns:w="urn:w"><w:body><w:p><w:instrText>'
        + "x" * 50_000
        + "</w:instrText><w:r><w:t>giữ</w:t></w:r></w:p></w:body></w:document>"
    )
    budget = extract.Budget(LIMITS)
    out = budget.part_text()
    extract.office_text(docx_with(xml), sniff.DOCX, out, budget)
    assert out.text() == "giữ\n\n"
    # Start tags only: no end tag ever says what the text is.
    flood = b'<w:document xmlns:w="urn:w"><w:body>' + (b"y" * 60_000 + b"<w:b>") * 50
    chunks = (flood[i : i + CHUNK] for i in range(0, len(flood), CHUNK))
    limits = InspectionLimits(max_part_text=1_000_000)
    with pytest.raises(extract.Uninspectable, match="text exceeds 1000000 characters"):
        extract._xml_text(chunks, False, extract.Budget(limits).part_text())
