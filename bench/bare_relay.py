"""Bare aiosmtpd relay used as the benchmark baseline.

Every message accepted in DATA is forwarded with ``aiosmtplib.send`` over a new connection
to the upstream server, and the upstream reply is returned to the client. Nothing else:
no queue, no filters, no logging.

Run: ``python bench/bare_relay.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:SINKPORT``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

HOSTNAME = "bare-relay.local"


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` into its parts."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host, int(port)


class RelayHandler:
    """aiosmtpd handler that forwards each message upstream, one connection per message."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Forward the message and return the upstream reply."""
        content = envelope.original_content or envelope.content or b""
        try:
            _errors, reply = await aiosmtplib.send(
                content,
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                hostname=self.upstream_host,
                port=self.upstream_port,
                local_hostname=HOSTNAME,
                start_tls=False,
                timeout=60,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"451 4.4.1 upstream failed: {type(exc).__name__}"
        return f"250 {reply}"


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler = RelayHandler(*upstream)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, ident="bare-relay"),
        host=listen[0],
        port=listen[1],
        backlog=1024,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare relay listening on {listen[0]}:{listen[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the relay (uvloop if importable)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=parse_hostport, required=True)
    parser.add_argument("--upstream", type=parse_hostport, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen, args.upstream))
    else:
        uvloop.run(serve(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
