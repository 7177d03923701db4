"""classification.py: secret-classification markers (MIC 4.1, MOST 17.1) found by shape.

The unit tests call ``find_marker`` with built TextSources and ``check`` with a context
whose ``inspection()`` returns a built Inspection. The corpus (tests/data/classification)
runs twice: at the text level always, and end to end through the real MIME parse.
"""

from __future__ import annotations

import io
import time
import unicodedata
import zipfile
from dataclasses import dataclass, replace
from email import policy
from email.parser import BytesParser

import pytest

from gateway.filters import classification
from gateway.filters.classification import Config, Finding, check, find_marker, validate
from gateway.mime.model import Inspection, InspectionLimits, ScanResult, TextSource
from gateway.pipeline import REGISTRY, Action
from gateway.smtp import replies
from tests.data.classification import corpus
from tests.data.classification.corpus import CASES, Doc, Msg

CFG = Config()


def body(text: str, location: str = "body") -> TextSource:
    return TextSource(location, text, "body")


def subject(text: str) -> TextSource:
    return TextSource("subject", text, "subject")


def filename(name: str) -> TextSource:
    return TextSource(f"attachment {name}", name, "filename")


def level(*texts: TextSource, cfg: Config = CFG) -> str | None:
    found = find_marker(texts, cfg)
    return found.level if found else None


# --- stamp lines -------------------------------------------------------------------


def test_a_line_that_is_the_level_is_a_stamp() -> None:
    assert find_marker([body("Kính gửi,\nMẬT\nBáo cáo.")], CFG) == Finding("MẬT", "stamp", "body")
    assert level(body("TỐI MẬT")) == "TỐI MẬT"
    assert level(body("  TUYỆT MẬT  ")) == "TUYỆT MẬT"


def test_the_level_inside_a_line_of_prose_is_not_a_stamp() -> None:
    assert level(body("Tài liệu MẬT phải được bảo quản trong két.")) is None
    assert level(body("Không gửi tài liệu tối mật, tuyệt mật qua thư điện tử.")) is None
    assert level(body("KHÔNG GỬI TÀI LIỆU TỐI MẬT QUA THƯ ĐIỆN TỬ")) is None


def test_a_one_word_stamp_must_be_in_capitals_two_words_in_any_case() -> None:
    assert level(body("Mật")) is None  # a name, a signature
    assert level(body("mật")) is None
    assert level(body("Tối mật")) == "TỐI MẬT"
    assert level(body("tuyệt mật")) == "TUYỆT MẬT"


def test_words_that_share_the_letters_are_not_levels() -> None:
    for line in (
        "MẬT KHẨU",
        "MẬT ĐỘ",
        "MẬT ONG",
        "MẬT MÃ",
        "BÍ MẬT",
        "Thân mật,",
        "NGUYỄN THỊ MẬT",
    ):
        assert level(body(line)) is None, line


def test_letters_with_other_accents_are_other_words() -> None:
    for line in ("MẤT", "MẶT", "MẤT ĐIỆN", "MẶT TRẬN", "TỐI MẶT", "TUYỆT MẤT"):
        assert level(body(line)) is None, line


def test_a_labelled_stamp_counts_in_any_case() -> None:
    assert level(body("Độ mật: Mật")) == "MẬT"
    assert level(body("ĐỘ MẬT: TỐI MẬT")) == "TỐI MẬT"
    assert level(body("Mức độ mật - tuyệt mật")) == "TUYỆT MẬT"


def test_a_labelled_stamp_may_share_its_line_after_a_separator() -> None:
    assert level(body("Số: 15/BC-UBND    Độ mật: Mật")) == "MẬT"
    assert level(body("Số: 15/BC-UBND\tĐộ mật: Tối mật\tĐộ khẩn: Hỏa tốc")) == "TỐI MẬT"
    assert level(body("Độ khẩn: Khẩn; Độ mật: Mật.")) == "MẬT"


def test_a_label_inside_a_sentence_is_prose() -> None:
    line = "Bí mật nhà nước được phân loại theo độ mật: tuyệt mật, tối mật và mật."
    assert level(body(line)) is None


