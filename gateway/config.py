"""TOML config -> frozen dataclasses. All validation lives here.

Every mistake is collected in one pass and named by its key with the fix, so an
operator sees the whole list at once; unknown keys are errors because a typo
must never silently switch a policy off.
"""

from __future__ import annotations

import difflib
import errno
import socket
import ssl
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gateway.directory.passwords import Argon2Params

DEFAULT_CONFIG = Path("config/gateway.toml")


class ConfigError(Exception):
    """A config that must not be used; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Where a class of recipients goes: ``maildir:PATH``, ``lmtp://H:P``, ``smtp://H:P`` or
    ``lmtp:unix:PATH`` (Postfix's notation for Dovecot's ``/run/dovecot/lmtp``)."""

    scheme: str
    host: str = ""
    port: int = 0
    path: Path | None = None  # the Maildir root, or the LMTP unix socket

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        if self.path is not None:
            return f"{self.scheme}:unix:{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


# smtp.processes: the first serves everything, the others only SMTP (gateway/processes.py).
PROCESSES_RANGE = (1, 16)

# delivery.tls levels, as Postfix's smtp_tls_security_level.
TLS_LEVELS = ("may", "encrypt", "verify", "none")


def _opt(kind: str, default: Any = MISSING, doc: str = "") -> Any:
    """A config field: ``kind`` picks the parser, ``doc`` feeds error hints."""
    meta = {"kind": kind, "doc": doc}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class GatewaySection:
    hostname: str = _opt("hostname")
    domains: tuple[str, ...] = _opt("domains")
    data_dir: Path = _opt("path")


@dataclass(frozen=True, slots=True)
class SmtpSection:
    inbound_listen: ListenAddress = _opt("listen")
    submission_listen: ListenAddress = _opt("listen")
    submission_tls_listen: ListenAddress | None = _opt("listen", None)
    require_tls_for_auth: bool = _opt("bool", True)
    tls_cert: Path | None = _opt("file", None)
    tls_key: Path | None = _opt("file", None)
    max_message_size: int = _opt("size", 31_457_280, "bytes on the wire (SIZE)")
    max_line_length: int = _opt("size", 1000, "bytes per line incl. CRLF (RFC 5321: 1000)")
    max_header_lines: int = _opt("count", 1000)
    max_header_bytes: int = _opt("size", 1_048_576)
    max_recipients: int = _opt("count", 1000)
    idle_timeout: float = _opt("seconds", 300.0)
    transaction_timeout: float = _opt("seconds", 900.0)
    max_connections: int = _opt("count", 500, "sessions at once, all listeners together")
    max_connections_per_listener: int = _opt(
        "count", 400, "sessions at once on one listener (keep below max_connections)"
    )
    max_connections_per_client: int = _opt("count", 50)
    max_errors: int = _opt("count", 20, "protocol errors before the session is closed")
    spill_threshold: int = _opt("size", 1_048_576, "bytes kept in memory before DATA spills")
    processes: int = _opt("processes", 1, "processes serving the SMTP listeners")


@dataclass(frozen=True, slots=True)
class ImapSection:
    listen: ListenAddress = _opt("listen")
    upstream: ListenAddress = _opt("listen")
    upstream_master_user: str = _opt("str")
    upstream_master_password_file: Path = _opt("secret_file")
    listen_tls: ListenAddress | None = _opt("listen", None, "implicit-TLS IMAPS")
    require_tls_for_auth: bool = _opt("bool", True)
    refuse_must_change: bool = _opt("bool", False, "refuse logins whose password must change")
    max_connections: int = _opt("count", 2000)
    max_connections_per_client: int = _opt("count", 100)
    login_timeout: float = _opt("seconds", 60.0, "to log in after connecting")
    upstream_timeout: float = _opt("seconds", 5.0, "to reach and log in to the store")
    max_literal: int = _opt("size", 4096, "bytes of a literal before login")
    check_interval: float = _opt("seconds", 2.0, "how often open sessions' mailboxes are checked")


