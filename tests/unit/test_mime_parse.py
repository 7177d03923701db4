"""The one parse: part tree, names, decoded sizes, NFC texts, malformed mail.

Messages are built byte by byte here, so each test controls exactly what is on the
wire (the encodings are the point).
"""

from __future__ import annotations

import base64
import quopri
import unicodedata
from pathlib import Path

import pytest

from gateway.mime.model import Inspection, InspectionLimits, Scan, TextSource
from gateway.mime.parse import ELIDE_FROM, inspect_body, inspect_light

CORPUS = Path(__file__).resolve().parents[1] / "data" / "mime" / "corpus"
LIMITS = InspectionLimits()


def inspect(raw: bytes, limits: InspectionLimits = LIMITS) -> Inspection:
    return inspect_body(b"", raw, None, limits)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


def texts(result: Inspection, kind: str | None = None) -> dict[str, str]:
    return {t.location: t.text for t in result.texts if kind is None or t.kind == kind}


def mixed(*parts: str, headers: str = "Subject: test\n", boundary: str = "XYZ") -> bytes:
    body = "".join(f"--{boundary}\n{part}\n" for part in parts)
    return crlf(
        f"From: a@example.vn\n{headers}MIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n{body}--{boundary}--\n'
    )


PDF_MAGIC = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 100


# --- the part tree ------------------------------------------------------------------


def test_part_tree_numbers_types_and_sizes():
    raw = mixed(
        "Content-Type: text/plain; charset=utf-8\n\nxin chào",
        "Content-Type: multipart/alternative; boundary=INNER\n\n"
        "--INNER\nContent-Type: text/plain\n\nplain\n"
        "--INNER\nContent-Type: text/html\n\n<p>html</p>\n--INNER--",
        "Content-Type: text/plain\nContent-Disposition: attachment; filename=note.txt\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"x" * 1000),
    )
    result = inspect(raw)
    assert not result.problems
    tree = [(p.path, p.content_type, p.decoded_size, p.is_attachment) for p in result.parts]
    assert tree == [
        ("1", "text/plain", len("xin chào".encode()), False),
        ("2", "multipart/alternative", len(b"plain") + len(b"<p>html</p>"), False),
        ("2.1", "text/plain", 5, False),
        ("2.2", "text/html", 11, False),
        ("3", "text/plain", 1000, True),
    ]
    assert result.attachment_bytes == 1000


def test_sniffed_type_differs_from_declared_and_pdf_named_txt_is_read_as_pdf():
    raw = mixed(
        "Content-Type: text/plain; name=report.txt\n"
        "Content-Disposition: attachment; filename=report.txt\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(PDF_MAGIC)
    )
    result = inspect(raw)
    (part,) = result.parts
    assert (part.content_type, part.sniffed_type) == ("text/plain", "application/pdf")
    # Read as the PDF it is (here a broken one), not as text: so it is refused.
    assert result.problems == (
        f"cannot inspect attachment report.txt: {result.problems[0].split(': ', 1)[1]}",
    )
    assert "broken PDF" in result.problems[0]


def test_rfc2231_filename_is_decoded_to_nfc():
    raw = mixed(
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*=UTF-8''ba%CC%81o%20ca%CC%81o.bin\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"\x00\x01")
    )
    (part,) = inspect(raw).parts
    assert part.filename == "báo cáo.bin"
    assert part.filename == unicodedata.normalize("NFC", part.filename)
    assert len(part.filename) == len("bao cao.bin")  # composed: one code point per letter


def test_rfc2231_continuations_and_charset():
    raw = mixed(
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment;\n filename*0*=UTF-8''b%C3%A1o%20;\n"
        " filename*1*=c%C3%A1o.bin\n\nxx"
    )
    (part,) = inspect(raw).parts
    assert part.filename == "báo cáo.bin"


def test_rfc2047_filename_utf8_and_windows_1258():
    utf8 = "=?UTF-8?B?" + base64.b64encode("Quyết định.pdf".encode()).decode() + "?="
    # windows-1258 writes tones as combining marks: "e" + 0xEC (U+0301) ...
    cp1258 = "=?windows-1258?Q?Ba=ECo_ca=ECo.bin?="
    raw = mixed(
        f'Content-Type: application/octet-stream; name="{utf8}"\n\nxx',
        "Content-Type: application/octet-stream\n"
        f'Content-Disposition: attachment; filename="{cp1258}"\n\nyy',
    )
    result = inspect(raw)
    names = [p.filename for p in result.parts]
    assert names == ["Quyết định.pdf", "Báo cáo.bin"]
    assert all(n == unicodedata.normalize("NFC", n) for n in names)
    assert texts(result, "filename")["attachment Báo cáo.bin"] == "Báo cáo.bin"