def test_a_label_with_an_unclassified_value_is_not_a_stamp() -> None:
    assert level(body("Độ mật: Thường")) is None
    assert level(body("Độ mật: Không mật")) is None
    assert level(body("Độ mật: Mật khẩu")) is None


def test_decorations_and_quote_marks_around_a_stamp_are_ignored() -> None:
    assert level(body("*** TUYỆT MẬT ***")) == "TUYỆT MẬT"
    assert level(body("> > TỐI MẬT")) == "TỐI MẬT"  # quoted in a reply or inline forward
    assert level(body("[MẬT]")) == "MẬT"
    assert level(body("┌─────┐\n│ MẬT │\n└─────┘")) == "MẬT"


# --- unaccented spellings ------------------------------------------------------------


def test_unaccented_two_word_levels_count_in_capitals() -> None:
    assert level(body("TUYET MAT")) == "TUYỆT MẬT"
    assert level(body("TOI MAT")) == "TỐI MẬT"
    assert level(body("Toi mat")) is None  # "tôi mất": I lost


def test_bare_unaccented_mat_counts_only_after_a_label() -> None:
    assert level(body("MAT")) is None
    assert level(subject("[MAT] Vat lieu")) is None
    assert level(body("DO MAT: MAT")) == "MẬT"
    assert level(body("Độ mật: mat")) == "MẬT"


# --- subject ----------------------------------------------------------------------


def test_subject_tags_in_brackets_count_in_any_case() -> None:
    assert find_marker([subject("[MẬT] Báo cáo")], CFG) == Finding("MẬT", "subject tag", "subject")
    assert level(subject("Kế hoạch (TỐI MẬT)")) == "TỐI MẬT"
    assert level(subject("[mật] Danh sách")) == "MẬT"
    assert level(subject("[TUYET MAT] Phuong an")) == "TUYỆT MẬT"


def test_a_leading_subject_stamp_needs_a_separator() -> None:
    assert level(subject("TUYỆT MẬT - Phương án")) == "TUYỆT MẬT"
    assert level(subject("TỐI MẬT: Danh sách")) == "TỐI MẬT"
    assert level(subject("MẬT")) == "MẬT"
    assert level(subject("MẬT KHẨU - đổi định kỳ")) is None
    assert level(subject("MẬT ĐỘ DÂN SỐ: số liệu")) is None


def test_a_leading_subject_stamp_is_found_after_reply_and_forward_prefixes() -> None:
    assert level(subject("RE: TL: Fwd: MẬT - Góp ý")) == "MẬT"
    assert level(subject("Chuyển tiếp: TOI MAT - Ke hoach")) == "TỐI MẬT"


def test_a_person_named_mat_leading_a_subject_is_not_a_stamp() -> None:
    assert level(subject("Mật - xin nghỉ phép")) is None
    assert level(subject("Chúc mừng sinh nhật chị Mật")) is None


def test_a_subject_about_secrets_is_not_a_tag() -> None:
    assert level(subject("Nhắc nhở: không gửi tài liệu tối mật qua thư điện tử")) is None
    assert level(subject("Luật Bảo vệ bí mật nhà nước 2018")) is None
    assert level(subject("[MẤT ĐIỆN] Lịch cắt điện")) is None


# --- header fields ----------------------------------------------------------------


def test_a_classification_header_named_in_the_location() -> None:
    found = find_marker([TextSource("header X-Classification", "TỐI MẬT", "header")], CFG)
    assert found == Finding("TỐI MẬT", "header", "header X-Classification")


def test_a_classification_header_named_in_the_text() -> None:
    assert level(TextSource("header", "X-Do-Mat: mat", "header")) == "MẬT"
    assert level(TextSource("header", "security-classification: Tuyệt mật (A)", "header")) == (
        "TUYỆT MẬT"
    )


def test_a_classification_header_in_a_forwarded_message() -> None:
    source = TextSource("forwarded message 2: header X-Classification", "MẬT", "header")
    assert level(source) == "MẬT"


def test_other_header_fields_and_unclassified_values_pass() -> None:
    assert level(TextSource("header Keywords", "tối mật", "header")) is None
    assert level(TextSource("header", "Comments: TỐI MẬT", "header")) is None
    assert level(TextSource("header X-Classification", "Thường", "header")) is None
    assert level(TextSource("header X-Classification", "mật khẩu", "header")) is None


