"""A private Dovecot 2.3 (LMTP + IMAP on loopback) for integration tests.

The gateway delivers over LMTP and proxies IMAP, so tests need a real Dovecot they can
start and throw away without touching the distro's instance (/etc/dovecot, /run/dovecot).
`PrivateDovecot` writes its own config, runs `dovecot -F` as a plain child process and
picks free loopback ports, so several instances can run side by side.

Layout: `workdir` keeps what a person reads after a failure (dovecot.conf, dovecot.log,
dovecot.stderr and, after `stop()`, the mail tree in `workdir/mail`). Sockets, passwd
files and the live mail tree sit in a short private directory under the system temp dir
(`runtime_dir`) because:

- Unix socket paths are limited to 107 bytes and pytest's `tmp_path` is often longer;
- as root, Dovecot reads the passwd files as `dovecot` and touches mail as the unprivileged
  mail user, and pytest's `/tmp/pytest-of-root` is mode 0700, so those users could not
  even traverse into `tmp_path` (and pytest resets that mode when another session starts).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import grp
import imaplib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"

_LIVE: set[PrivateDovecot] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Stop instances a crashed or careless test left running, so no Dovecot outlives us."""
    for instance in list(_LIVE):
        with contextlib.suppress(Exception):
            instance.stop()


class DovecotError(RuntimeError):
    """Dovecot did not start (the message carries the tail of its logs)."""


