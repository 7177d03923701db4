"""The secret-classification corpus: messages and office documents, built on demand.

Each case is one line of ``CASES``: a name, the level the classification rule must
find (None: must pass), and a message spec. From a spec come
- ``texts(msg)``: the TextSources a perfect MIME parse yields (what the rule reads),
- ``eml(msg)``: the real message bytes (RFC 2047 / RFC 2231 words, quoted-printable,
  windows-1258, NFD, HTML, forwarded message/rfc822, and .docx/.xlsx/.pptx/.odt/.ods/
  .pdf made with python-docx, openpyxl, odfpy and fpdf2), for the parse itself.

``python -m tests.data.classification.corpus OUTDIR`` writes every case as OUTDIR/NAME.eml
and OUTDIR/expected.tsv, to look at or to feed a running gateway.
"""

from __future__ import annotations

import base64
import html
import io
import sys
import unicodedata
import zipfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from gateway.mime.model import TextSource

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core


@dataclass(frozen=True)
class Doc:
    """An attachment: ``kind`` is the builder (txt, html, docx, xlsx, pptx, odt, ods, pdf);
    ``lines`` are its paragraphs (rows, for spreadsheets: cells split on tabs)."""

    filename: str
    kind: str
    lines: tuple[str, ...] = ()
    page_header: tuple[str, ...] = ()  # docx only: text in the page header
    charset: str = "utf-8"  # txt only
    nfd: bool = False  # store the text decomposed (as macOS and some converters do)


