"""What a part really is, from its first bytes: a sender chooses the declared type and
the file name, so rules that care about the content (attachment_type, text extraction)
look at the magic numbers instead.

Zip containers are looked into (the member list only, never inflated here) to tell
OOXML and ODF documents from plain archives.
"""

from __future__ import annotations

import io
import zipfile

ZIP = "application/zip"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
OLE2 = "application/x-ole-storage"  # .doc/.xls/.ppt/.msg before 2007
PE = "application/x-msdownload"  # Windows .exe/.dll/.scr/.cpl: MZ + PE header
ELF = "application/x-executable"
MACHO = "application/x-mach-binary"
JAVA_CLASS = "application/java-vm"
SCRIPT = "text/x-script"  # a "#!" interpreter line

# (offset, magic, type); the first match wins, so longer magics come first.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", PDF),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", OLE2),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"\x7fELF", ELF),
    (0, b"\xcf\xfa\xed\xfe", MACHO),  # Mach-O 64-bit, little-endian (x86_64, arm64)
    (0, b"\xce\xfa\xed\xfe", MACHO),  # Mach-O 32-bit, little-endian
    (0, b"\xfe\xed\xfa\xcf", MACHO),  # Mach-O 64-bit, big-endian
    (0, b"\xfe\xed\xfa\xce", MACHO),  # Mach-O 32-bit, big-endian
    (0, b"#!/", SCRIPT),  # "#!/bin/sh", "#!/usr/bin/env python": runs when made executable
    (0, b"{\\rtf", "application/rtf"),
    (257, b"ustar", "application/x-tar"),
    (0, b"PK\x03\x04", ZIP),
    (0, b"PK\x05\x06", ZIP),  # an empty archive
)

# ODF keeps its type in an uncompressed first member called "mimetype".
_ODF = {ODT, ODS, "application/vnd.oasis.opendocument.presentation"}


def is_utf8(data: bytes) -> bool:
    """Whether 8-bit text is UTF-8 (else its charset is unknown): what a part that
    declares none is labelled with when the gateway re-encodes it."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def sniff(data: bytes) -> str | None:
    """The type the bytes' magic number says, or None if it says nothing we know."""
    if data.startswith(b"MZ") and _is_pe(data):
        return PE
    if data.startswith(b"\xca\xfe\xba\xbe") and len(data) >= 8:
        # A universal (fat) Mach-O counts its architectures here (a handful); a Java
        # class file has its version, 45 or more, in the same bytes.
        return MACHO if int.from_bytes(data[4:8], "big") < 45 else JAVA_CLASS
    for offset, magic, kind in _MAGIC:
        if data.startswith(magic, offset):
            return _zip_kind(data) if kind == ZIP else kind
    return None


def _is_pe(data: bytes) -> bool:
    """A Windows executable: "MZ" alone also starts ordinary text, so the PE header
    the DOS stub points at must be there too."""
    if len(data) < 64:
        return False
    offset = int.from_bytes(data[60:64], "little")
    return data.startswith(b"PE\x00\x00", offset)


def _zip_kind(data: bytes) -> str:
    """OOXML / ODF / plain zip, from the central directory alone (nothing inflated
    except ODF's one stored ``mimetype`` member, at most 100 bytes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "mimetype" in names:
                info = archive.getinfo("mimetype")
                if info.compress_type == zipfile.ZIP_STORED and info.file_size <= 100:
                    declared = archive.read(info).decode("ascii", "replace").strip()
                    if declared in _ODF:
                        return declared
            if "[Content_Types].xml" in names:
                if "word/document.xml" in names:
                    return DOCX
                if "xl/workbook.xml" in names:
                    return XLSX
                if "ppt/presentation.xml" in names:
                    return PPTX
    except Exception:  # a broken archive is still an archive; extraction says why
        pass
    return ZIP