def _dovecot_binary() -> str:
    """Find `dovecot`; /usr/sbin is not on an ordinary user's PATH."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise DovecotError("dovecot not found: install dovecot-imapd and dovecot-lmtpd")
    return found


def _free_port() -> int:
    """Ask the kernel for a free loopback port (racy; `start()` retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _greets(port: int, prefix: bytes, marker: bytes) -> bool:
    """True once our Dovecot's server answers on `port`.

    The master binds the ports itself and forks servers lazily, so an accepted connection
    proves little; the banner proves the service is up, and the instance's own marker in
    it proves that no other test's server took the port while Dovecot failed to bind it.
    """
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.settimeout(2)
            banner = sock.recv(1024)
    except OSError:
        return False
    return banner.startswith(prefix) and marker in banner


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(missing)"


def _check_field(kind: str, value: str) -> None:
    """passwd-file lines are colon separated: refuse values that would corrupt them."""
    if not value or any(ch in value for ch in ":\r\n\0"):
        raise ValueError(f"{kind} must be non-empty without ':' or line breaks: {value!r}")


def _passwd_line(user: str, password: str) -> str:
    # PLAIN.b64 lets any password through, including spaces and '#'.
    encoded = base64.b64encode(password.encode()).decode()
    return f"{user}:{{PLAIN.b64}}{encoded}::::::\n"


class PrivateDovecot:
    """A throwaway Dovecot serving LMTP and plaintext IMAP on 127.0.0.1.

    Users are full addresses (`alice@example.gov.vn`); mail goes to a Maildir per user.
    A master user lets a proxy log in as `user*master_user` with `master_password`.
    As root, mail belongs to `mail_user` (default `dovecot`); otherwise to the caller.
    """

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str],
        *,
        master_user: str = "gateway",
        master_password: str | None = None,
        mail_user: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.users: dict[str, str] = {}
        for address, password in users.items():
            _check_field("address", address)
            _check_field("password", password)
            self.users[address.lower()] = password
        _check_field("master_user", master_user)
        self.master_user = master_user
        self.master_password = master_password or secrets.token_urlsafe(18)
        _check_field("master_password", self.master_password)
        self.start_timeout = start_timeout
        self.lmtp_port = 0
        self.imap_port = 0
        self.host = HOST
        self.instance_name = f"mailgate-test-{secrets.token_hex(4)}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.runtime_dir: Path | None = None

        self._root = os.geteuid() == 0
        # Dovecot will not touch mail as root, and `dovecot` exists wherever it is installed;
        # without root nothing can change uid, so every process runs as us.
        entry = pwd.getpwnam(mail_user or "dovecot") if self._root else pwd.getpwuid(os.geteuid())
        self.mail_uid = entry.pw_uid
        self.mail_gid = entry.pw_gid
        self.mail_user = entry.pw_name

        self.config_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.stderr_path = self.workdir / "dovecot.stderr"

    # -- paths inside the runtime dir ---------------------------------------------------

    def _rt(self, name: str) -> Path:
        if self.runtime_dir is None:
            raise DovecotError("not started")
        return self.runtime_dir / name

    @property
    def mail_root(self) -> Path:
        """The Maildirs, `<mail_root>/<domain>/<local part>/Maildir`, running or stopped."""
        return self.workdir / "mail"

    @property
    def lmtp_socket(self) -> Path:
        """LMTP's unix listener: Dovecot's built-in default one, `<base_dir>/lmtp` (mode 0666),
        what a distro install serves as /run/dovecot/lmtp."""
        return self._rt("run") / "lmtp"

    def maildir(self, address: str) -> Path:
        """The Maildir `address` delivers to (for tests that inspect files)."""
        local, _, domain = address.lower().partition("@")
        return self.mail_root / domain / local / "Maildir"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> PrivateDovecot:
        """Write the config, start Dovecot and wait until LMTP and IMAP greet."""
        if self._proc is not None:
            raise DovecotError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_runtime_dir()
        self._write_passwd_files()
        last_error: DovecotError | None = None
        for _attempt in range(3):
            self.lmtp_port, self.imap_port = _free_port(), _free_port()
            while self.imap_port == self.lmtp_port:
                self.imap_port = _free_port()
            self._write_config()
            try:
                self._spawn_and_wait()
                _LIVE.add(self)
                return self
            except DovecotError as exc:
                last_error = exc
                self._terminate()
                # Another process took a port between our probe and Dovecot's bind: retry.
                if "Address already in use" not in str(exc):
                    break
        self._cleanup_runtime()
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop Dovecot (SIGTERM, then SIGKILL) and keep the mail tree in `workdir/mail`."""
        _LIVE.discard(self)
        self._terminate()
        self._cleanup_runtime()

    def __enter__(self) -> PrivateDovecot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- users ----------------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        """Add or change a user while running; Dovecot rereads passwd-file, no reload.

        Dovecot checks the file at most once per second (and compares whole-second
        mtimes), so this returns only after the next second starts: the next login or
        delivery is then sure to see the change. Up to 1 s; free before `start()`.
        """
        _check_field("address", address)
        _check_field("password", password)
        self.users[address.lower()] = password
        if self.runtime_dir is not None:
            self._write_passwd_files()
            time.sleep(1.02 - time.time() % 1)

    # -- reading mail back -----------------------------------------------------------------

    def fetch_messages(self, address: str, password: str, mailbox: str = "INBOX") -> list[bytes]:
        """Return the raw RFC822 bytes of every message in `mailbox`, in UID order."""
        with imaplib.IMAP4(self.host, self.imap_port, timeout=10) as imap:
            imap.login(address, password)
            typ, data = imap.select(mailbox, readonly=True)
            if typ != "OK":
                raise DovecotError(f"SELECT {mailbox} failed: {data!r}")
            typ, data = imap.uid("SEARCH", "ALL")
            if typ != "OK":
                raise DovecotError(f"UID SEARCH failed: {data!r}")
            uids = data[0].split() if data and data[0] else []
            messages: list[bytes] = []
            for uid in uids:
                typ, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                if typ != "OK":
                    raise DovecotError(f"UID FETCH {uid!r} failed: {parts!r}")
                literals = [p[1] for p in parts if isinstance(p, tuple)]
                if len(literals) != 1:
                    raise DovecotError(f"unexpected FETCH answer for UID {uid!r}: {parts!r}")
                messages.append(literals[0])
            imap.logout()
        return messages

    # -- internals --------------------------------------------------------------------------

    def _make_runtime_dir(self) -> None:
        # mkdtemp makes it 0700; the mail user and Dovecot's internal user must traverse it.
        runtime = Path(tempfile.mkdtemp(prefix="dovecot-", dir=self._runtime_parent()))
        runtime.chmod(0o755)
        self.runtime_dir = runtime
        for name in ("run", "state"):
            (runtime / name).mkdir(mode=0o755)
        link = self.workdir / "mail"
        if link.is_symlink():
            link.unlink()
        if link.is_dir():
            # Restarted in the same workdir: the mail of the previous run stays.
            shutil.move(link, runtime / "mail")
        else:
            (runtime / "mail").mkdir(mode=0o755)
            if self._root:
                os.chown(runtime / "mail", self.mail_uid, self.mail_gid)
        link.symlink_to(runtime / "mail")

    def _runtime_parent(self) -> str:
        """The temp dir, unless it is private (e.g. TMPDIR=~/tmp): then /tmp."""
        parent = tempfile.gettempdir()
        if self._root and (os.stat(parent).st_mode & 0o001) == 0:
            return "/tmp"
        return parent

    def _write_passwd_files(self) -> None:
        users = "".join(_passwd_line(user, pw) for user, pw in self.users.items())
        self._replace(self._rt("users"), users)
        master = _passwd_line(self.master_user, self.master_password)
        self._replace(self._rt("master-users"), master)

    def _replace(self, path: Path, text: str) -> None:
        """Atomically replace a passwd file so Dovecot never reads half of it.

        Dovecot reloads a passwd-file when its mtime (whole seconds) or size changes; a
        same-size rewrite within one second would go unnoticed, so push the mtime forward.
        """
        old_mtime = int(path.stat().st_mtime) if path.exists() else None
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        # Dovecot's auth process runs as its internal user and must read it.
        if self._root:
            tmp.chmod(0o640)
            os.chown(tmp, 0, grp.getgrnam("dovecot").gr_gid)
        else:
            tmp.chmod(0o600)
        new_mtime = int(tmp.stat().st_mtime)
        if old_mtime is not None and new_mtime <= old_mtime:
            os.utime(tmp, (old_mtime + 1, old_mtime + 1))
        tmp.replace(path)

    def _write_config(self) -> None:
        if self._root:
            users = "default_internal_user = dovecot\ndefault_login_user = dovenull\n"
        else:
            me = self.mail_user
            group = grp.getgrgid(self.mail_gid).gr_name
            users = (
                f"default_internal_user = {me}\ndefault_internal_group = {group}\n"
                f"default_login_user = {me}\n"
            )
        chroots = "" if self._root else _NON_ROOT_SERVICES
        text = _CONFIG.format(
            name=self.instance_name,
            base_dir=self._rt("run"),
            state_dir=self._rt("state"),
            log=self.log_path,
            mail_root=self._rt("mail"),
            users_file=self._rt("users"),
            master_file=self._rt("master-users"),
            uid=self.mail_uid,
            gid=self.mail_gid,
            users=users,
            imap_port=self.imap_port,
            lmtp_port=self.lmtp_port,
            host=HOST,
            extra=chroots,
        )
        self.config_path.write_text(text)

    def _spawn_and_wait(self) -> None:
        with self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                [_dovecot_binary(), "-c", str(self.config_path), "-F"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                # Its own process group, so a stuck instance can be killed with its children.
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._failure(f"dovecot exited with status {self._proc.returncode}")
            marker = self.instance_name.encode()
            if _greets(self.lmtp_port, b"220 ", marker) and _greets(
                self.imap_port, b"* OK", marker
            ):
                return
            time.sleep(0.05)
        raise self._failure(f"LMTP/IMAP not accepting within {self.start_timeout:.0f}s")

    def _failure(self, what: str) -> DovecotError:
        return DovecotError(
            f"{what} (config {self.config_path})\n"
            f"--- {self.stderr_path.name} ---\n{_tail(self.stderr_path)}\n"
            f"--- {self.log_path.name} ---\n{_tail(self.log_path)}"
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Dovecot's children exit when the master goes; reap any straggler in our group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _cleanup_runtime(self) -> None:
        """Move the mail into workdir for post-mortems, then drop sockets and passwd files."""
        runtime, self.runtime_dir = self.runtime_dir, None
        if runtime is None:
            return
        link = self.workdir / "mail"
        if link.is_symlink():
            link.unlink()
            with contextlib.suppress(OSError):
                shutil.move(runtime / "mail", link)
        shutil.rmtree(runtime, ignore_errors=True)


# Double braces are literal braces for str.format.
_CONFIG = """\
# Written by tests/integration/dovecot.py for one test; not the distro's config.
instance_name = {name}
# LMTP and IMAP banners name the instance, so start() knows it reached this one.
login_greeting = Dovecot ready ({name}).
base_dir = {base_dir}
state_dir = {state_dir}
protocols = imap lmtp
listen = {host}
log_path = {log}
info_log_path = {log}
auth_verbose = yes

ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Login as "alice@example.gov.vn*gateway" with the master password.
auth_master_user_separator = *
# The gateway's IMAP proxy passes the client's address in IMAP ID (x-originating-ip);
# Dovecot believes it only from trusted networks.
login_trusted_networks = {host}
# Default 2 s: every wrong-password test would wait for it (auth still answers a failure
# on its next 0.5 s timer tick; see also anvil below).
auth_failure_delay = 0

{users}
mail_uid = {uid}
mail_gid = {gid}
# System users such as dovecot (uid ~100) are below the default first_valid_uid of 500.
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:{mail_root}/%d/%n/Maildir

passdb {{
  driver = passwd-file
  args = username_format=%u {master_file}
  master = yes
  # Then look the target user up in the next passdb: no master login to unknown users.
  pass = yes
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {users_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users_file}
  default_fields = home={mail_root}/%d/%n
}}

service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# Every failed login from 127.0.0.1 would make the next one wait 4-15 s (auth penalty,
# per IP, not configurable in 2.3): auth turns it off when it cannot reach this socket.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
}}
{extra}"""

# Without root there is no chroot(); these services chroot by default.
_NON_ROOT_SERVICES = """\
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
service imap-urlauth-login {
  chroot =
}
service ipc {
  chroot =
}
service old-stats {
  chroot =
}
service aggregator {
  chroot =
}
service director {
  chroot =
}
"""