# --- file names -------------------------------------------------------------------


def test_file_name_markers() -> None:
    found = find_marker([filename("[MẬT] Báo cáo.docx")], CFG)
    assert found == Finding("MẬT", "file name", "attachment [MẬT] Báo cáo.docx")
    assert level(filename("Kế hoạch (Tuyệt mật).xlsx")) == "TUYỆT MẬT"
    assert level(filename("TỐI MẬT - phương án.odt")) == "TỐI MẬT"
    assert level(filename("TOI_MAT_ke_hoach.pdf")) == "TỐI MẬT"
    assert level(filename("KE.HOACH.TUYET.MAT.pdf")) == "TUYỆT MẬT"


def test_file_names_with_ordinary_words_pass() -> None:
    for name in (
        "mat_khau_wifi.txt",
        "MAT_DO_DAN_SO.xlsx",
        "MẬT ĐỘ DÂN SỐ.xlsx",
        "Mật ong.jpg",
        "Nguyen Thi Mat - CV.docx",
        "toi_mat_vi.txt",
        "TOI_MATLAB_NOTES.txt",
        "Luat-bao-ve-bi-mat-nha-nuoc-2018.pdf",
    ):
        assert level(filename(name)) is None, name


# --- text preparation ---------------------------------------------------------------


def test_decomposed_text_is_matched_as_nfc() -> None:
    assert level(body(unicodedata.normalize("NFD", "TỐI MẬT"))) == "TỐI MẬT"
    assert level(body(unicodedata.normalize("NFD", "MẤT"))) is None


def test_invisible_characters_and_odd_dashes_do_not_hide_a_marker() -> None:
    assert level(body("M\u200bẬT")) == "MẬT"
    assert level(body("TỐI\u00adMẬT\ufeff")) is None  # a soft hyphen joins the words: no level
    assert level(subject("TUYỆT MẬT \u2013 Phương án")) == "TUYỆT MẬT"
    assert level(body("Độ mật\uff1a Mật")) == "MẬT"


def test_the_first_marker_in_text_order_is_reported() -> None:
    texts = [body("Thân mật,"), body("TỐI MẬT", "attachment a.docx"), subject("[MẬT] x")]
    assert find_marker(texts, CFG) == Finding("TỐI MẬT", "stamp", "attachment a.docx")


def test_the_location_is_made_safe_for_a_reply_line() -> None:
    found = find_marker([body("MẬT", "attachment a\r\n250 OK\x00.docx")], CFG)
    assert found is not None
    assert found.location == "attachment a 250 OK .docx"
    long = find_marker([body("MẬT", "attachment " + "x" * 500)], CFG)
    assert long is not None and len(long.location) == 120


def test_long_runs_of_separators_take_linear_time() -> None:
    texts = [
        body(" " * 200_000),
        body("\t" * 200_000),
        body(", " * 100_000),
        subject(" " * 100_000),
    ]
    started = time.monotonic()
    assert find_marker(texts, CFG) is None
    assert time.monotonic() - started < 5  # a quadratic scan takes hours


# --- operator rules -----------------------------------------------------------------


def test_operator_rules_add_shapes_and_levels() -> None:
    cfg = replace(
        CFG,
        stamp_lines=(*CFG.stamp_lines, "TÀI LIỆU {level}"),
        subject_tags=(*CFG.subject_tags, "{{level}}"),
        header_fields=("X-Custom-Class",),
        levels=(*CFG.levels, "HẠN CHẾ"),
        aliases=(*CFG.aliases, "HAN CHE = HẠN CHẾ"),
    )
    assert level(body("TÀI LIỆU MẬT"), cfg=cfg) == "MẬT"
    assert level(body("TÀI LIỆU MẬT"), cfg=CFG) is None
    assert level(subject("{TỐI MẬT} kế hoạch"), cfg=cfg) == "TỐI MẬT"
    assert level(TextSource("header X-Custom-Class", "MAT", "header"), cfg=cfg) == "MẬT"
    assert level(TextSource("header X-Classification", "MAT", "header"), cfg=cfg) is None
    assert level(body("HAN CHE"), cfg=cfg) == "HẠN CHẾ"