@dataclass(frozen=True, slots=True)
class DeliverySection:
    local: DeliveryTarget = _opt("target")
    outbound: DeliveryTarget = _opt("target")
    timeout: float = _opt("seconds", 120.0, "per SMTP/LMTP command")
    connections_per_host: int = _opt("count", 8, "idle connections kept per next hop")
    tls: str = _opt("tls_level", "may", "STARTTLS policy for smtp:// next hops")
    local_tls: str | None = _opt("tls_level", None, "delivery.tls for delivery.local only")
    outbound_tls: str | None = _opt("tls_level", None, "delivery.tls for delivery.outbound only")
    tls_ca_file: Path | None = _opt("ca_file", None, "PEM CAs for verify; default: system store")


@dataclass(frozen=True, slots=True)
class QueueSection:
    lifetime_hours: float = _opt("hours", 120.0, "then the sender gets a bounce")
    retry_min_seconds: float = _opt("seconds", 60.0)
    retry_max_seconds: float = _opt("seconds", 3600.0)
    scan_interval_seconds: float = _opt("seconds", 5.0)


@dataclass(frozen=True, slots=True)
class AuthSection:
    max_failures_per_address: int = _opt("count", 5, "failed logins before the address waits")
    max_failures_per_client: int = _opt("count", 20, "failed logins before the client waits")
    failure_window_seconds: float = _opt("seconds", 900.0)
    cache_ttl_seconds: float = _opt("seconds", 3600.0, "how long a verified login is remembered")
    cache_size: int = _opt("count_or_zero", 50_000, "logins remembered at most; 0: no cache")
    hash_workers: int | None = _opt("count", None, "argon2 verifications at once; default: cores")
    argon2_memory_kib: int = _opt("count", 65536, "KiB per verification (RFC 9106: 65536)")
    argon2_time_cost: int = _opt("count", 3, "passes over the memory (RFC 9106: 3)")
    argon2_parallelism: int = _opt("count", 4, "lanes (RFC 9106: 4)")
    refuse_must_change: bool = _opt(
        "bool", False, "refuse SMTP AUTH and IMAP logins while a password must change"
    )

    def argon2(self) -> Argon2Params:
        return Argon2Params(self.argon2_memory_kib, self.argon2_time_cost, self.argon2_parallelism)


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where ``[log] syslog`` sends: a unix datagram socket or a host over UDP/TCP."""

    transport: str  # "unix", "udp" or "tcp"
    address: str  # the socket path, or the host
    port: int = 0

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.address}"
        return f"{self.transport}:{ListenAddress(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class WebSection:
    """The self-service password page (MOST 15.2, 17.4; MIC 7.3.c): HTTPS on ``listen``
    with smtp.tls_cert/tls_key, the page at /password."""

    listen: ListenAddress = _opt("listen")
    public_url: str | None = _opt("https_url", None, "the page's address as users reach it")
    form_seconds: float = _opt("seconds", 600.0, "how long a form (and its cookie) stays valid")
    max_request_bytes: int = _opt("size", 16384, "bytes of one request body")
    max_posts_per_client: int = _opt("count", 10, "form posts per client address per minute")

    def page_url(self, hostname: str) -> str:
        """The address users are sent to (``[ALERT]``, events, SMTP refusals)."""
        if self.public_url:
            return self.public_url
        port = "" if self.listen.port == 443 else f":{self.listen.port}"
        return f"https://{hostname}{port}/password"


@dataclass(frozen=True, slots=True)
class DkimSection:
    """``[signing.dkim]``: sign outbound mail of local domains that have a key (last)."""

    selector: str = _opt("selector")


SIGNING_CHOICES = {
    "missing_recipient_key": ("reject", "send-plain"),
    "preference": ("smime", "pgp"),
}


@dataclass(frozen=True, slots=True)
class SigningSection:
    """``[signing]`` (MOST 16.2): S/MIME or PGP signatures and encryption for local
    senders, verification results on inbound mail; DKIM in ``dkim``."""

    encrypt_subject_tags: tuple[str, ...] = _opt(
        "strings", ("[encrypt]", "[mã hóa]"), "a subject starting with one asks for encryption"
    )
    missing_recipient_key: str = _opt("str", "reject", '"reject" or "send-plain"')
    sign_outbound: bool = _opt("bool", True, "sign for senders that hold their own key")
    preference: str = _opt("str", "smime", '"smime" or "pgp": which a recipient with both gets')
    verify_inbound: bool = _opt("bool", True, "stamp Authentication-Results on inbound mail")
    decrypt_inbound: bool = _opt("bool", False, "decrypt for local recipients whose key we hold")
    dns_timeout: float = _opt("seconds", 2.0, "per DKIM key lookup; then dkim=temperror")
    dns_resolver: ListenAddress | None = _opt("listen", None, "HOST:PORT; default: the system's")
    crl_file: Path | None = _opt("file", None, "PEM or DER CRL checked for S/MIME certificates")
    smime_ca_file: Path | None = _opt(
        "file", None, "PEM CAs whose S/MIME signatures inbound are smime=pass"
    )
    gpg_timeout: float = _opt("seconds", 10.0, "per gpg call; then 451")
    dkim: DkimSection | None = None


@dataclass(frozen=True, slots=True)
class LogSection:
    dir: Path = _opt("path")
    retention_days: int = _opt("count", 183)
    # Off-box anchors of each finished day's final hash (see README, "Tamper evidence").
    timestamp_authority: str | None = _opt("url", None, "RFC 3161 time-stamping authority")
    timestamp_ca_file: Path | None = _opt("ca_file", None, "CA of the time-stamping authority")
    timestamp_timeout: float = _opt("seconds", 10.0, "for one time-stamp request")
    syslog: SyslogTarget | None = _opt("syslog", None, "unix:/dev/log, udp:HOST:PORT, tcp:...")
    syslog_events: bool = _opt("bool", False, "every event to syslog too, not only day hashes")


@dataclass(frozen=True, slots=True)
class MetricsSection:
    listen: ListenAddress = _opt("listen")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewaySection
    smtp: SmtpSection
    delivery: DeliverySection
    log: LogSection
    queue: QueueSection
    auth: AuthSection
    imap: ImapSection | None = None
    metrics: MetricsSection | None = None
    web: WebSection | None = None
    signing: SigningSection = field(default_factory=SigningSection)
    filters: Any = None  # filter_config.FiltersSection: the policy filters, in run order

    @property
    def spool_dir(self) -> Path:
        return self.gateway.data_dir / "spool"

    @property
    def password_url(self) -> str | None:
        """Where users change their password, when the page is served."""
        return self.web.page_url(self.gateway.hostname) if self.web else None

    def is_local(self, address: str) -> bool:
        """True when the address's domain is one of ours (case-insensitive)."""
        _, _, domain = address.rpartition("@")
        return domain.lower() in self.gateway.domains


