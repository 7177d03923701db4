"""delivery.tls against real TLS next hops (aiosmtpd + trustme certificates).

``may`` encrypts when it can and falls back to plain text (remembered for a while) when the
handshake fails, as Postfix does; ``encrypt`` and ``verify`` never send plain text: no
STARTTLS, a failed handshake or a certificate that does not verify is a 4xx.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import DeliveryTarget
from gateway.delivery import NetworkDeliverer
from gateway.spool import Body
from tests.integration.harness import Gateway, Received, Sink

HELO = "mx.example.gov.vn"
SENDER = "an@example.gov.vn"
RCPT = "partner@other.org"
MESSAGE = b"From: an@example.gov.vn\r\nSubject: tls\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def wrong_ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("wrong-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("localhost", "127.0.0.1"))).configure_cert(context)
    return context


def tls10_only_context(ca: trustme.CA) -> ssl.SSLContext:
    """A host stuck on TLS 1.0: OpenSSL 3 and Python's client refuse it, so the handshake fails."""
    context = server_context(ca)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point of this server
        context.maximum_version = ssl.TLSVersion.TLSv1
    return context


@dataclass
class Recorder:
    """Keeps each message and whether it came over TLS (the protocol version, or None)."""

    messages: list[Received] = field(default_factory=list)
    tls: list[str | None] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        self.tls.append(ssl_object.version() if ssl_object is not None else None)
        self.messages.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 Ok: stored"


@dataclass
class NextHop:
    port: int
    recorder: Recorder
    connections: int = 0


@pytest.fixture
async def start_hop() -> AsyncIterator[Any]:
    servers: list[Any] = []

    async def start(tls_context: ssl.SSLContext | None) -> NextHop:
        recorder = Recorder()
        hop = NextHop(0, recorder)

        def factory() -> SMTP:
            hop.connections += 1
            return SMTP(recorder, hostname="hop.test", tls_context=tls_context)

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        servers.append(server)
        hop.port = server.sockets[0].getsockname()[1]
        return hop

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def deliver(
    hop: NextHop, tls: str, ca_file: str | None = None, pool: int = 2, times: int = 1
) -> list[dict]:
    deliverer = NetworkDeliverer(
        DeliveryTarget("smtp", "127.0.0.1", hop.port), HELO, 5.0, pool, tls, ca_file
    )
    try:
        return [
            await deliverer.deliver(SENDER, [RCPT], Body.from_bytes(MESSAGE)) for _ in range(times)
        ]
    finally:
        await deliverer.close()


# -- verify --------------------------------------------------------------------------------------


async def test_verify_with_the_right_ca_delivers_over_tls(
    start_hop: Any, ca: trustme.CA, ca_file: str
) -> None:
    hop = await start_hop(server_context(ca))
    (results,) = await deliver(hop, "verify", ca_file)
    assert results[RCPT].code == 250
    assert results.tls is not None and results.tls.startswith("TLSv1.")
    assert results.tls.endswith("verified")
    assert hop.recorder.tls == ["TLSv1.3"] or hop.recorder.tls == ["TLSv1.2"]


async def test_verify_with_a_wrong_ca_is_4xx_and_never_plain(
    start_hop: Any, ca: trustme.CA, wrong_ca_file: str
) -> None:
    hop = await start_hop(server_context(ca))
    (results,) = await deliver(hop, "verify", wrong_ca_file)
    reply = results[RCPT]
    assert (reply.code, reply.status) == (451, "4.4.1")
    assert "certificate verify failed" in reply.text
    assert hop.recorder.messages == []
    assert hop.connections == 1, "no second, plain-text attempt"


async def test_verify_checks_the_host_name(start_hop: Any, ca: trustme.CA, ca_file: str) -> None:
    hop = await start_hop(server_context(ca, "mail.other.org"))  # not 127.0.0.1
    (results,) = await deliver(hop, "verify", ca_file)
    assert results[RCPT].code == 451
    assert "127.0.0.1" in results[RCPT].text
    assert hop.recorder.messages == []


# -- encrypt -------------------------------------------------------------------------------------


async def test_encrypt_without_starttls_is_4xx(start_hop: Any) -> None:
    hop = await start_hop(None)
    (results,) = await deliver(hop, "encrypt")
    reply = results[RCPT]
    assert (reply.code, reply.status) == (451, "4.4.1")
    assert "STARTTLS" in reply.text
    assert hop.recorder.messages == []