def test_removing_a_rule_turns_that_shape_off() -> None:
    cfg = replace(CFG, subject_tags=("[{level}]",), filename_patterns=())
    assert level(subject("[MẬT] x"), cfg=cfg) == "MẬT"
    assert level(subject("MẬT - x"), cfg=cfg) is None
    assert level(filename("[MẬT] x.docx"), cfg=cfg) is None


def test_an_unpinned_rule_matches_two_word_levels_only() -> None:
    cfg = replace(CFG, subject_tags=("{level}",))
    assert level(subject("Kế hoạch TỐI MẬT năm 2024"), cfg=cfg) == "TỐI MẬT"
    assert level(subject("Báo cáo MẬT năm 2024"), cfg=cfg) is None


def test_capitals_placeholder_requires_capitals() -> None:
    cfg = replace(CFG, filename_patterns=("{LEVEL}",))
    assert level(filename("ke_hoach_TỐI_MẬT.pdf"), cfg=cfg) == "TỐI MẬT"
    assert level(filename("quy_dinh_ve_tai_lieu_toi_mat.pdf"), cfg=cfg) is None
    assert level(filename("Quy định về tài liệu tối mật.pdf"), cfg=cfg) is None


# --- validate -----------------------------------------------------------------------


def test_the_default_rules_are_valid() -> None:
    assert validate(CFG) == []


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"stamp_lines": ("ĐỘ MẬT",)}, "stamp_lines[0]"),
        ({"subject_tags": ("[{level}] {level}",)}, "subject_tags[0]"),
        ({"subject_tags": ("[{lvl}]",)}, "subject_tags[0]"),
        ({"stamp_lines": ("{level}: {label}",)}, "stamp_lines[0]"),
        ({"filename_patterns": ("[{level}]", "...")}, "filename_patterns[1]"),
        ({"aliases": ("TOI MAT",)}, "aliases[0]"),
        ({"aliases": ("TOI MAT = TOP SECRET",)}, "aliases[0]"),
        ({"levels": ("MẬT", "  ")}, "levels[1]"),
        ({"levels": ("MẬT", "mật")}, "levels[1]"),
        ({"levels": ()}, "levels"),
        ({"labels": ("",)}, "labels[0]"),
        ({"header_fields": ("X-Classification:",)}, "header_fields[0]"),
    ],
)
def test_validate_names_the_key_and_the_fix(change: dict[str, tuple[str, ...]], key: str) -> None:
    problems = validate(replace(CFG, **change))
    assert problems, change
    assert problems[0].startswith(f"{key}: ")
    assert ";" in problems[0]  # problem; fix


def test_the_filter_is_registered_with_its_validation() -> None:
    spec = REGISTRY["classification"]
    assert spec.config_type is Config
    assert spec.check is check
    assert spec.validate is validate


# --- the filter ---------------------------------------------------------------------


@dataclass
class FakeContext:
    """What check() reads of a MessageContext: the one parse's result."""

    texts: tuple[TextSource, ...]
    scans: tuple[ScanResult, ...] = ()
    elided: int = 0

    async def inspection(self) -> Inspection:
        return Inspection((), self.texts, 0, scans=self.scans, elided=self.elided)


async def test_a_classified_message_is_refused_naming_the_level_and_where() -> None:
    ctx = FakeContext((subject("Báo cáo"), body("TỐI MẬT\nKế hoạch A-12", "attachment bc.docx")))
    verdict = await check(ctx, CFG)  # type: ignore[arg-type]
    assert verdict.action is Action.REJECT
    assert verdict.rule == "classification"
    assert verdict.reason == "TỐI MẬT stamp in attachment bc.docx"
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == (550, "5.7.1")
    assert verdict.reply == replies.CLASSIFIED.with_rule("classification", verdict.reason)
    assert "A-12" not in str(verdict.reply)  # the content never leaves in the reply


async def test_an_ordinary_message_is_accepted() -> None:
    ctx = FakeContext((subject("Đổi mật khẩu"), body("Thân mật,\nNguyễn Thị Mật")))
    assert (await check(ctx, CFG)).action is Action.ACCEPT  # type: ignore[arg-type]