_SECTIONS: dict[str, tuple[type, bool]] = {
    "gateway": (GatewaySection, True),
    "smtp": (SmtpSection, True),
    "imap": (ImapSection, False),
    "web": (WebSection, False),
    "signing": (SigningSection, False),
    "delivery": (DeliverySection, True),
    "queue": (QueueSection, False),
    "auth": (AuthSection, False),
    "log": (LogSection, True),
    "metrics": (MetricsSection, False),
}


# Sections whose absence switches a service off (rather than taking every default).
_OPTIONAL_SERVICES = ("imap", "web", "metrics")


class _Reader:
    """Parses raw TOML values by kind, noting problems instead of stopping at the first."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path)

    def parse(self, key: str, kind: str, doc: str, raw: Any) -> Any:
        parser = getattr(self, f"_{kind}")
        return parser(key, raw, doc)

    def _str(self, key: str, raw: Any, doc: str) -> Any:
        if not isinstance(raw, str) or not raw:
            self.fail(key, f"expected a non-empty string, got {raw!r}")
            return None
        return raw

    def _hostname(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is not None and (" " in value or "." not in value):
            self.fail(key, f"expected a fully qualified host name, got {raw!r}")
        return value

    def _domains(self, key: str, raw: Any, doc: str) -> Any:
        if not isinstance(raw, list) or not raw or not all(isinstance(d, str) for d in raw):
            self.fail(
                key, f'expected a non-empty list of domains, got {raw!r}; write ["example.gov.vn"]'
            )
            return ()
        bad = [d for d in raw if not d or "@" in d or " " in d or "." not in d]
        if bad:
            self.fail(key, f"not a domain: {', '.join(map(repr, bad))}")
        return tuple(d.lower().rstrip(".") for d in raw)

    def _path(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is not None and "\x00" in value:
            self.fail(key, "contains a NUL character (\\u0000); remove it")
            return None
        return None if value is None else self.path(value)

    def _file(self, key: str, raw: Any, doc: str) -> Any:
        path = self._path(key, raw, doc)
        if path is None:
            return None
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            self.fail(key, f"cannot read {path}: {exc.strerror}; fix the path or its permissions")
        return path

    def _secret_file(self, key: str, raw: Any, doc: str) -> Any:
        """A file holding a secret: it must exist and be readable by its owner only."""
        path = self._file(key, raw, doc)
        if path is None or any(p.startswith(f"{key}: ") for p in self.problems):
            return path
        mode = path.stat().st_mode & 0o777
        if mode & 0o007:
            self.fail(key, f"{path} is readable by every user (mode {mode:o}); run chmod 600 on it")
        return path

    def _bool(self, key: str, raw: Any, doc: str) -> Any:
        if not isinstance(raw, bool):
            self.fail(key, f"expected true or false, got {raw!r}")
        return raw

    def _number(self, key: str, raw: Any, unit: str, integer: bool) -> Any:
        ok = isinstance(raw, int) if integer else isinstance(raw, int | float)
        if isinstance(raw, bool) or not ok or raw <= 0:
            meant = _bytes_meant(raw) if unit == "bytes" else None
            if meant is not None:
                hint = f"; write {meant}"
            else:
                hint = f"; write a positive {'integer' if integer else 'number'} of {unit}"
            self.fail(key, f"expected a positive number ({unit}), got {raw!r}{hint}")
            return None
        return raw if integer else float(raw)

    def _size(self, key: str, raw: Any, doc: str) -> Any:
        return self._number(key, raw, "bytes", True)

    def _count(self, key: str, raw: Any, doc: str) -> Any:
        return self._number(key, raw, "items", True)

    def _count_or_zero(self, key: str, raw: Any, doc: str) -> Any:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        self.fail(key, f"expected 0 or a positive integer, got {raw!r}; write 0 for none")
        return None

    def _processes(self, key: str, raw: Any, doc: str) -> Any:
        """How many processes serve SMTP: more than the cores only adds switching."""
        low, high = PROCESSES_RANGE
        if isinstance(raw, int) and not isinstance(raw, bool) and low <= raw <= high:
            return raw
        self.fail(
            key,
            f"expected an integer from {low} to {high}, got {raw!r}; write 1 (the default)"
            " or at most the number of CPU cores",
        )
        return None

    def _seconds(self, key: str, raw: Any, doc: str) -> Any:
        return self._number(key, raw, "seconds", False)

    def _hours(self, key: str, raw: Any, doc: str) -> Any:
        return self._number(key, raw, "hours", False)

    def _strings(self, key: str, raw: Any, doc: str) -> Any:
        if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
            self.fail(key, f'expected a list of non-empty strings, got {raw!r}; e.g. ["[encrypt]"]')
            return ()
        return tuple(raw)

    def _selector(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is not None and not all(c.isalnum() or c in "-_." for c in value):
            self.fail(key, f"{raw!r} is not a DNS label; use letters, digits, - and _ (e.g. mail)")
        return value

    def _https_url(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is None:
            return None
        if not value.startswith("https://") or any(c.isspace() for c in value):
            self.fail(key, f"expected an https:// address, got {raw!r};"
                      " write e.g. \"https://mail.example.gov.vn/password\"")  # fmt: skip
        return value

    def _listen(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is None:
            return None
        address = parse_host_port(value)
        if address is None:
            self.fail(key, f'expected "HOST:PORT" with a port 1-65535, got {raw!r}')
        return address

    def _target(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is None:
            return None
        if value.startswith("maildir:"):
            rest = value.removeprefix("maildir:")
            if not rest:
                self.fail(key, 'maildir needs a folder, e.g. "maildir:var/mail"')
                return None
            return DeliveryTarget("maildir", path=self.path(rest))
        if value.startswith("lmtp:unix:"):
            return self._unix_target(key, value.removeprefix("lmtp:unix:"))
        scheme, sep, rest = value.partition("://")
        address = parse_host_port(rest.rstrip("/")) if sep else None
        if scheme not in ("lmtp", "smtp") or address is None:
            hint = ""
            if "unix" in value:
                hint = '; for a unix socket write "lmtp:unix:/run/dovecot/lmtp"'
            self.fail(
                key,
                f'expected "maildir:PATH", "lmtp://HOST:PORT", "lmtp:unix:PATH" or '
                f'"smtp://HOST:PORT", got {raw!r}{hint}',
            )
            return None
        return DeliveryTarget(scheme, address.host, address.port)

    def _unix_target(self, key: str, rest: str) -> DeliveryTarget | None:
        """LMTP over a unix socket; the socket need not exist yet (Dovecot may start later)."""
        if not rest:
            self.fail(key, 'lmtp:unix needs the socket path, e.g. "lmtp:unix:/run/dovecot/lmtp"')
            return None
        path = self.path(rest)
        if len(bytes(path)) > 107:
            self.fail(key, f"{path} is longer than a unix socket path may be (107 bytes)")
            return None
        return DeliveryTarget("lmtp", path=path)

    def _tls_level(self, key: str, raw: Any, doc: str) -> Any:
        if raw in TLS_LEVELS:
            return raw
        got = f'"{raw}"' if isinstance(raw, str) else repr(raw)
        meant = raw.strip().lower() if isinstance(raw, str) else None
        hint = f'; write "{meant}"' if meant in TLS_LEVELS else ""
        self.fail(key, f"expected one of {', '.join(TLS_LEVELS)}; got {got}{hint}")
        return None

    def _url(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest.split("/")[0]:
            self.fail(key, f"expected an http:// or https:// URL, got {raw!r}")
            return None
        return value

    def _syslog(self, key: str, raw: Any, doc: str) -> Any:
        value = self._str(key, raw, doc)
        if value is None:
            return None
        transport, _, rest = value.partition(":")
        if transport == "unix" and rest:
            return SyslogTarget("unix", str(self.path(rest)))
        address = parse_host_port(rest) if transport in ("udp", "tcp") else None
        if address is None:
            self.fail(
                key,
                f'expected "unix:/dev/log", "udp:HOST:PORT" or "tcp:HOST:PORT", got {raw!r}',
            )
            return None
        return SyslogTarget(transport, address.host, address.port)

    def _ca_file(self, key: str, raw: Any, doc: str) -> Any:
        path = self._file(key, raw, doc)
        if path is None or any(p.startswith(f"{key}: ") for p in self.problems):
            return path
        try:
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.fail(key, f"cannot load CA certificates from {path}: {exc}; give a PEM file")
        return path


_UNITS = {"": 1, "B": 1, "KB": 1024, "KIB": 1024, "MB": 1024**2, "MIB": 1024**2, "GB": 1024**3}


def _bytes_meant(raw: Any) -> int | None:
    """What "20MB"-style text most likely meant, in bytes (binary units), for the hint."""
    if not isinstance(raw, str):
        return None
    text = raw.strip().upper().replace(" ", "")
    digits = text.rstrip("KMGIB")
    try:
        number = float(digits)
    except ValueError:
        return None
    factor = _UNITS.get(text[len(digits) :])
    return int(number * factor) if factor and number > 0 else None


def parse_host_port(text: str) -> ListenAddress | None:
    """``host:port`` or ``[v6]:port``; None when malformed."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit():
        return None
    port = int(port_text)
    return ListenAddress(host, port) if 0 < port < 65536 else None


