"""A private clamd (Debian's clamav-daemon) for tests: its own config, its own one-line
signature database, TCP on a free loopback port and a unix socket, run in the foreground
as a child process and thrown away afterwards.

No downloads: clamav-daemon installs without signatures and clamd refuses to start with
an empty database, so the database is one ``local.ndb`` line matching the EICAR test
string (BASELINES.md "ClamAV offline"). The string is assembled here from two halves, so
no file in the repository is itself a "virus" to a scanner that reads the checkout.

``StreamMaxLength`` is 40M (Debian's packaged clamd.conf says 25M, clamd's built-in
default 100M), enough for 20 MiB of decoded attachments per part; a test can lower it to
see the size-limit answer.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
EICAR = (
    b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR"  # first half
    + b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
)
SIGNATURE = "Local.EICAR"

_LIVE: set[PrivateClamd] = set()


@atexit.register
def _stop_leftovers() -> None:
    for instance in list(_LIVE):
        with contextlib.suppress(Exception):
            instance.stop()


class ClamdError(RuntimeError):
    """clamd did not start (the message carries the tail of its log)."""


def _clamd_binary() -> str:
    found = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ClamdError("clamd not found: install clamav-daemon (scripts/test does)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def ping(address: tuple[str, int] | str, timeout: float = 1.0) -> bool:
    """True when a clamd answers PING with PONG at ``address`` (TCP pair or socket path)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"zPING\0")
            return sock.recv(64).rstrip(b"\0\n") == b"PONG"
    except OSError:
        return False


class PrivateClamd:
    """``clamd -c <own config>`` with the EICAR signature, on TCP and a unix socket."""

    def __init__(self, workdir: Path, *, stream_max_length: str = "40M") -> None:
        self.workdir = workdir
        self.stream_max_length = stream_max_length
        self.process: subprocess.Popen[bytes] | None = None
        # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="clamd-"))
        self.socket_path = self.runtime_dir / "clamd.sock"
        self.config_path = workdir / "clamd.conf"
        self.log_path = workdir / "clamd.log"
        self.port = 0

    @property
    def tcp_address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    def write_config(self) -> None:
        database = self.runtime_dir / "db"
        database.mkdir(exist_ok=True)
        (database / "local.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
        scratch = self.runtime_dir / "tmp"
        scratch.mkdir(exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    "Foreground yes",
                    f"LogFile {self.log_path}",
                    "LogTime yes",
                    f"LocalSocket {self.socket_path}",
                    "FixStaleSocket yes",
                    f"TCPSocket {self.port}",
                    f"TCPAddr {HOST}",
                    f"DatabaseDirectory {database}",
                    f"TemporaryDirectory {scratch}",
                    f"PidFile {self.runtime_dir / 'clamd.pid'}",
                    f"StreamMaxLength {self.stream_max_length}",
                    "MaxFileSize 64M",
                    "MaxScanSize 128M",
                    "ScanArchive yes",
                    "ScanMail yes",
                    "SelfCheck 0",
                    "MaxThreads 4",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 60.0) -> PrivateClamd:
        self.port = _free_port()
        self.write_config()
        self.process = subprocess.Popen(
            [_clamd_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "clamd.stderr").open("ab"),
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClamdError(f"clamd exited with {self.process.returncode}:\n{self.logs()}")
            if ping((HOST, self.port)) and ping(str(self.socket_path)):
                return self
            time.sleep(0.05)
        self.stop()
        raise ClamdError(f"clamd did not answer within {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        """Stop clamd and wait until neither address answers."""
        _LIVE.discard(self)
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def logs(self) -> str:
        texts = []
        for path in (self.log_path, self.workdir / "clamd.stderr"):
            with contextlib.suppress(OSError):
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(texts)


class SilentClamd:
    """A TCP listener that accepts but never reads or answers: a hung clamd."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind((HOST, 0))
        self.server.listen(16)
        self.port = int(self.server.getsockname()[1])
        self.connections: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self._stop = True
        self.server.close()
        for conn in self.connections:
            conn.close()