async def test_large_texts_are_matched_off_the_loop_with_the_same_result(monkeypatch) -> None:
    calls = []

    async def to_thread(func, *args):
        calls.append(func)
        return func(*args)

    monkeypatch.setattr(classification.asyncio, "to_thread", to_thread)
    big = "Thân mật.\n" * 40_000 + "TUYỆT MẬT\n"
    verdict = await check(FakeContext((body(big),)), CFG)  # type: ignore[arg-type]
    assert calls == [find_marker]
    assert verdict.reason == "TUYỆT MẬT stamp in body"
    await check(FakeContext((body("MẬT"),)), CFG)  # type: ignore[arg-type]
    assert calls == [find_marker]  # small texts stay inline


def test_the_filter_scans_with_find_marker_where_the_parse_runs() -> None:
    assert REGISTRY["classification"].scan is find_marker


async def test_a_scan_result_for_these_rules_decides_without_the_texts() -> None:
    found = Finding("TỐI MẬT", "stamp", "attachment bc.docx")
    ctx = FakeContext((), scans=(ScanResult("classification", CFG, found),), elided=1)
    verdict = await check(ctx, CFG)  # type: ignore[arg-type]
    assert verdict.reason == "TỐI MẬT stamp in attachment bc.docx"
    clean = FakeContext((), scans=(ScanResult("classification", CFG, None),), elided=1)
    assert (await check(clean, CFG)).action is Action.ACCEPT  # type: ignore[arg-type]


async def test_a_scan_with_other_rules_is_not_used() -> None:
    """A result for other settings (say, from before a reload) says nothing about these."""
    other = replace(CFG, stamp_lines=("{level}",))
    ctx = FakeContext((body("TỐI MẬT"),), scans=(ScanResult("classification", other, None),))
    verdict = await check(ctx, CFG)  # type: ignore[arg-type]
    assert verdict.reason == "TỐI MẬT stamp in body"


async def test_a_failed_scan_or_missing_texts_never_pass_the_message() -> None:
    failed = FakeContext((), scans=(ScanResult("classification", CFG, error="boom"),))
    with pytest.raises(RuntimeError, match="boom"):
        await check(failed, CFG)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="left out"):
        await check(FakeContext((), elided=1), CFG)  # type: ignore[arg-type]


# --- the corpus ---------------------------------------------------------------------


def test_the_corpus_has_forty_positives_and_forty_negatives() -> None:
    positives = [c for c in CASES if c.expected]
    negatives = [c for c in CASES if c.expected is None]
    assert len(positives) >= 40 and len(negatives) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.expected for c in positives} == {"MẬT", "TỐI MẬT", "TUYỆT MẬT"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_at_the_text_level(case: corpus.Case) -> None:
    found = find_marker(corpus.texts(case.msg), CFG)
    assert (found.level if found else None) == case.expected, found


def _read_back(doc: Doc) -> str:
    """The document's text as its own library reads it: the corpus holds real files."""
    data = corpus.document(doc)
    if doc.kind == "docx":
        import docx

        document = docx.Document(io.BytesIO(data))
        header = [p.text for p in document.sections[0].header.paragraphs]
        return "\n".join(header + [p.text for p in document.paragraphs])
    if doc.kind == "xlsx":
        import openpyxl

        sheet = openpyxl.load_workbook(io.BytesIO(data)).active
        return "\n".join(
            "\t".join(str(c) for c in row) for row in sheet.iter_rows(values_only=True)
        )
    if doc.kind in ("odt", "ods"):
        from odf import teletype
        from odf.opendocument import load
        from odf.text import P

        return "\n".join(
            teletype.extractText(p) for p in load(io.BytesIO(data)).getElementsByType(P)
        )
    if doc.kind == "pdf":
        import pypdf

        return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)
    if doc.kind == "pptx":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.read("ppt/slides/slide1.xml").decode("utf-8")
    if doc.kind == "txt" and doc.charset == "windows-1258":
        return unicodedata.normalize("NFC", data.decode("cp1258"))
    return data.decode("utf-8")


def _docs(msg: Msg) -> list[Doc]:
    found: list[Doc] = []
    for item in msg.attachments:
        found += _docs(item) if isinstance(item, Msg) else [item]
    return found