def _read_section(reader: _Reader, name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        reader.fail(name, f"expected a [{name}] table")
        return None
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; known keys: {', '.join(known)}"
            reader.fail(f"{name}.{key}", f"unknown key{hint}")
    values: dict[str, Any] = {}
    for f in known.values():
        key = f"{name}.{f.name}"
        if f.name in raw:
            values[f.name] = reader.parse(key, f.metadata["kind"], f.metadata["doc"], raw[f.name])
        elif f.default is MISSING:
            reader.fail(key, "missing; this key is required (see README, config reference)")
        else:
            values[f.name] = f.default
    return values


def parse_config(data: dict[str, Any], path: Path) -> Config:
    """Validate parsed TOML; raises ConfigError listing every mistake."""
    data = dict(data)  # [signing.dkim] is split off below; the caller's dict stays as it was
    reader = _Reader(path.parent)
    for name in data:
        if name not in _SECTIONS and name != "filters":
            close = difflib.get_close_matches(name, _SECTIONS, n=1)
            hint = f'; did you mean "[{close[0]}]"?' if close else ""
            reader.fail(name, f"unknown section{hint}; known: {', '.join(_SECTIONS)}")
    sections: dict[str, Any] = {}
    dkim = _split_dkim(reader, data)
    for name, (cls, required) in _SECTIONS.items():
        if name in data:
            sections[name] = _read_section(reader, name, cls, data[name])
        elif required:
            reader.fail(name, f"missing section [{name}]")
        else:
            sections[name] = None if name in _OPTIONAL_SERVICES else {}
    _check_relations(reader, sections)
    _check_delivery_tls(reader, sections.get("delivery") or {})
    _check_signing(reader, sections.get("signing") or {})
    from gateway.filter_config import read_filters  # imports every filter module

    filters = read_filters(data.get("filters"), reader.fail)
    if reader.problems:
        raise ConfigError(reader.problems)
    built = {
        name: (_SECTIONS[name][0](**values) if values is not None else None)
        for name, values in sections.items()
    }
    if dkim is not None:
        built["signing"] = replace(built["signing"], dkim=DkimSection(**dkim))
    return Config(path=path, filters=filters, **built)


def _split_dkim(reader: _Reader, data: dict[str, Any]) -> dict[str, Any] | None:
    """``[signing.dkim]`` is a table inside ``[signing]``: read it on its own."""
    signing = data.get("signing")
    if not isinstance(signing, dict) or "dkim" not in signing:
        return None
    rest = dict(signing)
    raw = rest.pop("dkim")
    data["signing"] = rest
    return _read_section(reader, "signing.dkim", DkimSection, raw)


def _check_signing(reader: _Reader, signing: dict[str, Any]) -> None:
    for key, allowed in SIGNING_CHOICES.items():
        value = signing.get(key)
        if value is not None and value not in allowed:
            choices = " or ".join(f'"{a}"' for a in allowed)
            reader.fail(f"signing.{key}", f"{value!r} is not one of {choices}")
    from gateway.signing.certs import CertificateError, load_certificates, load_crls

    for key, load in (("smime_ca_file", load_certificates), ("crl_file", load_crls)):
        path = signing.get(key)
        if path is None or any(p.startswith(f"signing.{key}: ") for p in reader.problems):
            continue
        try:
            load(path)
        except (CertificateError, OSError) as exc:
            reader.fail(f"signing.{key}", f"{exc}; give a PEM file")


def _check_relations(reader: _Reader, sections: dict[str, Any]) -> None:
    """Rules that span keys: TLS pairs, TLS before AUTH, listeners that collide, retry bounds."""
    smtp = sections.get("smtp") or {}
    cert, key = smtp.get("tls_cert"), smtp.get("tls_key")
    if (cert is None) != (key is None):
        reader.fail("smtp.tls_cert", "tls_cert and tls_key must be given together")
    elif cert is not None and not any(p.startswith("smtp.tls_") for p in reader.problems):
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            reader.fail("smtp.tls_cert", f"cannot load the certificate/key pair: {exc}")
    tls_broken = any(p.startswith("smtp.tls_") for p in reader.problems)
    if smtp and smtp.get("require_tls_for_auth") is True and cert is None and not tls_broken:
        reader.fail(
            "smtp.require_tls_for_auth",
            "true, but no smtp.tls_cert/tls_key is set; add them (or set false for loopback tests)",
        )
    if smtp.get("submission_tls_listen") and cert is None:
        reader.fail(
            "smtp.submission_tls_listen", "implicit TLS needs smtp.tls_cert and smtp.tls_key"
        )
    listeners = [
        (f"smtp.{k}", smtp.get(k))
        for k in ("inbound_listen", "submission_listen", "submission_tls_listen")
    ]
    imap = sections.get("imap")
    if imap:
        listeners.append(("imap.listen", imap.get("listen")))
        listeners.append(("imap.listen_tls", imap.get("listen_tls")))
        if imap.get("listen_tls") and cert is None:
            reader.fail("imap.listen_tls", "IMAPS needs smtp.tls_cert and smtp.tls_key")
        if imap.get("require_tls_for_auth", True) and cert is None and not tls_broken:
            reader.fail(
                "imap.require_tls_for_auth",
                "true (the default), but no smtp.tls_cert/tls_key is set for STARTTLS; add"
                " them (or set false for loopback tests)",
            )
    metrics = sections.get("metrics")
    if metrics:
        listeners.append(("metrics.listen", metrics.get("listen")))
    web = sections.get("web")
    if web:
        listeners.append(("web.listen", web.get("listen")))
        if cert is None and not tls_broken:
            reader.fail("web.listen", "the password page is HTTPS only and needs"
                        " smtp.tls_cert and smtp.tls_key; add them")  # fmt: skip
    seen: dict[ListenAddress, str] = {}
    for key_name, address in listeners:
        if address is None:
            continue
        if address in seen:
            reader.fail(key_name, f"{address} is also used by {seen[address]}; pick another port")
        seen[address] = key_name
    _check_argon2(reader, sections.get("auth") or {})
    _check_log(reader, sections.get("log") or {})
    queue = sections.get("queue") or {}
    low, high = queue.get("retry_min_seconds"), queue.get("retry_max_seconds")
    if low is not None and high is not None and low > high:
        reader.fail(
            "queue.retry_min_seconds",
            f"{low:g} is above queue.retry_max_seconds ({high:g}); lower it or raise the maximum",
        )


def _check_log(reader: _Reader, log: dict[str, Any]) -> None:
    """A time-stamp token nobody can check proves nothing: the authority needs its CA."""
    if log.get("timestamp_authority") and not log.get("timestamp_ca_file"):
        reader.fail(
            "log.timestamp_ca_file",
            "missing; log.timestamp_authority needs the authority's CA certificate (PEM)"
            " so that logs verify can check its tokens",
        )
    if log.get("timestamp_ca_file") and not log.get("timestamp_authority"):
        reader.fail(
            "log.timestamp_authority",
            "missing; log.timestamp_ca_file is set but no authority is named",
        )


ARGON2_MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB per login is a mistake, not a policy


def _check_argon2(reader: _Reader, auth: dict[str, Any]) -> None:
    """What argon2 itself refuses (8 KiB per lane at least), and sizes no login can afford."""
    memory, lanes = auth.get("argon2_memory_kib"), auth.get("argon2_parallelism")
    if memory is not None and lanes is not None and memory < 8 * lanes:
        reader.fail(
            "auth.argon2_memory_kib",
            f"{memory} KiB is below argon2's minimum of 8 KiB per lane"
            f" (auth.argon2_parallelism = {lanes}); write at least {8 * lanes}",
        )
    if memory is not None and memory > ARGON2_MAX_MEMORY_KIB:
        reader.fail(
            "auth.argon2_memory_kib",
            f"{memory} KiB ({memory // 1024} MiB) per login; write at most"
            f" {ARGON2_MAX_MEMORY_KIB} (RFC 9106 recommends 65536 on servers)",
        )
    if lanes is not None and lanes > 255:
        reader.fail("auth.argon2_parallelism", f"{lanes} lanes; write at most 255 (RFC 9106: 4)")


def _check_delivery_tls(reader: _Reader, delivery: dict[str, Any]) -> None:
    """A required TLS level on a hop that never speaks SMTP would be silently ignored."""
    for hop in ("local", "outbound"):
        level, target = delivery.get(f"{hop}_tls"), delivery.get(hop)
        if level in ("encrypt", "verify") and target is not None and target.scheme != "smtp":
            reader.fail(
                f"delivery.{hop}_tls",
                f'"{level}" applies to smtp:// next hops only and delivery.{hop} is {target}; '
                "remove the key",
            )


def advisories(config: Config) -> list[str]:
    """Settings that are valid but probably not meant, for ``check-config`` to warn about."""
    found = []
    cap = config.filters.settings("attachment_cap")
    if cap is not None:
        # base64 is 4/3 of the bytes plus line ends (~1.37x); headers and text need room.
        needed = cap.max_bytes * 137 // 100 + 1024 * 1024
        if config.smtp.max_message_size < needed:
            found.append(
                f"smtp.max_message_size ({config.smtp.max_message_size}) refuses messages"
                f" carrying the {cap.max_bytes} bytes of attachments that"
                f" filters.attachment_cap.max_bytes allows; for that, write at least {needed}"
            )
    if config.signing.dkim is not None:
        from gateway.signing.keys import KeyStore, KeyStoreError

        store, selector = KeyStore(config.gateway.data_dir), config.signing.dkim.selector
        for domain in config.gateway.domains:
            try:
                missing = store.dkim_key(domain, selector) is None
            except KeyStoreError as exc:
                found.append(f"signing.dkim: {exc}; mail from {domain} gets 451 until fixed")
                continue
            if missing:
                found.append(
                    f"signing.dkim: no key for {domain} selector {selector}, so its mail goes"
                    f" out unsigned; make one with: mailgate keys dkim-generate {domain}"
                )
    if config.imap is not None:
        upstream = config.imap.upstream
        try:
            socket.create_connection((upstream.host, upstream.port), timeout=2).close()
        except OSError as exc:
            found.append(
                f"imap.upstream: {upstream} does not answer ({exc.strerror or exc}); the proxy"
                " will answer NO [UNAVAILABLE] to every login until the store listens there"
            )
    return found


def load_config(path: Path) -> Config:
    """Read and validate the TOML file at ``path``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data, path.resolve())


def listeners(config: Config) -> list[tuple[str, ListenAddress]]:
    """Every socket ``serve`` binds, with the key that configures it."""
    found = [
        ("smtp.inbound_listen", config.smtp.inbound_listen),
        ("smtp.submission_listen", config.smtp.submission_listen),
    ]
    if config.smtp.submission_tls_listen:
        found.append(("smtp.submission_tls_listen", config.smtp.submission_tls_listen))
    if config.imap is not None:
        found.append(("imap.listen", config.imap.listen))
        if config.imap.listen_tls:
            found.append(("imap.listen_tls", config.imap.listen_tls))
    if config.metrics is not None:
        found.append(("metrics.listen", config.metrics.listen))
    if config.web is not None:
        found.append(("web.listen", config.web.listen))
    return found


def check_ports_free(config: Config) -> list[str]:
    """Problems for listen addresses that cannot be bound now (in use, not ours)."""
    problems = []
    for key, address in listeners(config):
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address.host, address.port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    why = "already in use; stop the other process or choose another port"
                else:
                    why = f"cannot listen there: {exc.strerror}"
                problems.append(f"{key}: {address} {why}")
    return problems