def test_decoded_sizes_of_base64_and_quoted_printable():
    payload = "Tiếng Việt = ok\n" * 50
    qp = quopri.encodestring(payload.encode()).decode()
    raw = mixed(
        "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=a.bin\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(bytes(range(256)) * 10),
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        + qp,
    )
    result = inspect(raw)
    # Decoded text keeps the canonical CRLF line ends of the wire.
    assert [p.decoded_size for p in result.parts] == [2560, len(crlf(payload))]
    assert texts(result, "body")["body"].rstrip("\n") == payload.rstrip("\n")


def test_attachment_bytes_counts_only_attachments_at_all_depths():
    inner = (
        "Subject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=IN\n\n"
        "--IN\nContent-Type: text/plain\n\nforwarded body text\n"
        "--IN\nContent-Type: image/png; name=inner.png\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"\x89PNG\r\n\x1a\n" + b"p" * 92) + "--IN--\n"
    )
    raw = mixed(
        "Content-Type: text/plain\n\nbody, not counted",
        "Content-Type: text/plain; name=inline.txt\nContent-Disposition: inline\n\nnot counted",
        "Content-Type: application/pdf\nContent-Disposition: attachment\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"z" * 300),
        "Content-Type: message/rfc822\n\n" + inner,
    )
    result = inspect(raw)
    by_path = {p.path: p for p in result.parts}
    assert by_path["4"].content_type == "message/rfc822"
    assert not by_path["4"].is_attachment  # its leaves count, not the envelope
    assert by_path["4.2"].filename == "inner.png" and by_path["4.2"].is_attachment
    assert by_path["4.2"].rfc822_depth == 1
    assert by_path["4.2"].sniffed_type == "image/png"
    assert result.attachment_bytes == 300 + 100


# --- texts --------------------------------------------------------------------------


def test_subject_windows_1258_rfc2047_is_nfc():
    raw = crlf("Subject: =?windows-1258?Q?Ba=ECo_ca=ECo_m=E2=F2t?=\n\nbody")
    subject = texts(inspect(raw))["subject"]
    assert subject == unicodedata.normalize("NFC", "Báo cáo mật")


def test_subject_nfd_utf8_is_normalised_to_nfc():
    nfd = unicodedata.normalize("NFD", "Tài liệu mật")
    word = "=?UTF-8?B?" + base64.b64encode(nfd.encode()).decode() + "?="
    raw = crlf(f"Subject: {word}\nX-Classification: {nfd}\n\n{nfd}")
    found = texts(inspect(raw))
    assert found["subject"] == "Tài liệu mật" == unicodedata.normalize("NFC", nfd)
    assert found["header X-Classification"] == "Tài liệu mật"
    assert found["body"] == "Tài liệu mật"


def test_raw_utf8_headers_smtputf8_and_8bit_body():
    raw = crlf(
        "From: Nguyễn Văn A <anh@bộ.vn>\nSubject: Khẩn: báo cáo\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        "Nội dung tối mật"
    )
    result = inspect(raw)
    found = texts(result)
    assert found["subject"] == "Khẩn: báo cáo"
    assert found["header From"] == "Nguyễn Văn A <anh@bộ.vn>"
    assert found["body"] == "Nội dung tối mật"
    kinds = {t.location: t.kind for t in result.texts}
    assert kinds == {"header From": "header", "subject": "subject", "header Content-Type": "header",
                     "header Content-Transfer-Encoding": "header", "body": "body"}  # fmt: skip


def test_quoted_printable_body_soft_breaks():
    raw = crlf(
        "Subject: qp\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\nT=C3=A0i li=E1=BB=87u=\n m=E1=BA=ADt\n"
    )
    assert texts(inspect(raw))["body"] == "Tài liệu mật\n"