DOCS = {f"{c.name}/{d.filename}": d for c in CASES for d in _docs(c.msg)}


@pytest.mark.parametrize("doc", DOCS.values(), ids=DOCS.keys())
def test_corpus_documents_hold_their_text(doc: Doc) -> None:
    text = unicodedata.normalize("NFC", _read_back(doc))
    for line in (*doc.page_header, *doc.lines):
        for cell in line.split("\t"):
            assert unicodedata.normalize("NFC", cell).split()[0] in text, (cell, doc.kind)


def test_corpus_messages_decode_to_their_subjects() -> None:
    for case in CASES:
        message = BytesParser(policy=policy.default).parsebytes(corpus.eml(case.msg))
        decoded = unicodedata.normalize("NFC", str(message["Subject"]))
        assert decoded == unicodedata.normalize("NFC", case.msg.subject), case.name


def _inspect_body():
    """The one MIME parse the gateway runs (gateway/mime/parse.py)."""
    from gateway.mime.parse import inspect_body

    return inspect_body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_through_the_mime_parse(case: corpus.Case) -> None:
    inspect_body = _inspect_body()
    inspection = inspect_body(b"", corpus.eml(case.msg), None, InspectionLimits())
    assert inspection.problems == ()
    found = find_marker(inspection.texts, CFG)
    assert (found.level if found else None) == case.expected, (found, inspection.texts)


def test_long_texts_try_only_candidate_lines_and_agree_with_the_full_search() -> None:
    """Past 4 KiB only lines holding a level's last word are tried: the answer must be
    the one the whole-text search gives, for stamps anywhere and for near misses."""
    from gateway.filters.classification import _rules, _stamp

    rules = _rules(Config())
    prose = "Mật khẩu của hệ thống đã đổi; mật độ dân số tăng; anh em thân mật.\n" * 200
    lines = [
        "TỐI MẬT",
        "Độ mật: Tuyệt mật",
        "  * MẬT *  ",
        "Mật - xin nghỉ phép",
        "Độ mật: Thường",
        "TOI MAT",
        "format matters, MAT_DO_DAN_SO",
    ]
    for line in lines:
        for where in (0, len(prose) // 2, len(prose)):
            text = prose[:where] + line + "\n" + prose[where:]
            assert len(text) > 4096
            fast = _stamp(text, rules)
            full = rules.stamp.search(text)
            assert (fast is None) == (full is None), (line, where)
            if full is not None:
                assert fast is not None and fast.group(0) == full.group(0)


# --- the ASCII fast path ---------------------------------------------------------------


def test_the_ascii_candidate_search_finds_whatever_the_regex_finds() -> None:
    """``_has_candidate`` answers ASCII text with ``lower()`` and substring tests: it may
    say yes more often than the case-insensitive regex, never less, and for the default
    levels exactly as often."""
    import random

    rules = classification._rules(CFG)
    draw = random.Random(7)
    for _ in range(3000):
        text = "".join(draw.choice("mMaAtT \r\n\x0b-x") for _ in range(draw.randint(0, 12)))
        prepared = classification._prepare(text)
        expected = rules.candidates.search(prepared) is not None
        assert classification._has_candidate(prepared, rules) == expected, repr(text)


def test_levels_spelt_with_unicode_equivalents_of_ascii_letters_still_match_ascii() -> None:
    # re.IGNORECASE takes the long s for an s and the Kelvin sign for a k.
    cfg = Config(levels=("\u212aIN \u017fEC",))
    assert classification._rules(cfg).ascii_candidates == ("sec",)
    assert level(body("KIN SEC"), cfg=cfg) == "KIN \u017fEC"  # NFC: the Kelvin sign is a K
    assert level(body("kin sec"), cfg=cfg) == "KIN \u017fEC"
    assert level(body("kin sac"), cfg=cfg) is None


def test_ascii_text_is_prepared_as_before() -> None:
    for text in ("a\r\nb\rc\x0bd\x0ce", "one\rtwo", "x\x0cy", "plain", "", "tab\tend\r\n"):
        assert classification._prepare(text) == unicodedata.normalize(
            "NFC", text.replace("\r\n", "\n").translate(classification._PREPARE)
        )
