"""Shared by the unit tests: a minimal valid config and a scripted next hop."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.mime.model import Inspection, Scan
from gateway.pipeline import MessageContext
from gateway.smtp.replies import Reply
from gateway.spool import Body

OK_250 = Reply(250, "2.0.0", "ok")

MINIMAL_CONFIG: dict[str, Any] = {
    "gateway": {
        "hostname": "mail.example.gov.vn",
        "domains": ["example.gov.vn"],
        "data_dir": "var",
    },
    "smtp": {
        "inbound_listen": "127.0.0.1:2525",
        "submission_listen": "127.0.0.1:5870",
        "require_tls_for_auth": False,
    },
    "delivery": {"local": "maildir:var/mail", "outbound": "smtp://127.0.0.1:2526"},
    "log": {"dir": "var/log"},
}


def minimal_toml(**log: str) -> str:
    """MINIMAL_CONFIG as a TOML file's text, with extra ``[log]`` keys (for CLI tests)."""
    lines = []
    for section, values in {**MINIMAL_CONFIG, "log": {**MINIMAL_CONFIG["log"], **log}}.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def make_config(tmp_path: Path) -> Config:
    """The minimal config, its relative paths under ``tmp_path``."""
    return parse_config(copy.deepcopy(MINIMAL_CONFIG), tmp_path / "gw.toml")


class FakeDeliverer:
    """A next hop that answers per recipient from a table (default: ``default``) and
    records each call as (sender, recipients) and the body bytes it was given."""

    def __init__(self, hop: str, default: Reply = OK_250) -> None:
        self.hop = hop
        self.default = default
        self.answers: dict[str, Reply] = {}
        self.calls: list[tuple[str, list[str]]] = []
        self.bodies: list[bytes] = []

    async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        self.calls.append((sender, list(recipients)))
        self.bodies.append(body.read())
        return {r: self.answers.get(r, self.default) for r in recipients}

    async def close(self) -> None:
        """Nothing held open."""


PLAIN_BODY = b"Subject: x\r\n\r\nbody\r\n"


def message_context(
    *, body: Body | None = None, inspection: Inspection | None = None, **fields: Any
) -> MessageContext:
    """A MessageContext as the SMTP handler builds one, for calling a filter directly:
    inbound mail from a foreign sender to one local recipient unless ``fields`` say
    otherwise; ``inspection`` is what the one MIME parse will answer."""
    values: dict[str, Any] = {
        "queue_id": "Q1",
        "session_id": "s1",
        "listener": "inbound",
        "client": "192.0.2.1",
        "user": None,
        "sender": "an@example.com",
        "recipients": ["binh@example.gov.vn"],
        "body": body or Body.from_bytes(PLAIN_BODY),
        "received_at": datetime.now(UTC),
    }
    if inspection is not None:

        async def inspect(_: Body, scans: tuple[Scan, ...] = ()) -> Inspection:
            return inspection

        values["inspector"] = inspect
    return MessageContext(**(values | fields))