def test_html_body_to_text_without_script_and_with_entities():
    raw = crlf(
        "Subject: h\nContent-Type: text/html; charset=utf-8\n\n"
        "<html><head><style>p{}</style><script>var mật = 1;</script></head>"
        "<body><p>T&agrave;i li&#7879;u</p><div>m&#x1EAD;t</div><img alt='Khẩn'></body></html>"
    )
    body = texts(inspect(raw))["body"]
    assert "Tài liệu" in body and "mật" in body and "Khẩn" in body
    assert "var" not in body and "p{}" not in body and "<" not in body


def test_forwarded_message_at_depth_1_names_its_location():
    inner = (
        "Subject: =?UTF-8?B?" + base64.b64encode("Báo cáo".encode()).decode() + "?=\n"
        "Content-Type: multipart/mixed; boundary=IN\n\n"
        "--IN\nContent-Type: text/plain; charset=utf-8\n\nnội dung mật\n"
        "--IN\nContent-Type: text/html; charset=utf-8\n"
        "Content-Disposition: attachment; filename=bao-cao.html\n\n<b>tối mật</b>\n--IN--\n"
    )
    raw = mixed("Content-Type: text/plain\n\nsee below", "Content-Type: message/rfc822\n\n" + inner)
    found = texts(inspect(raw))
    assert found["subject in forwarded message"] == "Báo cáo"
    assert found["body in forwarded message"].strip() == "nội dung mật"
    assert found["attachment bao-cao.html in forwarded message"].strip() == "tối mật"


def nested_rfc822(levels: int, innermost: str = "secret words") -> bytes:
    message = crlf(f"Subject: level {levels}\nContent-Type: text/plain\n\n{innermost}\n")
    for level in range(levels - 1, -1, -1):
        message = crlf(f"Subject: level {level}\nContent-Type: message/rfc822\n\n") + message
    return message


def test_forwarded_message_12_deep_is_inspected_and_named():
    result = inspect(nested_rfc822(12))
    assert not result.problems
    found = texts(result)
    assert found["body in forwarded message (level 12)"].strip() == "secret words"
    assert found["subject in forwarded message (level 12)"] == "level 12"
    assert max(p.rfc822_depth for p in result.parts) == 12  # the innermost body


def test_forwarded_messages_past_the_limit_are_a_problem():
    result = inspect(nested_rfc822(12), InspectionLimits(max_rfc822_depth=8))
    assert result.problems
    assert "forwarded messages nested deeper than 8" in result.problems[0]
    assert result.problems[0].startswith("cannot inspect part ")


def test_base64_encoded_forwarded_message_is_decoded():
    inner = crlf("Subject: inner\nContent-Type: text/plain\n\nhidden text\n")
    raw = mixed("Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" + b64(inner))
    found = texts(inspect(raw))
    assert found["body in forwarded message"].strip() == "hidden text"


# --- malformed ----------------------------------------------------------------------


def test_broken_closing_boundary_is_repaired():
    raw = crlf(
        "Subject: x\nContent-Type: multipart/mixed; boundary=B\n\n"
        "--B\nContent-Type: text/plain\n\nfirst\n--B\nContent-Type: text/plain\n\nsecond, no close"
    )
    result = inspect(raw)
    assert not result.problems
    assert [p.path for p in result.parts] == ["1", "2"]


def test_boundary_never_found_is_a_problem():
    raw = crlf(
        "Subject: x\nContent-Type: multipart/mixed; boundary=NOWHERE\n\n"
        "--ELSEWHERE\nContent-Type: text/plain\n\nwhat a reader may show\n--ELSEWHERE--\n"
    )
    result = inspect(raw)
    assert result.problems == ("cannot inspect message: multipart boundary not found",)


def test_multipart_without_boundary_parameter_is_a_problem():
    raw = crlf("Subject: x\nContent-Type: multipart/mixed\n\nbody\n")
    assert inspect(raw).problems == ("cannot inspect message: multipart boundary not found",)


def test_bad_base64_is_decoded_leniently():
    raw = mixed(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode("mật mã".encode()).decode()[:-1]
        + "!!*\n"
    )
    result = inspect(raw)
    assert not result.problems
    assert result.parts[0].decoded_size > 0
    assert "mật" in texts(result)["body"]


def test_unknown_charset_falls_back_to_utf8():
    raw = mixed(
        "Content-Type: text/plain; charset=x-no-such-charset\nContent-Transfer-Encoding: 8bit\n\n"
        "tài liệu mật",
        headers="Subject: =?x-unknown?Q?m=E1=BA=ADt?=\n",
    )
    found = texts(inspect(raw))
    assert found["body"] == "tài liệu mật"
    assert found["subject"] == "mật"