async def test_encrypt_takes_an_unverified_certificate(start_hop: Any, wrong_ca_file: str) -> None:
    hop = await start_hop(server_context(trustme.CA()))
    (results,) = await deliver(hop, "encrypt")
    assert results[RCPT].code == 250
    assert hop.recorder.tls[0] in ("TLSv1.2", "TLSv1.3")


async def test_encrypt_with_a_failing_handshake_is_4xx_not_plain(
    start_hop: Any, ca: trustme.CA
) -> None:
    hop = await start_hop(tls10_only_context(ca))
    (results,) = await deliver(hop, "encrypt")
    assert results[RCPT].code == 451
    assert "TLS with" in results[RCPT].text
    assert hop.recorder.messages == [] and hop.connections == 1


# -- may -----------------------------------------------------------------------------------------


async def test_may_falls_back_to_plain_text_when_the_handshake_fails(
    start_hop: Any, ca: trustme.CA
) -> None:
    """A TLS-1.0-only host used to keep mail queued forever; now it gets it in plain text,
    and for the next while no handshake is tried (one connection per message, not two)."""
    hop = await start_hop(tls10_only_context(ca))
    first, second = await deliver(hop, "may", pool=0, times=2)
    assert first[RCPT].code == second[RCPT].code == 250
    assert hop.recorder.tls == [None, None]
    assert first.tls is not None and first.tls.startswith("none: TLS with")
    assert "plain text for 10 min" in first.tls
    assert second.tls == first.tls
    assert hop.connections == 3  # failed TLS + plain retry, then straight to plain


async def test_may_uses_tls_when_offered(start_hop: Any, ca: trustme.CA) -> None:
    hop = await start_hop(server_context(trustme.CA()))
    (results,) = await deliver(hop, "may")
    assert results[RCPT].code == 250
    assert hop.recorder.tls[0] in ("TLSv1.2", "TLSv1.3")
    assert results.tls in ("TLSv1.2", "TLSv1.3")


async def test_may_without_starttls_says_so(start_hop: Any) -> None:
    hop = await start_hop(None)
    (results,) = await deliver(hop, "may")
    assert results[RCPT].code == 250
    assert results.tls == "none: STARTTLS not offered"


async def test_none_never_starts_tls(start_hop: Any, ca: trustme.CA) -> None:
    hop = await start_hop(server_context(ca))
    (results,) = await deliver(hop, "none")
    assert results[RCPT].code == 250
    assert hop.recorder.tls == [None]


# -- through the gateway: the config keys reach the client ---------------------------------------


@dataclass
class TlsGateway(Gateway):
    delivery: dict[str, Any] = field(default_factory=dict)

    def sections(self) -> dict[str, dict[str, Any]]:
        sections = super().sections()
        sections["delivery"].update(self.delivery)
        return sections


class TlsSink(Sink):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context

    def start(self) -> TlsSink:
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="tls-sink.test",
            tls_context=self.context,
        )
        self.controller.start()
        return self


@pytest.fixture
def tls_sink(ca: trustme.CA) -> Iterator[TlsSink]:
    server = TlsSink(server_context(ca)).start()
    yield server
    server.stop()


@pytest.mark.parametrize("right_ca", [True, False])
def test_gateway_local_tls_verify(
    tmp_path: Path,
    tls_sink: TlsSink,
    sink: Sink,
    ca_file: str,
    wrong_ca_file: str,
    right_ca: bool,
) -> None:
    delivery = {"local_tls": "verify", "tls_ca_file": ca_file if right_ca else wrong_ca_file}
    gateway = TlsGateway(tmp_path, tls_sink.url, sink.url, delivery=delivery).start()
    try:
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail("a@other.org")
            client.rcpt("bob@example.gov.vn")
            code, _ = client.data(MESSAGE)
        if right_ca:
            assert code == 250
            assert [m.recipients for m in tls_sink.wait_messages(1)] == [["bob@example.gov.vn"]]
        else:
            assert code == 451
            event = gateway.wait_event("deferred")
            assert "certificate verify failed" in event["reason"]
            assert tls_sink.messages == []
    finally:
        gateway.stop()