@dataclass(frozen=True)
class Msg:
    subject: str = "Báo cáo công tác tháng 5"
    body: tuple[str, ...] = (
        "Kính gửi các đồng chí,",
        "Đề nghị các đơn vị gửi báo cáo trước ngày 15.",
        "Trân trọng.",
    )
    headers: tuple[tuple[str, str], ...] = ()
    html: bool = False
    charset: str = "utf-8"  # of the body: "utf-8" or "windows-1258"
    cte: str = "8bit"  # of the body: "8bit", "quoted-printable" or "base64"
    subject_charset: str = "utf-8"  # of the RFC 2047 subject: "utf-8" or "windows-1258"
    nfd: bool = False  # subject and body text decomposed
    attachments: tuple[Doc | Msg, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Case:
    name: str
    expected: str | None  # "MẬT", "TỐI MẬT", "TUYỆT MẬT" or None (must pass)
    msg: Msg


def fwd(inner: Msg, depth: int = 1, subject: str = "Fwd: văn bản") -> Msg:
    """``inner`` forwarded as message/rfc822, ``depth`` times over."""
    for _ in range(depth):
        inner = Msg(subject=subject, body=("Chuyển tiếp để biết.",), attachments=(inner,))
    return inner


def body(*lines: str, **kw) -> Msg:
    return Msg(body=("Kính gửi các đồng chí,", *lines, "Trân trọng."), **kw)


def attach(*docs: Doc, **kw) -> Msg:
    return Msg(attachments=docs, **kw)


PROSE = (
    "Cán bộ, công chức có trách nhiệm bảo vệ bí mật nhà nước theo Luật Bảo vệ bí mật "
    "nhà nước 2018; không được gửi tài liệu tối mật, tuyệt mật qua thư điện tử.",
    "Bí mật nhà nước được phân loại theo độ mật: tuyệt mật, tối mật và mật.",
    "Đề nghị đổi mật khẩu hộp thư định kỳ; mật độ dân số tại phường tăng 3%.",
    "Hội nghị Mặt trận Tổ quốc; thông báo mất điện ngày 12; mật ong rừng U Minh.",
    "Chào thân mật, Nguyễn Thị Mật.",
)
OFFICE_NOISE = (
    "BÁO CÁO TÌNH HÌNH",
    "MẬT KHẨU",
    "Mật khẩu mới: do quản trị viên cấp",
    "MẬT ĐỘ DÂN SỐ",
    "MẤT ĐIỆN",
    "MẶT TRẬN TỔ QUỐC",
    "Độ mật: Thường",
    "Độ khẩn: Hỏa tốc",
    "BÍ MẬT NHÀ NƯỚC",
    "MẬT MÃ",
    "NGUYỄN THỊ MẬT",
    "Thân mật,",
    *PROSE,
)

CASES: list[Case] = [
    # --- positives: subject ---
    Case("subj_bracket_mat", "MẬT", Msg(subject="[MẬT] Báo cáo tình hình an ninh")),
    Case("subj_paren_toi_mat", "TỐI MẬT", Msg(subject="(TỐI MẬT) Kế hoạch phối hợp")),
    Case("subj_leading_tuyet_mat", "TUYỆT MẬT", Msg(subject="TUYỆT MẬT - Phương án bảo vệ")),
    Case("subj_leading_colon", "TỐI MẬT", Msg(subject="TỐI MẬT: Danh sách cán bộ")),
    Case("subj_fwd_titlecase_tag", "TỐI MẬT", Msg(subject="Fwd: [Tối mật] Kế hoạch")),
    Case("subj_re_tl_leading_mat", "MẬT", Msg(subject="RE: TL: MẬT - Góp ý dự thảo")),
    Case("subj_unaccented_tag", "TUYỆT MẬT", Msg(subject="[TUYET MAT] Phuong an A2")),
    Case("subj_unaccented_leading", "TỐI MẬT", Msg(subject="TOI MAT - Ke hoach thang 6")),
    Case("subj_cp1258", "MẬT", Msg(subject="[MẬT] Báo cáo quý", subject_charset="windows-1258")),
    Case("subj_nfd", "TỐI MẬT", Msg(subject="[TỐI MẬT] Tờ trình", nfd=True)),
    Case("subj_lowercase_tag", "MẬT", Msg(subject="[mật] Danh sách đề xuất")),
    # --- positives: header fields ---
    Case("hdr_x_classification", "TỐI MẬT", Msg(headers=(("X-Classification", "TỐI MẬT"),))),
    Case("hdr_x_do_mat_unaccented", "MẬT", Msg(headers=(("X-Do-Mat", "MAT"),))),
    Case(
        "hdr_security_lower", "TUYỆT MẬT", Msg(headers=(("Security-Classification", "tuyệt mật"),))
    ),
    # --- positives: body stamps ---
    Case("body_stamp_mat", "MẬT", body("MẬT", "Báo cáo kết quả kiểm tra.")),
    Case("body_label_toi_mat", "TỐI MẬT", body("Độ mật: Tối mật", "Nội dung như sau.")),
    Case("body_label_caps", "TUYỆT MẬT", body("ĐỘ MẬT: TUYỆT MẬT")),
    Case("body_label_unaccented", "MẬT", body("DO MAT: MAT", "Noi dung kem theo.")),
    Case("body_unaccented_stamp", "TUYỆT MẬT", body("TUYET MAT", "Phuong an bao ve.")),
    Case("body_after_number", "MẬT", body("Số: 15/BC-UBND    Độ mật: Mật", "Báo cáo.")),
    Case("body_decorated", "TUYỆT MẬT", body("*** TUYỆT MẬT ***")),
    Case("body_quoted_forward", "TỐI MẬT", body("> TỐI MẬT", "> Kế hoạch triển khai.")),
    Case("body_zero_width", "MẬT", body("M\u200bẬT", "Tài liệu kèm theo.")),
    Case("body_qp", "TỐI MẬT", body("TỐI MẬT", "Nội dung.", cte="quoted-printable")),
    Case("body_nfd", "MẬT", body("MẬT", "Tài liệu gửi kèm.", nfd=True)),
    Case(
        "body_cp1258_qp",
        "TỐI MẬT",
        body("TỐI MẬT", "Tờ trình.", charset="windows-1258", cte="quoted-printable"),
    ),
    Case("body_html", "TỐI MẬT", body("TỐI MẬT", "Kế hoạch.", html=True)),
    Case("body_html_base64", "MẬT", body("Độ mật: Mật", "Kế hoạch.", html=True, cte="base64")),
    # --- positives: attachment file names ---
    Case("name_bracket", "MẬT", attach(Doc("[MẬT] Báo cáo.txt", "txt", ("Báo cáo.",)))),
    Case(
        "name_unaccented_caps",
        "TỐI MẬT",
        attach(Doc("TOI_MAT_ke_hoach.pdf", "pdf", ("Kế hoạch.",))),
    ),
    Case(
        "name_paren_titlecase",
        "TUYỆT MẬT",
        attach(Doc("Kế hoạch (Tuyệt mật).xlsx", "xlsx", ("Kế hoạch",))),
    ),
    Case(
        "name_leading_dash",
        "TỐI MẬT",
        attach(Doc("TỐI MẬT - phương án.odt", "odt", ("Phương án.",))),
    ),
    # --- positives: attachment text ---
    Case("txt_stamp", "MẬT", attach(Doc("bao-cao.txt", "txt", ("MẬT", "Báo cáo số 12.")))),
    Case(
        "txt_cp1258",
        "TỐI MẬT",
        attach(Doc("to-trinh.txt", "txt", ("TỐI MẬT", "Tờ trình."), charset="windows-1258")),
    ),
    Case(
        "html_attachment",
        "TUYỆT MẬT",
        attach(Doc("thong-bao.html", "html", ("TUYỆT MẬT", "Thông báo."))),
    ),
    Case(
        "docx_stamp",
        "MẬT",
        attach(Doc("bao-cao.docx", "docx", ("BỘ NỘI VỤ", "MẬT", *OFFICE_NOISE))),
    ),
    Case(
        "docx_label",
        "TỐI MẬT",
        attach(
            Doc(
                "cong-van.docx",
                "docx",
                ("Số: 12/CV-BNV", "Độ mật: Tối mật", "Kính gửi: các đơn vị."),
            )
        ),
    ),
    Case(
        "docx_page_header",
        "MẬT",
        attach(Doc("ke-hoach.docx", "docx", ("Kế hoạch năm.",), page_header=("MẬT",))),
    ),
    Case(
        "docx_nfd",
        "TỐI MẬT",
        attach(Doc("to-trinh.docx", "docx", ("TỐI MẬT", "Tờ trình."), nfd=True)),
    ),
    Case(
        "xlsx_stamp",
        "TỐI MẬT",
        attach(
            Doc("danh-sach.xlsx", "xlsx", ("TỐI MẬT", "Họ tên\tĐơn vị", "Nguyễn Văn An\tVụ TCCB"))
        ),
    ),
    Case(
        "pptx_stamp",
        "TUYỆT MẬT",
        attach(Doc("trinh-bay.pptx", "pptx", ("TUYỆT MẬT", "Phương án bảo vệ mục tiêu"))),
    ),
    Case("odt_stamp", "MẬT", attach(Doc("bien-ban.odt", "odt", ("MẬT", "Biên bản họp.")))),
    Case(
        "ods_label",
        "MẬT",
        attach(Doc("so-lieu.ods", "ods", ("Độ mật: Mật", "Chỉ tiêu\tSố liệu", "Ngân sách\t120"))),
    ),
    Case(
        "pdf_stamp",
        "TỐI MẬT",
        attach(
            Doc(
                "quyet-dinh.pdf",
                "pdf",
                ("BỘ CÔNG AN", "TỐI MẬT", "QUYẾT ĐỊNH", "Về việc phê duyệt kế hoạch."),
            )
        ),
    ),
    Case(
        "pdf_stamp_among_noise",
        "MẬT",
        attach(Doc("bao-cao.pdf", "pdf", (*PROSE[:3], "MẬT", *PROSE[3:]))),
    ),
    # --- positives: forwarded messages ---
    Case("fwd1_subject", "TỐI MẬT", fwd(Msg(subject="[TỐI MẬT] Kế hoạch tuần"))),
    Case("fwd3_body_stamp", "TUYỆT MẬT", fwd(body("TUYỆT MẬT", "Phương án."), depth=3)),
    Case("fwd1_docx", "MẬT", fwd(attach(Doc("bao-cao.docx", "docx", ("MẬT", "Báo cáo."))))),
    Case("fwd2_header", "MẬT", fwd(Msg(headers=(("X-Classification", "MẬT"),)), depth=2)),
    Case(
        "fwd3_pdf_name",
        "TỐI MẬT",
        fwd(attach(Doc("KE_HOACH_TOI_MAT.pdf", "pdf", ("Kế hoạch.",))), depth=3),
    ),
    # --- negatives: ordinary words ---
    Case("neg_mat_khau", None, body("Vui lòng đổi mật khẩu trước thứ Sáu.")),
    Case("neg_mat_khau_line_caps", None, body("MẬT KHẨU", "Mật khẩu mới do quản trị viên cấp.")),
    Case("neg_mat_do", None, body("Mật độ dân số tăng nhanh.", "MẬT ĐỘ")),
    Case("neg_mat_ong", None, body("Mật ong rừng U Minh.", "MẬT ONG")),
    Case("neg_than_mat", None, body("Nội dung trao đổi.", "Thân mật,", "Lan")),
    Case("neg_mat_lost_caps", None, body("MẤT", "Tôi bị mất ví ở hội trường.")),
    Case("neg_mat_face_caps", None, body("MẶT", "Mặt bằng tầng 2.")),
    Case("neg_mat_dien_subject_tag", None, Msg(subject="[MẤT ĐIỆN] Lịch cắt điện tuần này")),
    Case("neg_mat_tran_subject_tag", None, Msg(subject="(MẶT TRẬN) Hội nghị hiệp thương")),
    Case("neg_mat_dien_leading", None, Msg(subject="MẤT ĐIỆN - khu nhà B")),
    Case("neg_mat_ma_line", None, body("MẬT MÃ", "Ban Cơ yếu Chính phủ.")),
    Case("neg_bi_mat_line", None, body("BÍ MẬT NHÀ NƯỚC", "Tài liệu tập huấn.")),
    # --- negatives: prose about secrets ---
    Case("neg_prose_state_secrets", None, body(*PROSE[:2])),
    Case("neg_law_subject", None, Msg(subject="Luật Bảo vệ bí mật nhà nước 2018")),
    Case(
        "neg_prose_subject",
        None,
        Msg(subject="Nhắc nhở: không gửi tài liệu tối mật qua thư điện tử"),
    ),
    Case("neg_levels_listed_line", None, body("Các độ mật: tuyệt mật, tối mật, mật.")),
    Case("neg_prose_caps_line", None, body("KHÔNG GỬI TÀI LIỆU TỐI MẬT QUA THƯ ĐIỆN TỬ")),
    # --- negatives: a person named Mật ---
    Case("neg_person_subject", None, Msg(subject="Mật - xin nghỉ phép ngày 20")),
    Case("neg_person_signature", None, body("Người gửi: Nguyễn Thị Mật", "NGUYỄN THỊ MẬT")),
    Case("neg_person_birthday", None, Msg(subject="Chúc mừng sinh nhật chị Mật")),
    Case(
        "neg_person_filename",
        None,
        attach(Doc("Nguyen Thi Mat - CV.docx", "docx", ("Sơ yếu lý lịch: Nguyễn Thị Mật",))),
    ),
    # --- negatives: labels with no secret level ---
    Case("neg_do_mat_thuong", None, body("Độ mật: Thường", "Độ khẩn: Hỏa tốc")),
    Case("neg_do_mat_khong_mat", None, body("Độ mật: Không mật")),
    Case("neg_header_thuong", None, Msg(headers=(("X-Classification", "Thường"),))),
    Case("neg_keywords_header", None, Msg(headers=(("Keywords", "tối mật, mật khẩu"),))),
    # --- negatives: unaccented ambiguity ---
    Case("neg_toi_mat_lowercase", None, Msg(subject="toi mat chia khoa phong hop")),
    Case("neg_bare_mat_line", None, body("MAT", "Vat lieu xay dung.")),
    Case("neg_bare_mat_tag", None, Msg(subject="[MAT] Vat lieu xay dung")),
    Case("neg_unaccented_sentence", None, body("TOI MAT VI O HOI TRUONG")),
    # --- negatives: file names ---
    Case(
        "neg_name_mat_khau",
        None,
        attach(Doc("mat_khau_wifi.txt", "txt", ("Mật khẩu: do quản trị cấp",))),
    ),
    Case(
        "neg_name_mat_do",
        None,
        attach(Doc("Mật độ dân số 2023.xlsx", "xlsx", ("Phường\tMật độ dân số", "Phúc Xá\t12000"))),
    ),
    Case("neg_name_mat_do_caps", None, attach(Doc("MAT_DO_DAN_SO.xlsx", "xlsx", ("Mật độ",)))),
    Case(
        "neg_name_law", None, attach(Doc("Luat-bao-ve-bi-mat-nha-nuoc-2018.pdf", "pdf", PROSE[:2]))
    ),
    Case(
        "neg_name_accented_caps_mat_do",
        None,
        attach(Doc("MẬT ĐỘ DÂN SỐ.ods", "ods", ("Mật độ dân số",))),
    ),
    # --- negatives: office files full of such words ---
    Case(
        "neg_docx_noise",
        None,
        attach(Doc("tap-huan.docx", "docx", OFFICE_NOISE, page_header=("Độ mật: Thường",))),
    ),
    Case(
        "neg_xlsx_mat_do",
        None,
        attach(
            Doc(
                "dan-so.xlsx",
                "xlsx",
                ("Phường\tDân số\tMật độ dân số", "Phúc Xá\t24000\t12000", "Mật khẩu\tMẬT KHẨU"),
            )
        ),
    ),
    Case(
        "neg_xlsx_passwords",
        None,
        attach(Doc("tai-khoan.xlsx", "xlsx", ("Tài khoản\tMật khẩu", "an@bnv.gov.vn\t(đã đổi)"))),
    ),
    Case(
        "neg_pdf_mat_khau",
        None,
        attach(
            Doc(
                "huong-dan.pdf",
                "pdf",
                ("HƯỚNG DẪN ĐỔI MẬT KHẨU", "Bước 1: mở trang đổi mật khẩu.", "MẬT KHẨU"),
            )
        ),
    ),
    Case("neg_pdf_noise", None, attach(Doc("tap-huan.pdf", "pdf", OFFICE_NOISE))),
    Case(
        "neg_pptx_training",
        None,
        attach(
            Doc(
                "tap-huan.pptx",
                "pptx",
                ("Quy định về tài liệu MẬT", "Không gửi tài liệu tối mật qua thư điện tử"),
            )
        ),
    ),
    Case("neg_odt_prose", None, attach(Doc("quy-che.odt", "odt", OFFICE_NOISE))),
    Case(
        "neg_ods_honey",
        None,
        attach(
            Doc("bang-gia.ods", "ods", ("Sản phẩm\tGiá", "Mật ong rừng\t300000", "MẬT ONG\t250000"))
        ),
    ),
    Case(
        "neg_txt_cp1258",
        None,
        attach(Doc("ghi-chu.txt", "txt", ("Mật độ dân số", "MẶT TRẬN"), charset="windows-1258")),
    ),
    Case(
        "neg_html_attachment",
        None,
        attach(Doc("tin.html", "html", ("MẤT ĐIỆN", "Mật ong", "Thân mật"))),
    ),
    # --- negatives: transports ---
    Case("neg_nfd_body", None, body("MẬT KHẨU", "Mất điện, mặt trận, mật độ.", nfd=True)),
    Case("neg_nfd_subject", None, Msg(subject="Đổi mật khẩu hộp thư", nfd=True)),
    Case(
        "neg_cp1258_body",
        None,
        body("MẬT ĐỘ", "MẶT TRẬN", charset="windows-1258", cte="quoted-printable"),
    ),
    Case(
        "neg_cp1258_subject",
        None,
        Msg(subject="[MẤT ĐIỆN] Thông báo", subject_charset="windows-1258"),
    ),
    Case("neg_html_qp", None, body("MẤT ĐIỆN", "Mật ong rừng", html=True, cte="quoted-printable")),
    Case("neg_fwd1_benign", None, fwd(body("Đổi mật khẩu trước thứ Sáu.", "Thân mật,"))),
    Case(
        "neg_fwd3_benign",
        None,
        fwd(attach(Doc("dan-so.xlsx", "xlsx", ("Mật độ dân số", "MẬT KHẨU"))), depth=3),
    ),
]


# --- texts: what a perfect parse yields --------------------------------------------


def _nfc(text: str, keep_nfd: bool) -> str:
    """The parse hands rules NFC; ``keep_nfd`` leaves it decomposed, to check that the
    rule normalises for itself too."""
    return unicodedata.normalize("NFD", text) if keep_nfd else text


def texts(msg: Msg, where: str = "") -> list[TextSource]:
    out = [
        TextSource(f"{where}subject", _nfc(msg.subject, msg.nfd), "subject"),
        *(TextSource(f"{where}header {n}", v, "header") for n, v in msg.headers),
        TextSource(f"{where}body", _nfc("\n".join(msg.body), msg.nfd), "body"),
    ]
    for item in msg.attachments:
        if isinstance(item, Msg):
            out += texts(item, f"{where}forwarded message: ")
            continue
        location = f"{where}attachment {item.filename}"
        text = "\n".join((*item.page_header, *item.lines))
        out.append(TextSource(location, item.filename, "filename"))
        out.append(TextSource(location, _nfc(text, item.nfd), "attachment"))
    return out


# --- eml: the real bytes -------------------------------------------------------------


def to_cp1258(text: str) -> bytes:
    """windows-1258 has letters with circumflex, breve and horn but puts the five tone
    marks after them as combining characters (Ậ is Â + U+0323)."""
    tones = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}
    out = []
    for char in unicodedata.normalize("NFC", text):
        parts = unicodedata.normalize("NFD", char)
        base = unicodedata.normalize("NFC", "".join(c for c in parts if c not in tones))
        out.append(base + "".join(c for c in parts if c in tones))
    return "".join(out).encode("cp1258")