def test_nul_bytes_are_dropped_from_text():
    raw = crlf("Subject: m\x00ật\nContent-Type: text/plain; charset=utf-8\n\nt\x00ối mật\n")
    result = inspect(raw)
    assert not result.problems
    found = texts(result)
    assert found["subject"] == "mật" and found["body"] == "tối mật\n"


def test_3000_parts_are_inspected():
    raw = mixed(*(f"Content-Type: text/plain\n\npart {i}" for i in range(3000)))
    result = inspect(raw)
    assert not result.problems
    assert len(result.parts) == 3000


def test_too_many_parts_is_a_problem():
    raw = mixed(*(f"Content-Type: text/plain\n\npart {i}" for i in range(30)))
    result = inspect(raw, InspectionLimits(max_parts=20))
    assert result.problems == ("cannot inspect message: more than 20 MIME parts",)


def nested_multipart(depth: int) -> bytes:
    inner = "Content-Type: text/plain\n\ndeepest text\n"
    for level in range(depth, 0, -1):
        inner = (
            f"Content-Type: multipart/mixed; boundary=b{level}\n\n--b{level}\n{inner}--b{level}--\n"
        )
    return crlf("Subject: deep\n" + inner)


def test_multipart_100_deep_inside_the_limit_is_inspected():
    result = inspect(nested_multipart(100), InspectionLimits(max_depth=128))
    assert not result.problems
    assert "deepest text" in texts(result)["body"]
    assert result.parts[-1].path == ".".join(["1"] * 100)


def test_multipart_100_deep_past_the_limit_is_a_problem():
    result = inspect(nested_multipart(100))  # default max_depth 64
    assert len(result.problems) == 1
    assert "nested deeper than 64" in result.problems[0]


def test_truncated_message_still_returns_an_inspection():
    raw = mixed(
        "Content-Type: text/plain\n\nhello",
        "Content-Type: application/zip\nContent-Disposition: attachment; filename=a.zip\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"PK\x03\x04" + b"\x00" * 200),
    )
    cut = raw[: len(raw) - 150]
    result = inspect(cut)
    assert isinstance(result, Inspection)
    assert any("cannot inspect attachment a.zip" in p for p in result.problems)


def test_truncated_inside_the_header_section():
    result = inspect(b"Subject: only a hea")
    assert result.problems == ()
    assert texts(result)["subject"] == "only a hea"


def test_empty_message():
    result = inspect(b"")
    assert result.problems == () and result.attachment_bytes == 0


def test_message_part_cap_and_message_text_cap():
    raw = crlf("Subject: s\nContent-Type: text/plain\n\n" + "x" * 5000)
    part_cap = inspect(raw, InspectionLimits(max_part_text=1000))
    assert part_cap.problems == ("cannot inspect body: text exceeds 1000 characters",)
    message_cap = inspect(raw, InspectionLimits(max_message_text=2000))
    assert message_cap.problems == ("cannot inspect message: its text exceeds 2000 characters",)


def test_time_budget_is_a_problem():
    raw = mixed(*(f"Content-Type: text/plain\n\npart {i}" for i in range(200)))
    result = inspect(raw, InspectionLimits(seconds=-1))
    assert result.problems == ("cannot inspect message: inspection takes longer than -1 s",)


def test_spilled_body_is_read_from_the_file_with_its_prefix(tmp_path):
    path = tmp_path / "spill.tmp"
    path.write_bytes(crlf("Subject: on disk\n\nfile body\n"))
    result = inspect_body(crlf("Received: from x\n"), None, str(path), LIMITS)
    found = texts(result)
    assert found["header Received"] == "from x"
    assert found["subject"] == "on disk"
    assert found["body"] == "file body\n"


def test_missing_spill_file_is_a_problem(tmp_path):
    result = inspect_body(b"", None, str(tmp_path / "gone.tmp"), LIMITS)
    assert result.problems and result.problems[0].startswith("cannot inspect message: ")


def test_light_inspection_defers_documents_to_the_worker():
    plain = crlf("Subject: s\n\nbody\n")
    assert inspect_light(plain, LIMITS) == inspect(plain)
    with_pdf = mixed(
        "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n" + b64(PDF_MAGIC)
    )
    assert inspect_light(with_pdf, LIMITS) is None


