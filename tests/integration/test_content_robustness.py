"""Bombs and broken mail through the running gateway: each gets a clear answer (250 or
5xx, never a 4xx retried for ever), the session survives, other sessions keep being
served, and serve's whole process group stays under 512 MiB."""

from __future__ import annotations

import contextlib
import smtplib
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import psutil
import pytest

from gateway.smtp import replies
from tests.integration.harness import Gateway, Sink
from tests.unit.test_mime_extract import deflated_member

CORPUS = Path(__file__).resolve().parents[1] / "data" / "mime" / "corpus"
MIB = 1024 * 1024


def with_attachment(name: str, data: bytes) -> bytes:
    mail = EmailMessage()
    mail["From"] = "a@other.org"
    mail["To"] = "bob@example.gov.vn"
    mail["Subject"] = "attachment"
    mail.set_content("see attached")
    mail.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


class PeakRSS:
    """Samples the resident memory of serve and all its children (worker processes)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just ended
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_bombs_are_refused_while_other_mail_flows(gateway: Gateway, sink: Sink) -> None:
    assert gateway.process is not None
    docx_bomb = deflated_member(
        "word/document.xml",
        b'<w:document xmlns:w="urn:w"><w:body><w:p><w:r><w:t>x</w:t></w:r></w:p>',
        b" ",
        200 * MIB,
        b"</w:body></w:document>",
    )
    zip_bomb = deflated_member("zeros.bin", b"", b"\0", 500 * MIB, b"")
    answers: dict[str, tuple[int, bytes]] = {}

    def send(name: str, data: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=60) as client:
            client.ehlo("client.test")
            client.mail("a@other.org")
            client.rcpt("bob@example.gov.vn")
            answers[name] = client.data(data)
            answers[name + " noop"] = client.noop()

    with PeakRSS(gateway.process.pid) as rss:
        threads = [
            threading.Thread(target=send, args=(name, with_attachment(name, data)))
            for name, data in (("bao-cao.docx", docx_bomb), ("zeros.zip", zip_bomb))
        ]
        for thread in threads:
            thread.start()
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=60) as other:
            other.sendmail("a@other.org", ["bob@example.gov.vn"], b"Subject: hi\r\n\r\nhi\r\n")
        for thread in threads:
            thread.join(60)
    for name in ("bao-cao.docx", "zeros.zip"):
        code, text = answers[name]
        assert (code, text.decode()[:5]) == (replies.CANNOT_INSPECT.code, "5.6.0"), answers
        assert "[inspection]" in text.decode() and name in text.decode()
        assert answers[name + " noop"][0] == 250  # the session survives
    assert len(sink.wait_messages(1)) == 1  # and the other session was served
    assert rss.peak < 512 * MIB, f"serve's process group peaked at {rss.peak / MIB:.0f} MiB"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_real_broken_mail_gets_a_clear_answer(gateway: Gateway, path: Path) -> None:
    """A public corpus of malformed messages (tests/data/mime/corpus/README.md)."""
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("a@other.org", ["BODY=8BITMIME"])
        client.rcpt("bob@example.gov.vn")
        code, text = client.data(raw)
        assert code == 250 or 500 <= code < 600, (code, text)
        assert client.noop()[0] == 250
    assert "Traceback" not in gateway.serve_log()
