"""One ``serve`` per data_dir: an exclusive ``flock`` on ``data_dir/mailgate.lock``.

A second ``serve`` on the same data_dir would run spool recovery and delete the first
one's messages in progress, and two queue runners would deliver the same entries twice.
The kernel drops the lock when the holder exits, however it exits, so a crash never
leaves a stale lock behind; the file itself stays, holding the last holder's PID.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE_NAME = "mailgate.lock"


class DataLockError(Exception):
    """The data_dir cannot be locked; the message is the one-line reason for the operator."""


class DataDirInUse(DataLockError):
    """Another process holds the lock; ``pid`` is the holder's, when it wrote one."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"mailgate PID {pid}" if pid is not None else "another mailgate process"
        super().__init__(f"data_dir {data_dir} is in use by {holder}; stop it first")
        self.data_dir = data_dir
        self.pid = pid


class DataLock:
    """Holds ``data_dir/mailgate.lock`` from :meth:`acquire` (or ``with``) to :meth:`release`.

    The data_dir must exist: the lock never creates it, so a mistyped data_dir is
    reported by whoever checks the directory database, not papered over here.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.path = self.data_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting, or raise :class:`DataLockError`."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise DataLockError(f"data_dir {self.data_dir} does not exist") from None
        except OSError as exc:
            raise DataLockError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirInUse(self.data_dir, pid) from None
        except OSError as exc:
            os.close(fd)
            raise DataLockError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (emptying the PID first, while still holding it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def fileno(self) -> int:
        """The locked descriptor: a child that inherits it keeps the lock held until it
        exits too (flock belongs to the open file, not the process)."""
        if self._fd is None:
            raise DataLockError(f"{self.path} is not locked")
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DataLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The PID the holder wrote, or None (it may not have written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
