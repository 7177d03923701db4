"""The workloads: what is sent, built once per run (or cached) so every system gets the same bytes.

- plain: 5 KB messages. smtp-source generates them itself; ``probe_message`` builds the
  latency probe's equivalent.
- docx: a multipart/mixed message carrying one real 1 MiB .docx (python-docx) of ordinary
  Vietnamese prose (~2 M characters) and one picture, base64-encoded: what the gateway's
  content filters must open, unzip and read. The text deliberately carries no
  classification marking, so a filter that reads it must let it through.
- big: 20 MiB of random attachments (the streaming / memory check).
- bombs: a .docx whose word/document.xml inflates to 200 MiB and a .zip of 500 MiB of zeros,
  both small on the wire: the inspection must give up within its caps, not inflate them.
"""

from __future__ import annotations

import io
import random
import struct
import time
import zipfile
import zlib
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from pathlib import Path

from bench.common import MIB, RCPT, SENDER, cache_dir, log

DOCX_BYTES = 1 * MIB
DOCX_NAME = "bao-cao-hoat-dong-quy.docx"
DOCX_CACHE_VERSION = 2  # bump when the generator changes, to rebuild the cached file
# Characters of prose in the .docx. Prose alone deflates about 12:1, so a 1 MiB .docx of
# nothing but text would hold ~12 M characters, past the inspection's 4 M-per-part cap
# (gateway/mime/model.py): it would be refused as uninspectable, which measures nothing.
# Like a real 1 MiB report, it is ~2 M characters of text (~170 KB deflated) and a picture.
DOCX_TEXT_CHARS = 2_000_000
DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def probe_message(size: int, index: int) -> bytes:
    """A dot-safe message of about ``size`` body bytes, terminated for DATA."""
    line = b"x" * 78 + b"\r\n"
    body = line * max(1, size // len(line))
    headers = (
        f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: latency probe {index}\r\n"
        f"Message-ID: <probe{index}.{time.time_ns()}@bench.example>\r\n\r\n"
    ).encode("ascii")
    return headers + body + b".\r\n"


def build_big_message(attachment_bytes: int = 20 * MIB, parts: int = 4) -> bytes:
    """One message carrying ``attachment_bytes`` of random base64 attachments (CRLF)."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RCPT
    msg["Subject"] = "bench: 20 MiB of attachments"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="bench.example")
    msg.set_content("Memory check: this message carries large attachments.\n")
    rnd = random.Random(20)
    for i in range(parts):
        msg.add_attachment(
            rnd.randbytes(attachment_bytes // parts),
            maintype="application",
            subtype="octet-stream",
            filename=f"blob{i}.bin",
        )
    return msg.as_bytes(policy=SMTP_POLICY)


# --------------------------------------------------------------------------- the .docx

# Ordinary prose of a quarterly activity report: no classification marking, no urgency mark.
_SUBJECTS = [
    "Ban quản lý dự án",
    "Phòng kế hoạch tổng hợp",
    "Trung tâm dịch vụ khách hàng",
    "Tổ công tác liên ngành",
    "Ủy ban nhân dân phường",
    "Nhóm kỹ thuật hạ tầng",
    "Hội đồng thi đua",
    "Văn phòng đại diện tại Đà Nẵng",
    "Bộ phận tiếp nhận hồ sơ",
    "Trường tiểu học Nguyễn Du",
    "Hợp tác xã nông nghiệp",
    "Câu lạc bộ người cao tuổi",
]
_VERBS = [
    "đã hoàn thành",
    "tiếp tục triển khai",
    "đang rà soát",
    "đã tổ chức",
    "đề xuất điều chỉnh",
    "phối hợp thực hiện",
    "đã tổng kết",
    "chuẩn bị khởi công",
    "đã bàn giao",
    "theo dõi sát",
]
_OBJECTS = [
    "kế hoạch trồng cây xanh dọc bờ sông",
    "chương trình tập huấn kỹ năng số cho cán bộ",
    "việc sửa chữa mặt đường liên thôn",
    "hội chợ nông sản cuối tuần",
    "đợt khám sức khỏe định kỳ cho học sinh",
    "dự án nâng cấp hệ thống chiếu sáng công cộng",
    "lễ hội văn hóa truyền thống của địa phương",
    "việc thu gom rác thải sinh hoạt",
    "giải bóng đá thiếu niên mùa hè",
    "lớp học bơi miễn phí cho trẻ em",
    "chương trình hỗ trợ hộ kinh doanh nhỏ",
    "việc cải tạo nhà văn hóa khu phố",
    "kế hoạch phòng chống ngập úng mùa mưa",
    "buổi đối thoại với người dân về quy hoạch",
]
_CIRCUMSTANCES = [
    "trong quý vừa qua",
    "theo đúng tiến độ đã đề ra",
    "với sự tham gia của nhiều hộ dân",
    "dù thời tiết không thuận lợi",
    "nhờ nguồn kinh phí xã hội hóa",
    "sau nhiều buổi họp bàn",
    "với kết quả được đánh giá cao",
    "trên địa bàn ba xã lân cận",
    "ngay từ đầu tháng",
]
_TAILS = [
    "Kinh phí thực hiện khoảng {n} triệu đồng.",
    "Có {n} lượt người tham gia.",
    "Dự kiến hoàn tất vào ngày {d} tháng {m}.",
    "Tỷ lệ hài lòng đạt {p} phần trăm.",
    "Đơn vị sẽ báo cáo bổ sung trong cuộc họp ngày {d} tháng {m}.",
    "Tổng chiều dài tuyến đường là {n} mét.",
    "Đã phát {n} tờ rơi hướng dẫn.",
]


def vietnamese_paragraph(rnd: random.Random) -> str:
    """A few sentences of an ordinary report, varied enough not to compress to nothing."""
    sentences = []
    for _ in range(rnd.randint(3, 6)):
        tail = rnd.choice(_TAILS).format(
            n=rnd.randint(12, 9800), d=rnd.randint(1, 28), m=rnd.randint(1, 12),
            p=rnd.randint(60, 99),
        )  # fmt: skip
        sentences.append(
            f"{rnd.choice(_SUBJECTS)} {rnd.choice(_VERBS)} {rnd.choice(_OBJECTS)} "
            f"{rnd.choice(_CIRCUMSTANCES)}. {tail}"
        )
    return " ".join(sentences)


def noise_png(raw_bytes: int, width: int = 800) -> bytes:
    """An RGB PNG of random pixels (incompressible) holding about ``raw_bytes`` of pixel data."""
    rnd = random.Random(2)
    height = max(1, raw_bytes // (width * 3))
    rows = b"".join(b"\x00" + rnd.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def _docx_with(text_chars: int, picture_bytes: int) -> bytes:
    from docx import Document  # python-docx: only this workload needs it
    from docx.shared import Cm

    rnd = random.Random(1)
    doc = Document()
    doc.add_heading("Báo cáo hoạt động quý", level=1)
    written = i = 0
    while written < text_chars:
        if i % 40 == 0:
            doc.add_heading(f"Phần {i // 40 + 1}: tình hình thực hiện", level=2)
        if i == 20 and picture_bytes > 0:
            doc.add_paragraph("Hình 1: ảnh chụp công trình sau khi hoàn thành.")
            doc.add_picture(io.BytesIO(noise_png(picture_bytes)), width=Cm(15))
        text = vietnamese_paragraph(rnd)
        doc.add_paragraph(text)
        written += len(text)
        i += 1
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def build_docx(target: int = DOCX_BYTES, text_chars: int = DOCX_TEXT_CHARS) -> bytes:
    """A real .docx of about ``target`` bytes (within 2%): prose plus one picture; cached."""
    path = cache_dir() / f"workload-v{DOCX_CACHE_VERSION}-{target}-{text_chars}.docx"
    if path.exists():
        return path.read_bytes()
    log(f"docx workload: building a {target / MIB:.1f} MiB .docx with python-docx")
    text_only = len(_docx_with(text_chars, 0))
    picture = max(0, target - text_only)
    data = _docx_with(text_chars, picture)
    for _ in range(4):  # the picture is stored, not deflated again: size is about linear
        if abs(len(data) - target) <= target * 0.02 or picture == 0:
            break
        picture = max(0, picture + target - len(data))
        data = _docx_with(text_chars, picture)
    path.write_bytes(data)
    return data


def warmup_message(index: int) -> bytes:
    """A small message with a small .docx attached: it makes a gateway start its parsing
    workers, so that memory checks measure the message, not the pool starting."""
    docx = _docx_with(3000, 0)
    return attachment_message(docx, "ghi-chu.docx", DOCX_MIME, f"bench: warm-up {index}")


def dot_stuff(message: bytes) -> bytes:
    """DATA payload: CRLF lines, leading dots doubled, terminated by ``.``."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def attachment_message(
    data: bytes, filename: str, mime: str, subject: str, text: str = ""
) -> bytes:
    """A multipart/mixed message (CRLF, not dot-stuffed) with ``data`` attached in base64."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RCPT
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="bench.example")
    msg.set_content(text or "Kính gửi anh chị, xin gửi kèm báo cáo hoạt động trong quý.\n")
    maintype, _, subtype = mime.partition("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP_POLICY)


class DocxWorkload:
    """The docx message, split so each send gets its own Message-ID cheaply."""

    def __init__(self) -> None:
        self.docx = build_docx()
        whole = attachment_message(self.docx, DOCX_NAME, DOCX_MIME, "Báo cáo hoạt động quý")
        head, sep, body = whole.partition(b"\r\n\r\n")
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"message-id:")]
        self.head = b"\r\n".join(lines)
        self.rest = dot_stuff(sep + body)
        self.wire_bytes = len(whole)

    def data(self, index: int) -> bytes:
        """The DATA payload of message ``index`` (dot-stuffed and terminated)."""
        mid = f"\r\nMessage-ID: <docx{index}.{time.time_ns()}@bench.example>".encode("ascii")
        return self.head + mid + self.rest


# --------------------------------------------------------------------------- the bombs

_DOCX_CT = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
    'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_DOCX_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
)
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def docx_bomb(inflated: int = 200 * MIB) -> bytes:
    """A well-formed .docx whose word/document.xml inflates to ``inflated`` bytes."""
    para = ("<w:p><w:r><w:t>" + "a" * 4000 + "</w:t></w:r></w:p>").encode("ascii")
    head = f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{_W}"><w:body>'
    foot = b"</w:body></w:document>"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", _DOCX_CT)
        zf.writestr("_rels/.rels", _DOCX_RELS)
        with zf.open("word/document.xml", "w", force_zip64=True) as member:
            member.write(head.encode("ascii"))
            written = len(head)
            chunk = para * 256
            while written + len(chunk) + len(foot) <= inflated:
                member.write(chunk)
                written += len(chunk)
            while written + len(para) + len(foot) <= inflated:
                member.write(para)
                written += len(para)
            member.write(foot)
    return out.getvalue()


def zip_bomb(inflated: int = 500 * MIB) -> bytes:
    """A .zip holding one member of ``inflated`` zero bytes (ZIP_DEFLATED)."""
    out = io.BytesIO()
    zeros = bytes(MIB)
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("zeros.bin", "w", force_zip64=True) as member,
    ):
        for _ in range(inflated // MIB):
            member.write(zeros)
    return out.getvalue()


def bomb_messages() -> list[tuple[str, str, int, bytes]]:
    """(name, description, inflated bytes, message) for each bomb, cached between runs."""
    specs = [
        ("docx-bomb", "bomb.docx, word/document.xml inflates to 200 MiB", 200 * MIB,
         docx_bomb, "bao-cao.docx", DOCX_MIME),
        ("zip-bomb", "bomb.zip, 500 MiB of zeros", 500 * MIB,
         zip_bomb, "du-lieu.zip", "application/zip"),
    ]  # fmt: skip
    out = []
    for name, desc, inflated, build, filename, mime in specs:
        path: Path = cache_dir() / f"{name}-{inflated}.bin"
        if path.exists():
            data = path.read_bytes()
        else:
            log(f"bombs: building {desc}")
            data = build(inflated)
            path.write_bytes(data)
        message = attachment_message(data, filename, mime, f"bench: {name}")
        out.append((name, desc, inflated, message))
    return out