# --- a public corpus of malformed mail ------------------------------------------------


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_malformed_corpus_never_raises(path):
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    result = inspect_body(b"", raw, None, LIMITS)
    assert isinstance(result, Inspection)
    assert all(p.startswith("cannot inspect ") for p in result.problems)
    # Cut at every 37th byte: truncation anywhere must not raise either.
    for cut in range(0, len(raw), 37):
        assert isinstance(inspect_body(b"", raw[:cut], None, LIMITS), Inspection)


def test_corpus_is_present():
    assert len(list(CORPUS.glob("*.eml"))) >= 20
    assert (CORPUS / "README.md").exists() and (CORPUS / "LICENSE-MIT").exists()


# --- large parts: base64 runs and measuring without decoding -------------------------


def plain_tree(raw: bytes) -> list:
    """The parsed tree as the standard library's own line buffer builds it."""
    from email.feedparser import BytesFeedParser

    from gateway.mime import parse

    parser = BytesFeedParser(policy=parse._POLICY)
    parser.feed(raw)
    return tree(parser.close())


def tree(msg) -> list:
    """Headers, preamble, epilogue, defects and payloads (references read back)."""
    from gateway.mime import parse

    def text(value: str | None) -> str | None:
        source = getattr(msg, "source", None)
        return source.text(value) if source is not None and value is not None else value

    out = [(msg.items(), text(msg.preamble), text(msg.epilogue), [type(d) for d in msg.defects])]
    if msg.is_multipart():
        for part in msg.get_payload():
            out += tree(part)
    else:
        out.append(parse.payload_text(msg))
    return out


@pytest.mark.parametrize(
    "raw",
    [
        # base64-looking lines in a text body, right after the header, before a boundary,
        # in a headerless part, and in the preamble and epilogue
        mixed(
            "Content-Type: text/plain\n\nAAAA\nBBBB\nCCCC\n",
            "AAAA\nBBBB\n",
            "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
            + b64(bytes(range(256)) * 300),
            headers="Subject: t\n",
        ).replace(b"MIME-Version", b"QUFB\r\nQkJC\r\nMIME-Version", 1),
        crlf("Subject: x\n\n" + b64(bytes(200)) + "\n\nQUFB\n"),
        crlf("QUFB\nQkJC\n\nbody\n"),
        crlf(
            'Content-Type: multipart/mixed; boundary="B"\n\nQUFB\nQkJC\n--B\n\nQUFB\n'
            "QkJC\n--B--\nQUFB\nQkJC\n"
        ),
        b"Subject: x\rContent-Type: text/plain\r\rQUFB\rQkJC\r",
    ],
)
def test_base64_runs_parse_to_the_same_tree_as_line_by_line(raw):
    from gateway.mime import parse

    assert tree(parse._parse(b"", raw, None)) == plain_tree(raw)


@pytest.mark.parametrize("refer_from", [8, 32 * 1024])
def test_base64_runs_across_feed_chunks(monkeypatch, refer_from):
    from gateway.mime import parse

    monkeypatch.setattr(parse, "REFER_FROM", refer_from)
    raw = mixed(
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        + b64(bytes(range(256)) * 40),
        "Content-Type: text/plain\n\nQUFB\nQkJC\n",
    )
    for size in (1, 7, 77, 1000):
        monkeypatch.setattr(parse, "CHUNK", size)
        assert tree(parse._parse(b"", raw, None)) == plain_tree(raw)


def test_line_cracking_matches_the_stock_buffer_on_random_input(monkeypatch):
    """Any mix of line ends (lone CR too), base64-looking lines, boundaries and headers,
    fed in any chunk sizes, with runs referred to from 4 characters on."""
    import random

    from gateway.mime import parse

    monkeypatch.setattr(parse, "REFER_FROM", 4)
    rnd = random.Random(9)
    words = ["QUFB", "A", "==", "x y", "--B", "--B--", "Content-Type: text/plain", ": v", ""]
    ends = ["\n", "\r\n", "\r", "\r\r\n"]
    head = "Content-Type: multipart/mixed; boundary=B\n\n"
    for _ in range(300):
        body = "".join(rnd.choice(words) + rnd.choice(ends) for _ in range(rnd.randint(0, 40)))
        raw = (head + body + rnd.choice(["", "QUFB", "\r"])).encode("ascii")
        monkeypatch.setattr(parse, "CHUNK", rnd.choice([1, 2, 3, 5, 16, 4096]))
        assert tree(parse._parse(b"", raw, None)) == plain_tree(raw), raw