def _text_bytes(text: str, charset: str) -> bytes:
    return to_cp1258(text) if charset == "windows-1258" else text.encode("utf-8")


def _html(lines: tuple[str, ...]) -> str:
    paragraphs = "".join(f"<p><b>{html.escape(line)}</b></p>\n" for line in lines)
    head = '<html><head><meta charset="utf-8"><title>x</title></head>'
    return f"{head}<body>\n{paragraphs}</body></html>\n"


def _docx(doc: Doc, lines: tuple[str, ...], header: tuple[str, ...]) -> bytes:
    import docx

    document = docx.Document()
    for line in header:
        document.sections[0].header.add_paragraph(line)
    for line in lines:
        document.add_paragraph(line)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _xlsx(lines: tuple[str, ...]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    for line in lines:
        sheet.append(line.split("\t"))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _pptx(lines: tuple[str, ...]) -> bytes:
    """A minimal PowerPoint package, written by hand (no python-pptx in the test extras)."""
    paragraphs = "".join(f"<a:p><a:r><a:t>{html.escape(line)}</a:t></a:r></a:p>" for line in lines)
    members = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/ppt/presentation.xml" '
            'ContentType="application/vnd.openxmlformats-'
            'officedocument.presentationml.presentation.main+xml"/>'
            '<Override PartName="/ppt/slides/slide1.xml" '
            'ContentType="application/vnd.openxmlformats-'
            'officedocument.presentationml.slide+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/officeDocument" Target="ppt/presentation.xml"/></Relationships>'
        ),
        "ppt/presentation.xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<p:presentation xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            '<p:sldIdLst><p:sldId id="256" r:id="rId2"/></p:sldIdLst></p:presentation>'
        ),
        "ppt/_rels/presentation.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/slide" Target="slides/slide1.xml"/></Relationships>'
        ),
        "ppt/slides/slide1.xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<p:sld xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" '
            'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main">'
            "<p:cSld><p:spTree><p:sp><p:txBody><a:bodyPr/>"
            f"{paragraphs}</p:txBody></p:sp></p:spTree></p:cSld></p:sld>"
        ),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text.encode("utf-8"))
    return out.getvalue()


