"""The embedded mail store: one Maildir per mailbox under ``ROOT/DOMAIN/LOCALPART/``.

Each message is written once to ``tmp/`` of the first mailbox, fsynced, then
hard-linked into ``new/`` of every recipient and the folders fsynced: a reader
never sees a half-written file and a crash never leaves a delivered-looking one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.smtp.replies import BAD_MAILBOX_NAME, MAILDIR_DELIVERED, Reply
from gateway.spool import Body, fsync_dir

_sequence = itertools.count()


def mailbox_folder(root: Path, address: str) -> Path | None:
    """``ROOT/domain/localpart`` (lower case), or None for names that could escape ROOT."""
    local, _, domain = address.lower().rpartition("@")
    for part in (local, domain):
        if not part or part.startswith(".") or "/" in part or "\x00" in part:
            return None
    return root / domain / local


def _unique_name(size: int) -> str:
    now = time.time()
    seconds, micros = int(now), int((now % 1) * 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{seconds}.M{micros}P{os.getpid()}Q{next(_sequence)}.{host},S={size}"


class MaildirDeliverer:
    """Delivers into Maildirs under ``root``; file I/O runs in a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hop = f"maildir:{root}"

    async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        return await asyncio.to_thread(self._deliver, sender, recipients, body)

    def _deliver(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        results: dict[str, Reply] = {}
        folders: dict[str, Path] = {}
        for recipient in recipients:
            folder = mailbox_folder(self.root, recipient)
            if folder is None:
                results[recipient] = BAD_MAILBOX_NAME
            else:
                folders[recipient] = folder
        if not folders:
            return results
        prefix = f"Return-Path: <{sender}>\r\n".encode()
        size = len(prefix) + body.size
        name = _unique_name(size)
        first = next(iter(folders.values()))
        try:
            for folder in set(folders.values()):
                for sub in ("tmp", "new", "cur"):
                    (folder / sub).mkdir(parents=True, exist_ok=True)
            staged = first / "tmp" / name
            with staged.open("xb") as handle:
                handle.write(prefix)
                for chunk in body.line_chunks():
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            for folder in set(folders.values()):
                os.link(staged, folder / "new" / name)
                fsync_dir(folder / "new")
            staged.unlink()
        except OSError as exc:
            failure = Reply(451, "4.3.0", f"Maildir write failed: {exc.strerror}")
            return results | dict.fromkeys(folders, failure)
        return results | dict.fromkeys(folders, MAILDIR_DELIVERED)

    async def close(self) -> None:
        """Nothing held open."""