def test_long_base64_runs_stay_in_the_spill_file(tmp_path):
    """The tree of a spilled message refers to its base64 instead of holding it: a
    20 MiB attachment must not cost the worker its encoded text."""
    from gateway.mime import parse

    data = bytes(range(256)) * 4096  # 1 MiB
    raw = mixed(
        "Content-Type: application/octet-stream\nContent-Disposition: attachment; "
        "filename=a.bin\nContent-Transfer-Encoding: base64\n\n" + b64(data)
    )
    prefix = b"Received: by test\r\n"
    path = tmp_path / "spill.tmp"
    path.write_bytes(raw)
    message = parse._parse(prefix, None, str(path))
    leaf = message.get_payload()[0]
    assert len(leaf.get_payload()) < 1000  # references, not 1.4 MB of text
    assert tree(message) == plain_tree(prefix + raw)
    assert parse._decoded(leaf) == data
    result = inspect_body(prefix, None, str(path), LIMITS)
    assert [(p.filename, p.decoded_size) for p in result.parts] == [("a.bin", len(data))]


def test_base64_size_by_slices_matches_the_whole_decode(monkeypatch):
    from gateway.mime import parse

    monkeypatch.setattr(parse, "_SLICE", 1000)
    for size in (0, 1, 2, 3, 749, 750, 751, 5000, 5001, 5002):
        text = b64(bytes(range(256)) * (size // 256) + bytes(size % 256))
        assert parse._base64_size(text.replace("\n", "\r\n")) == size
    # Not regular: the lenient decode of the whole text decides instead.
    regular = b64(bytes(3000))
    assert parse._base64_size(regular[:1500] + "==" + regular[1500:]) is None
    assert parse._base64_size(regular[:1500] + "*" + regular[1500:]) is None
    assert parse._base64_size(regular.rstrip("\n")[:-1]) is None


def test_base64_in_pieces_is_regular_only_with_padding_at_the_very_end():
    from gateway.mime import parse

    out: list[bytes] = []
    assert parse._base64_chunks([b"QU", b"FB\r\n", b"\r\nQQ", b"=="], out) == 4
    assert b"".join(out) == b"AAAA"
    assert parse._base64_chunks([b"QQ==", b"QUFB"], None) is None  # data after padding
    assert parse._base64_chunks([b"QQ==\r\n", b"\r\n"], None) == 1
    assert parse._base64_chunks([b"QUF"], None) is None  # not whole quads
    assert parse._base64_chunks([b"QU*B"], None) is None


def test_large_unreadable_attachment_is_measured_not_kept(monkeypatch):
    from gateway.mime import parse

    monkeypatch.setattr(parse, "_SLICE", 4096)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 100
    raw = mixed(
        "Content-Type: image/png\nContent-Disposition: attachment; filename=a.png\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(png),
        "Content-Type: application/octet-stream\nContent-Disposition: attachment; "
        "filename=b.bin\nContent-Transfer-Encoding: base64\n\n" + b64(PDF_MAGIC * 100),
    )
    decoded = []
    real = parse._decoded
    monkeypatch.setattr(parse, "_decoded", lambda part: decoded.append(1) or real(part))
    result = inspect(raw)
    assert [(p.sniffed_type, p.decoded_size) for p in result.parts] == [
        ("image/png", len(png)),
        ("application/pdf", len(PDF_MAGIC) * 100),
    ]
    assert decoded == [1]  # only the PDF, which is read
    assert result.attachment_bytes == len(png) + len(PDF_MAGIC) * 100


# --- scans beside the parse -------------------------------------------------------------


def longest(texts: tuple[TextSource, ...], config: int) -> object:
    """A scan: the length of the longest text, plus ``config``."""
    return max(len(t.text) for t in texts) + config


def failing(texts: tuple[TextSource, ...], config: object) -> object:
    raise ValueError("bad rule")


def test_scans_run_over_every_text_then_long_bodies_are_left_out():
    long_text = "x" * ELIDE_FROM
    raw = mixed(
        "Content-Type: text/plain\n\nshort body\n",
        "Content-Type: text/plain\nContent-Disposition: attachment; filename=long.txt\n\n"
        + long_text
        + "\n",
    )
    full = inspect(raw)
    result = inspect_body(b"", raw, None, LIMITS, (Scan("a", longest, 1), Scan("b", failing, 0)))
    assert result.scan("a", 1).value == ELIDE_FROM + 2  # the long text, with its line end
    assert result.scan("a", 2) is None  # other settings: no result
    assert result.scan("b", 0).error == "ValueError: bad rule"
    assert result.elided == 1
    assert result.texts == tuple(t for t in full.texts if t.kind != "attachment")
    assert texts(result)["body"] == "short body\n"
    assert texts(result, "filename")["attachment long.txt"] == "long.txt"
    assert inspect_body(b"", raw, None, LIMITS) == full  # no scans: every text


def test_scans_do_not_run_on_a_message_that_cannot_be_inspected():
    raw = crlf('Content-Type: multipart/mixed; boundary="B"\n\nno boundary\n')
    result = inspect_body(b"", raw, None, LIMITS, (Scan("b", failing, 0),))
    assert result.problems and result.scans == ()


# --- the simple parse: the feed parser's tree, built directly --------------------------

_HEADER_LINES = [
    "Subject: plain words",
    "Subject: =?utf-8?b?VOG7kUkgTeG6rFQ=?=",
    "Subject: Tiếng Việt thô",
    "From: Nguyễn <a@b.vn>",
    "To: x@y.vn",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Type: text/plain; charset=windows-1258",
    "Content-Type: text/html; charset=utf-8",
    "Content-Type: application/octet-stream; name=bao-cao.txt",
    "Content-Type: application/pdf",
    "Content-Type: multipart/mixed; boundary=XYZ",
    "Content-Type: message/rfc822",
    "Content-Type: TEXT/Plain",
    "Content-Type: nonsense",
    "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: quoted-printable",
    "Content-Transfer-Encoding: 8bit",
    "Content-Disposition: attachment; filename*=utf-8''b%C3%A1o-c%C3%A1o.txt",
    "Content-Disposition: inline",
    "X-Classification: MẬT",
    " folded on",
    "\tfolded with a tab",
    "From someone Mon Dec  7 10:00:00 2026",
    ": empty name",
    "no colon at all",
    "Subject:",
    "Subject:no space",
    "Bad Name: spaced",
    "Subject: lone\rcarriage",
    "Subject: lone\nfeed",
]
_BODIES = [
    "",
    "hello\r\n",
    "no final line end",
    ".leading dot\r\n..two\r\n",
    "TỐI MẬT\r\nĐộ mật: MẬT\r\n",
    "=E1=BA=ACT quoted=\r\nprintable\r\n",
    "SGVsbG8gd29ybGQ=\r\n",
    "bad base64 !!!\r\n",
    "lone\rcarriage and lone\nfeed\r\n",
    "nul\x00byte\r\n",
    "<p>T&#7888;I M&#7852;T</p>\r\n",
    "--XYZ\r\nContent-Type: text/plain\r\n\r\ninner\r\n--XYZ--\r\n",
    "x" * 40_000 + "\r\n",
    ("QUJD" * 19 + "\r\n") * 500,
]


def test_the_simple_parse_reads_every_message_as_the_feed_parser_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Generated messages (fields, continuations, the parser's odd cases, lone CR and LF,
    8-bit and encoded words, every kind of type and body) and the malformed corpus:
    where the simple parse builds the tree, it is the feed parser's, and the whole
    inspection is the same."""
    import random

    from gateway.mime import parse

    draw = random.Random(2026)
    messages = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]
    for _ in range(1500):
        lines = draw.sample(_HEADER_LINES, draw.randint(0, 6))
        eol = "\r\n" if draw.random() < 0.9 else "\n"
        text = "".join(line + eol for line in lines) + eol + draw.choice(_BODIES)
        messages.append(text.encode("utf-8"))
    simple = 0
    for raw in messages:
        built = parse._parse_simple(raw)
        if built is not None:
            simple += 1
            stock = parse._parse(b"", raw, None)
            assert built.items() == stock.items(), raw[:300]
            assert built.get_payload() == stock.get_payload(), raw[:300]
            assert not stock.is_multipart()
        fast = inspect(raw)
        with monkeypatch.context() as patched:
            patched.setattr(parse, "_parse_simple", lambda data: None)
            assert inspect(raw) == fast, raw[:300]
    assert simple > 300, "the simple parse was hardly ever taken"