def _odf(lines: tuple[str, ...], spreadsheet: bool) -> bytes:
    from odf.opendocument import OpenDocumentSpreadsheet, OpenDocumentText
    from odf.table import Table, TableCell, TableRow
    from odf.text import P

    if not spreadsheet:
        document = OpenDocumentText()
        for line in lines:
            document.text.addElement(P(text=line))
    else:
        document = OpenDocumentSpreadsheet()
        table = Table(name="Sheet1")
        for line in lines:
            row = TableRow()
            for value in line.split("\t"):
                cell = TableCell(valuetype="string")
                cell.addElement(P(text=value))
                row.addElement(cell)
            table.addElement(row)
        document.spreadsheet.addElement(table)
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def _pdf(lines: tuple[str, ...]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.add_font("DejaVu", fname=str(FONT))
    pdf.set_font("DejaVu", size=11)
    for line in lines:
        pdf.multi_cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


_TYPES = {
    "txt": ("text", "plain"),
    "html": ("text", "html"),
    "docx": ("application", "vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "xlsx": ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "pptx": ("application", "vnd.openxmlformats-officedocument.presentationml.presentation"),
    "odt": ("application", "vnd.oasis.opendocument.text"),
    "ods": ("application", "vnd.oasis.opendocument.spreadsheet"),
    "pdf": ("application", "pdf"),
}


def document(doc: Doc) -> bytes:
    """The attachment's bytes, made by the library its format's users have."""
    lines = tuple(_nfc(line, doc.nfd) for line in doc.lines)
    header = tuple(_nfc(line, doc.nfd) for line in doc.page_header)
    if doc.kind == "txt":
        return _text_bytes("\r\n".join(lines) + "\r\n", doc.charset)
    if doc.kind == "html":
        return _html(lines).encode("utf-8")
    if doc.kind == "docx":
        return _docx(doc, lines, header)
    if doc.kind == "xlsx":
        return _xlsx(lines)
    if doc.kind == "pptx":
        return _pptx(lines)
    if doc.kind in ("odt", "ods"):
        return _odf(lines, doc.kind == "ods")
    if doc.kind == "pdf":
        return _pdf(lines)
    raise ValueError(f"unknown document kind {doc.kind!r}")


_PLACEHOLDER = "X-PLACEHOLDER-SUBJECT"


def _message(msg: Msg) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Nguyễn Văn An <an@bnv.gov.vn>"
    message["To"] = "vanthu@bnv.gov.vn"
    message["Subject"] = _PLACEHOLDER
    message["Message-ID"] = "<corpus@bnv.gov.vn>"
    for name, value in msg.headers:
        message[name] = value
    lines = tuple(_nfc(line, msg.nfd) for line in msg.body)
    text = _html(lines) if msg.html else "\r\n".join(lines) + "\r\n"
    subtype = "html" if msg.html else "plain"
    if msg.charset == "utf-8":
        message.set_content(text, subtype=subtype, charset="utf-8", cte=msg.cte)
    else:
        message.set_content(
            _text_bytes(text, msg.charset),
            "text",
            subtype,
            cte=msg.cte,
            params={"charset": msg.charset},
        )
    for item in msg.attachments:
        if isinstance(item, Msg):
            message.add_attachment(_message(item))
        else:
            maintype, subtype = _TYPES[item.kind]
            params = {"charset": item.charset} if maintype == "text" else {}
            message.add_attachment(
                document(item), maintype, subtype, filename=item.filename, params=params
            )
    return message


def _subject_word(msg: Msg) -> bytes:
    subject = _nfc(msg.subject, msg.nfd)
    cp1258 = msg.subject_charset == "windows-1258"
    raw = to_cp1258(subject) if cp1258 else subject.encode("utf-8")
    return b"=?" + msg.subject_charset.encode() + b"?B?" + base64.b64encode(raw) + b"?="


def _fill_subjects(data: bytes, msgs: list[Msg]) -> bytes:
    """Replace the placeholders, outermost first (the order they appear in)."""
    for msg in msgs:
        data = data.replace(_PLACEHOLDER.encode(), _subject_word(msg), 1)
    return data


def _in_order(msg: Msg) -> list[Msg]:
    found = [msg]
    for item in msg.attachments:
        if isinstance(item, Msg):
            found += _in_order(item)
    return found


def eml(msg: Msg) -> bytes:
    """The message as it crosses the wire: CRLF lines, RFC 2047 subject words."""
    data = _message(msg).as_bytes(policy=SMTP)
    return _fill_subjects(data, _in_order(msg))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.data.classification.corpus OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in CASES:
        (out / f"{case.name}.eml").write_bytes(eml(case.msg))
        rows.append(f"{case.name}.eml\t{case.expected or '-'}\n")
    (out / "expected.tsv").write_text("".join(rows), encoding="utf-8")
    print(f"{len(CASES)} messages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
