"""config.py: the shipped file loads, and every mistake names its key and how to fix it."""

from __future__ import annotations

import copy
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    Config,
    ConfigError,
    DeliveryTarget,
    ListenAddress,
    advisories,
    check_ports_free,
    load_config,
    parse_config,
)
from gateway.tls import write_self_signed
from tests.unit.fakes import MINIMAL_CONFIG

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "gateway.toml"

MINIMAL = MINIMAL_CONFIG


def data(**sections: dict[str, Any]) -> dict[str, Any]:
    """MINIMAL with some keys of some sections replaced (None deletes a key)."""
    result = copy.deepcopy(MINIMAL)
    for name, keys in sections.items():
        table = result.setdefault(name, {})
        for key, value in keys.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return result


def problems_of(raw: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path / "gw.toml")
    assert caught.value.problems, "a ConfigError must list its problems"
    return caught.value.problems


def only_problem(raw: dict[str, Any], tmp_path: Path, key: str) -> str:
    """The one problem reported, which must start with ``key: ``."""
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: "), problems
    return problems[0]


def free_ports(count: int) -> list[int]:
    """Distinct ports that were free a moment ago (held together, then released)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


# -- the shipped file ----------------------------------------------------------------------


def test_shipped_config_loads_with_a_generated_tls_pair(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    shutil.copy(SHIPPED, folder / "gateway.toml")
    write_self_signed(folder / "tls" / "cert.pem", folder / "tls" / "key.pem", "mail.example")

    config = load_config(folder / "gateway.toml")

    base = folder.resolve()
    assert isinstance(config, Config)
    assert config.path == base / "gateway.toml"
    assert config.gateway.hostname == "mail.example.gov.vn"
    assert config.gateway.domains == ("example.gov.vn",)
    assert config.gateway.data_dir.resolve() == (tmp_path / "var").resolve()
    assert config.smtp.inbound_listen == ListenAddress("127.0.0.1", 2525)
    assert config.smtp.submission_listen == ListenAddress("127.0.0.1", 5870)
    assert config.smtp.require_tls_for_auth is True
    assert config.smtp.tls_cert == base / "tls" / "cert.pem"
    assert config.smtp.tls_key == base / "tls" / "key.pem"
    assert config.delivery.local.scheme == "maildir"
    assert config.delivery.local.path is not None
    assert config.delivery.local.path.resolve() == (tmp_path / "var" / "mail").resolve()
    assert config.delivery.outbound == DeliveryTarget("smtp", "127.0.0.1", 2526)
    assert config.log.retention_days == 183
    assert config.imap is None
    assert config.web is not None and config.web.listen == ListenAddress("127.0.0.1", 8443)
    assert config.password_url == "https://mail.example.gov.vn:8443/password"
    # [queue] is optional: its defaults apply.
    assert config.queue.retry_min_seconds == 60.0
    assert config.queue.retry_max_seconds == 3600.0


def test_shipped_config_without_its_tls_files_is_refused(tmp_path: Path) -> None:
    shutil.copy(SHIPPED, tmp_path / "gateway.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.toml")
    keys = {p.split(":", 1)[0] for p in caught.value.problems}
    assert {"smtp.tls_cert", "smtp.tls_key"} <= keys


def test_minimal_dict_parses_with_defaults(tmp_path: Path) -> None:
    config = parse_config(data(), tmp_path / "gw.toml")
    assert config.smtp.max_message_size == 31_457_280
    assert config.smtp.tls_cert is None
    assert config.delivery.timeout == 120.0
    assert config.spool_dir == tmp_path / "var" / "spool"


# -- one kind of mistake per test ----------------------------------------------------------


def test_wrong_type_names_key_and_what_to_write(tmp_path: Path) -> None:
    problem = only_problem(
        data(smtp={"max_message_size": "20MB"}), tmp_path, "smtp.max_message_size"
    )
    assert "'20MB'" in problem
    assert problem.endswith("write 20971520"), "STYLE.md 3: the fix, in bytes"


@pytest.mark.parametrize(
    ("section", "key", "value", "hint"),
    [
        ("smtp", "require_tls_for_auth", "yes", "true or false"),
        ("smtp", "max_recipients", 0, "positive integer"),
        ("smtp", "max_recipients", True, "positive integer"),
        ("smtp", "idle_timeout", -1, "positive number of seconds"),
        ("gateway", "hostname", "localhost", "fully qualified"),
        ("gateway", "domains", "example.gov.vn", '["example.gov.vn"]'),
        ("log", "dir", "", "non-empty string"),
    ],
)
def test_other_wrong_values_name_key_and_expected_form(
    tmp_path: Path, section: str, key: str, value: Any, hint: str
) -> None:
    problem = only_problem(data(**{section: {key: value}}), tmp_path, f"{section}.{key}")
    assert hint in problem


@pytest.mark.parametrize("value", [0, 17, "2", True, 2.0])
def test_processes_outside_1_to_16_names_the_key_and_the_fix(tmp_path: Path, value: Any) -> None:
    problem = only_problem(data(smtp={"processes": value}), tmp_path, "smtp.processes")
    assert "from 1 to 16" in problem and "write 1" in problem, problem


def test_processes_defaults_to_one_and_takes_sixteen(tmp_path: Path) -> None:
    assert parse_config(data(), tmp_path / "gw.toml").smtp.processes == 1
    config = parse_config(data(smtp={"processes": 16}), tmp_path / "gw.toml")
    assert config.smtp.processes == 16


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    problem = only_problem(data(smtp={"max_mesage_size": 5}), tmp_path, "smtp.max_mesage_size")
    assert "unknown key" in problem
    assert 'did you mean "max_message_size"?' in problem


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    problem = only_problem(data(log={"zzz": 1}), tmp_path, "log.zzz")
    assert "known keys: dir, retention_days" in problem


def test_unknown_section_is_an_error_with_suggestion(tmp_path: Path) -> None:
    raw = data()
    raw["smpt"] = {"max_message_size": 1}
    problem = only_problem(raw, tmp_path, "smpt")
    assert "unknown section" in problem
    assert 'did you mean "[smtp]"?' in problem


def test_missing_required_key(tmp_path: Path) -> None:
    problem = only_problem(data(gateway={"hostname": None}), tmp_path, "gateway.hostname")
    assert "missing" in problem and "required" in problem


def test_missing_required_section(tmp_path: Path) -> None:
    raw = data()
    del raw["log"]
    problem = only_problem(raw, tmp_path, "log")
    assert "missing section [log]" in problem


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    raw = data()
    raw["log"] = "var/log"
    assert "expected a [log] table" in only_problem(raw, tmp_path, "log")


def test_unreadable_tls_file_names_path_and_fix(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example")
    raw = data(smtp={"tls_cert": "cert.pem", "tls_key": "missing-key.pem"})
    problem = only_problem(raw, tmp_path, "smtp.tls_key")
    assert str(tmp_path / "missing-key.pem") in problem
    assert "fix the path or its permissions" in problem


def test_tls_cert_without_key(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example")
    problem = only_problem(data(smtp={"tls_cert": "cert.pem"}), tmp_path, "smtp.tls_cert")
    assert "tls_key" in problem and "together" in problem


def test_mismatched_tls_pair_is_refused(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "a.pem", tmp_path / "a.key", "mail.example")
    write_self_signed(tmp_path / "b.pem", tmp_path / "b.key", "mail.example")
    problem = only_problem(
        data(smtp={"tls_cert": "a.pem", "tls_key": "b.key"}), tmp_path, "smtp.tls_cert"
    )
    assert "cannot load the certificate/key pair" in problem


def test_valid_tls_pair_is_accepted(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example")
    raw = data(smtp={"tls_cert": "cert.pem", "tls_key": "key.pem", "require_tls_for_auth": True})
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.smtp.tls_cert == tmp_path / "cert.pem"


def test_require_tls_for_auth_without_tls(tmp_path: Path) -> None:
    problem = only_problem(
        data(smtp={"require_tls_for_auth": True}), tmp_path, "smtp.require_tls_for_auth"
    )
    assert "smtp.tls_cert" in problem
    assert "set false" in problem


def test_require_tls_for_auth_defaults_to_true(tmp_path: Path) -> None:
    problem = only_problem(
        data(smtp={"require_tls_for_auth": None}), tmp_path, "smtp.require_tls_for_auth"
    )
    assert "add them" in problem


def test_implicit_tls_listener_needs_tls(tmp_path: Path) -> None:
    raw = data(smtp={"submission_tls_listen": "127.0.0.1:4650"})
    problem = only_problem(raw, tmp_path, "smtp.submission_tls_listen")
    assert "smtp.tls_cert" in problem


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.1:", ":25", "127.0.0.1:0", "127.0.0.1:65536", "host:x"]
)
def test_bad_listen_address(tmp_path: Path, address: str) -> None:
    problem = only_problem(data(smtp={"inbound_listen": address}), tmp_path, "smtp.inbound_listen")
    assert '"HOST:PORT"' in problem and "1-65535" in problem


def test_ipv6_listen_address(tmp_path: Path) -> None:
    config = parse_config(data(smtp={"inbound_listen": "[::1]:2525"}), tmp_path / "gw.toml")
    assert config.smtp.inbound_listen == ListenAddress("::1", 2525)
    assert str(config.smtp.inbound_listen) == "[::1]:2525"


def test_two_listeners_on_one_port(tmp_path: Path) -> None:
    raw = data(smtp={"submission_listen": "127.0.0.1:2525"})
    problem = only_problem(raw, tmp_path, "smtp.submission_listen")
    assert "smtp.inbound_listen" in problem and "pick another port" in problem


@pytest.mark.parametrize(
    "target", ["ftp://127.0.0.1:21", "smtp://127.0.0.1", "lmtp:127.0.0.1:24", "maildir:", "mail"]
)
def test_bad_delivery_target(tmp_path: Path, target: str) -> None:
    problem = only_problem(data(delivery={"outbound": target}), tmp_path, "delivery.outbound")
    assert "maildir:" in problem  # both messages show the maildir form to write


def test_good_delivery_targets(tmp_path: Path) -> None:
    raw = data(delivery={"local": "lmtp://127.0.0.1:24/", "outbound": "smtp://[::1]:25"})
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.delivery.local == DeliveryTarget("lmtp", "127.0.0.1", 24)
    assert config.delivery.outbound == DeliveryTarget("smtp", "::1", 25)


def test_retry_min_above_retry_max(tmp_path: Path) -> None:
    raw = data(queue={"retry_min_seconds": 600, "retry_max_seconds": 60})
    problem = only_problem(raw, tmp_path, "queue.retry_min_seconds")
    assert "queue.retry_max_seconds" in problem


def test_retry_min_above_retry_max_says_how_to_fix(tmp_path: Path) -> None:
    raw = data(queue={"retry_min_seconds": 600, "retry_max_seconds": 60})
    problem = only_problem(raw, tmp_path, "queue.retry_min_seconds")
    assert any(word in problem for word in ("lower", "raise", "set ", "write", "at most"))


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway\nhostname = \n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: ")
    assert "not valid TOML" in problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    (problem,) = caught.value.problems
    assert "cannot read" in problem


def test_several_mistakes_reported_at_once(tmp_path: Path) -> None:
    raw = data(
        smtp={
            "max_message_size": "20MB",
            "max_mesage_size": 5,
            "require_tls_for_auth": True,
        },
        queue={"retry_min_seconds": 600, "retry_max_seconds": 60},
        delivery={"outbound": "ftp://x:1"},
    )
    raw["imapp"] = {}
    keys = [p.split(":", 1)[0] for p in problems_of(raw, tmp_path)]
    assert sorted(keys) == sorted(
        [
            "imapp",
            "smtp.max_mesage_size",
            "smtp.max_message_size",
            "smtp.require_tls_for_auth",
            "queue.retry_min_seconds",
            "delivery.outbound",
        ]
    )


def test_error_string_joins_every_problem(tmp_path: Path) -> None:
    raw = data(smtp={"max_recipients": 0, "max_errors": 0})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path / "gw.toml")
    assert str(caught.value) == "; ".join(caught.value.problems)
    assert len(caught.value.problems) == 2


# -- paths, domains ------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "mailgate"
    folder.mkdir(parents=True)
    (folder / "gateway.toml").write_text(
        "\n".join(
            [
                "[gateway]",
                'hostname = "mail.example.gov.vn"',
                'domains = ["example.gov.vn"]',
                'data_dir = "../data"',
                "[smtp]",
                'inbound_listen = "127.0.0.1:2525"',
                'submission_listen = "127.0.0.1:5870"',
                "require_tls_for_auth = false",
                "[delivery]",
                'local = "maildir:mail"',
                'outbound = "smtp://127.0.0.1:2526"',
                "[log]",
                f'dir = "{tmp_path / "abs-log"}"',
            ]
        ),
        encoding="utf-8",
    )
    config = load_config(folder / "gateway.toml")
    base = folder.resolve()
    assert config.gateway.data_dir == base / ".." / "data"
    assert config.gateway.data_dir.resolve() == (tmp_path / "etc" / "data").resolve()
    assert config.delivery.local.path == base / "mail"
    assert config.log.dir == tmp_path / "abs-log"  # absolute paths are kept


def test_domains_are_lower_cased_and_is_local_ignores_case(tmp_path: Path) -> None:
    raw = data(gateway={"domains": ["Example.GOV.vn", "Bo-Noi-Vu.gov.VN."]})
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.gateway.domains == ("example.gov.vn", "bo-noi-vu.gov.vn")
    assert config.is_local("an@example.gov.vn")
    assert config.is_local("An@EXAMPLE.Gov.VN")
    assert config.is_local("x@BO-NOI-VU.gov.vn")
    assert not config.is_local("an@other.gov.vn")
    assert not config.is_local("an@sub.example.gov.vn")


def test_bad_domains_are_named(tmp_path: Path) -> None:
    problem = only_problem(
        data(gateway={"domains": ["ok.gov.vn", "an@x.vn", "nodot"]}), tmp_path, "gateway.domains"
    )
    assert "'an@x.vn'" in problem and "'nodot'" in problem and "ok.gov.vn" not in problem


# -- ports ---------------------------------------------------------------------------------


def test_check_ports_free_reports_a_held_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        (free,) = free_ports(1)
        raw = data(
            smtp={
                "inbound_listen": f"127.0.0.1:{busy}",
                "submission_listen": f"127.0.0.1:{free}",
            }
        )
        config = parse_config(raw, tmp_path / "gw.toml")
        problems = check_ports_free(config)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"smtp.inbound_listen: 127.0.0.1:{busy} ")
    assert "already in use" in problems[0]


def test_check_ports_free_passes_when_free(tmp_path: Path) -> None:
    first, second = free_ports(2)
    raw = data(
        smtp={"inbound_listen": f"127.0.0.1:{first}", "submission_listen": f"127.0.0.1:{second}"}
    )
    assert check_ports_free(parse_config(raw, tmp_path / "gw.toml")) == []


# -- delivery: unix-socket LMTP, next-hop TLS -------------------------------------------------


def test_lmtp_unix_socket_target(tmp_path: Path) -> None:
    raw = data(delivery={"local": "lmtp:unix:/run/dovecot/lmtp"})
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.delivery.local == DeliveryTarget("lmtp", path=Path("/run/dovecot/lmtp"))
    assert str(config.delivery.local) == "lmtp:unix:/run/dovecot/lmtp"


def test_lmtp_unix_socket_relative_path_and_not_yet_existing(tmp_path: Path) -> None:
    config = parse_config(data(delivery={"local": "lmtp:unix:run/lmtp"}), tmp_path / "gw.toml")
    assert config.delivery.local.path == tmp_path / "run" / "lmtp"


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("lmtp:unix:", "socket path"),
        ("lmtp:unix:/" + "x" * 120, "107 bytes"),
        ("unix:/run/dovecot/lmtp", '"lmtp:unix:/run/dovecot/lmtp"'),
        ("smtp:unix:/run/x", '"lmtp:unix:PATH"'),
    ],
)
def test_bad_lmtp_unix_socket_target(tmp_path: Path, target: str, says: str) -> None:
    problem = only_problem(data(delivery={"local": target}), tmp_path, "delivery.local")
    assert says in problem


def test_delivery_tls_defaults(tmp_path: Path) -> None:
    config = parse_config(data(), tmp_path / "gw.toml")
    assert config.delivery.tls == "may"
    assert config.delivery.local_tls is None and config.delivery.outbound_tls is None
    assert config.delivery.tls_ca_file is None


def test_delivery_tls_levels(tmp_path: Path) -> None:
    raw = data(delivery={"tls": "encrypt", "outbound_tls": "verify", "local_tls": "none"})
    config = parse_config(raw, tmp_path / "gw.toml")
    assert (config.delivery.tls, config.delivery.outbound_tls) == ("encrypt", "verify")
    assert config.delivery.local_tls == "none"


@pytest.mark.parametrize("key", ["tls", "local_tls", "outbound_tls"])
def test_bad_delivery_tls_level(tmp_path: Path, key: str) -> None:
    problem = only_problem(data(delivery={key: "x"}), tmp_path, f"delivery.{key}")
    assert problem == f'delivery.{key}: expected one of may, encrypt, verify, none; got "x"'


def test_delivery_tls_level_in_capitals_says_what_to_write(tmp_path: Path) -> None:
    problem = only_problem(data(delivery={"tls": "Verify"}), tmp_path, "delivery.tls")
    assert problem.endswith('; write "verify"')


def test_required_tls_on_a_hop_that_is_not_smtp(tmp_path: Path) -> None:
    raw = data(delivery={"local_tls": "verify"})  # local is maildir
    problem = only_problem(raw, tmp_path, "delivery.local_tls")
    assert "smtp://" in problem and "remove the key" in problem


def test_delivery_tls_ca_file(tmp_path: Path) -> None:
    import trustme  # a test dependency: missing it is a failure, not a skip

    ca_path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_path))
    raw = data(delivery={"tls": "verify", "tls_ca_file": "ca.pem"})
    assert parse_config(raw, tmp_path / "gw.toml").delivery.tls_ca_file == ca_path


@pytest.mark.parametrize(("content", "says"), [(None, "cannot read"), (b"junk", "cannot load")])
def test_bad_delivery_tls_ca_file(tmp_path: Path, content: bytes | None, says: str) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_bytes(content)
    raw = data(delivery={"tls_ca_file": "ca.pem"})
    problem = only_problem(raw, tmp_path, "delivery.tls_ca_file")
    assert says in problem


def test_auth_cache_and_argon2_keys(tmp_path: Path) -> None:
    defaults = parse_config(data(), tmp_path / "gw.toml").auth
    assert (defaults.cache_ttl_seconds, defaults.cache_size, defaults.hash_workers) == (
        3600.0,
        50_000,
        None,
    )
    assert (defaults.argon2_memory_kib, defaults.argon2_time_cost) == (65536, 3)
    assert defaults.argon2_parallelism == 4
    keys = {
        "cache_ttl_seconds": 600,
        "cache_size": 0,
        "hash_workers": 1,
        "argon2_memory_kib": 19456,
        "argon2_time_cost": 2,
        "argon2_parallelism": 1,
    }
    auth = parse_config(data(auth=keys), tmp_path / "gw.toml").auth
    assert (auth.cache_ttl_seconds, auth.cache_size, auth.hash_workers) == (600.0, 0, 1)
    assert (auth.argon2().memory_kib, auth.argon2().time_cost, auth.argon2().parallelism) == (
        19456,
        2,
        1,
    )


@pytest.mark.parametrize(
    ("keys", "key", "says"),
    [
        ({"cache_size": -1}, "auth.cache_size", "write 0 for none"),
        ({"hash_workers": 0}, "auth.hash_workers", "positive integer"),
        ({"cache_ttl_seconds": "1h"}, "auth.cache_ttl_seconds", "seconds"),
        ({"argon2_memory_kib": 16}, "auth.argon2_memory_kib", "write at least 32"),
        ({"argon2_memory_kib": 8 * 1024 * 1024}, "auth.argon2_memory_kib", "write at most"),
        ({"argon2_parallelism": 1000, "argon2_memory_kib": 65536}, "auth.argon2_parallelism",
         "at most 255"),
        ({"argon2_time_cost": 0}, "auth.argon2_time_cost", "positive integer"),
        ({"argon2_memory": 65536}, "auth.argon2_memory", 'did you mean "argon2_memory_kib"'),
    ],
)  # fmt: skip
def test_auth_mistakes_name_the_key_and_the_fix(
    tmp_path: Path, keys: dict[str, Any], key: str, says: str
) -> None:
    problem = only_problem(data(auth=keys), tmp_path, key)
    assert says in problem, problem


def imap_section(secret: Path, **keys: Any) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:1430",
        "upstream": f"127.0.0.1:{free_ports(1)[0]}",
        "upstream_master_user": "gateway",
        "upstream_master_password_file": str(secret),
        "require_tls_for_auth": False,
        **keys,
    }


def test_imap_master_password_file_must_exist_and_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "imap-master"
    missing = only_problem(
        data(imap=imap_section(secret)), tmp_path, "imap.upstream_master_password_file"
    )
    assert "cannot read" in missing
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    shown = only_problem(
        data(imap=imap_section(secret)), tmp_path, "imap.upstream_master_password_file"
    )
    assert "readable by every user (mode 644); run chmod 600" in shown
    assert "s3cret" not in shown
    secret.chmod(0o600)
    config = parse_config(data(imap=imap_section(secret)), tmp_path / "gw.toml")
    assert config.imap is not None and config.imap.check_interval == 2.0
    (warning,) = [w for w in advisories(config) if w.startswith("imap.upstream")]
    assert "does not answer" in warning and "NO [UNAVAILABLE]" in warning


def test_imap_tls_needs_the_certificate(tmp_path: Path) -> None:
    secret = tmp_path / "imap-master"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    problem = only_problem(
        data(imap=imap_section(secret, require_tls_for_auth=True)), tmp_path,
        "imap.require_tls_for_auth",
    )  # fmt: skip
    assert "no smtp.tls_cert/tls_key" in problem
    problem = only_problem(
        data(imap=imap_section(secret, listen_tls="127.0.0.1:9933")), tmp_path, "imap.listen_tls"
    )
    assert "IMAPS needs smtp.tls_cert" in problem


# -- [web]: the password page ---------------------------------------------------------------


def tls_pair(tmp_path: Path) -> dict[str, str]:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.gov.vn")
    return {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}


def test_web_section_is_optional_and_off_without_it(tmp_path: Path) -> None:
    config = parse_config(data(), tmp_path / "gw.toml")
    assert config.web is None and config.password_url is None
    assert config.auth.refuse_must_change is False


def test_web_needs_the_tls_pair(tmp_path: Path) -> None:
    problem = only_problem(data(web={"listen": "127.0.0.1:8443"}), tmp_path, "web.listen")
    assert "HTTPS only" in problem and "smtp.tls_cert" in problem


def test_web_public_url_must_be_https(tmp_path: Path) -> None:
    raw = data(smtp=tls_pair(tmp_path), web={"listen": "127.0.0.1:8443", "public_url": "http://x"})
    problem = only_problem(raw, tmp_path, "web.public_url")
    assert "https://" in problem


def test_web_listener_must_not_collide(tmp_path: Path) -> None:
    raw = data(smtp=tls_pair(tmp_path), web={"listen": "127.0.0.1:5870"})
    problem = only_problem(raw, tmp_path, "web.listen")
    assert "smtp.submission_listen" in problem


def test_web_page_url_defaults_from_the_hostname_and_public_url_wins(tmp_path: Path) -> None:
    raw = data(smtp=tls_pair(tmp_path), web={"listen": "0.0.0.0:443"})
    assert parse_config(raw, tmp_path / "gw.toml").password_url == (
        "https://mail.example.gov.vn/password"
    )
    raw["web"]["public_url"] = "https://matkhau.example.gov.vn/password"
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.password_url == "https://matkhau.example.gov.vn/password"


def test_web_unknown_key_is_named(tmp_path: Path) -> None:
    raw = data(smtp=tls_pair(tmp_path), web={"listen": "127.0.0.1:8443", "lisen": "x"})
    problem = only_problem(raw, tmp_path, "web.lisen")
    assert "listen" in problem


# -- [signing] ------------------------------------------------------------------------------


def test_signing_defaults_and_dkim_table(tmp_path: Path) -> None:
    config = parse_config(data(), tmp_path / "gw.toml")
    assert config.signing.dkim is None and config.signing.missing_recipient_key == "reject"
    assert config.signing.encrypt_subject_tags == ("[encrypt]", "[mã hóa]")
    raw = data(signing={"dkim": {"selector": "mail2026"}, "preference": "pgp"})
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.signing.dkim is not None and config.signing.dkim.selector == "mail2026"
    assert config.signing.preference == "pgp"


@pytest.mark.parametrize(
    ("signing", "key", "says"),
    [
        ({"missing_recipient_key": "drop"}, "signing.missing_recipient_key", '"send-plain"'),
        ({"dkim": {"selector": "a b"}}, "signing.dkim.selector", "DNS label"),
        ({"dkim": {"selectr": "mail"}}, "signing.dkim.selectr", "selector"),
        ({"encrypt_subject_tags": "[encrypt]"}, "signing.encrypt_subject_tags", "list"),
    ],
)
def test_signing_mistakes_name_their_key(
    tmp_path: Path, signing: dict[str, Any], key: str, says: str
) -> None:
    problems = problems_of(data(signing=signing), tmp_path)
    assert any(p.startswith(f"{key}: ") and says in p for p in problems), problems


def test_check_config_warns_about_a_local_domain_without_a_dkim_key(tmp_path: Path) -> None:
    from gateway.signing.keys import KeyStore

    config = parse_config(data(signing={"dkim": {"selector": "mail"}}), tmp_path / "gw.toml")
    assert any("keys dkim-generate example.gov.vn" in w for w in advisories(config))
    KeyStore(config.gateway.data_dir).generate_dkim("example.gov.vn", "mail", "ed25519")
    assert not any("signing.dkim" in w for w in advisories(config))


def test_signing_ca_and_crl_files_must_hold_what_they_say(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    problems = problems_of(
        data(signing={"smime_ca_file": str(junk), "crl_file": str(junk)}), tmp_path
    )
    assert any(p.startswith("signing.smime_ca_file: ") for p in problems), problems
    assert any(p.startswith("signing.crl_file: ") for p in problems), problems


# -- [log] anchors and [metrics] ---------------------------------------------------------


def test_log_anchor_keys_parse(tmp_path: Path) -> None:
    ca = tmp_path / "tsa-ca.pem"
    write_self_signed(ca, tmp_path / "k.pem", "tsa.example")
    raw = data(
        log={
            "timestamp_authority": "http://tsa.example/tsr",
            "timestamp_ca_file": str(ca),
            "syslog": "udp:127.0.0.1:514",
            "syslog_events": True,
        },
        metrics={"listen": "127.0.0.1:9464"},
    )
    config = parse_config(raw, tmp_path / "gw.toml")
    assert config.log.timestamp_authority == "http://tsa.example/tsr"
    assert str(config.log.syslog) == "udp:127.0.0.1:514"
    assert config.log.syslog_events is True
    assert config.metrics is not None and config.metrics.listen == ListenAddress("127.0.0.1", 9464)
    assert parse_config(data(), tmp_path / "gw.toml").metrics is None


def test_a_timestamp_authority_needs_its_ca(tmp_path: Path) -> None:
    raw = data(log={"timestamp_authority": "http://tsa.example/tsr"})
    assert "needs the authority's CA" in only_problem(raw, tmp_path, "log.timestamp_ca_file")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("timestamp_authority", "tsa.example", "expected an http:// or https:// URL"),
        ("syslog", "/dev/log", 'expected "unix:/dev/log", "udp:HOST:PORT"'),
        ("syslog", "udp:loghost", 'expected "unix:/dev/log", "udp:HOST:PORT"'),
    ],
)
def test_bad_anchor_values_name_the_key(tmp_path: Path, key: str, value: str, says: str) -> None:
    problems = problems_of(data(log={key: value}), tmp_path)
    assert any(p.startswith(f"log.{key}: {says}") for p in problems), problems


def test_metrics_keys_are_checked(tmp_path: Path) -> None:
    inbound = MINIMAL["smtp"]["inbound_listen"]
    message = only_problem(data(metrics={"listen": inbound}), tmp_path, "metrics.listen")
    assert "also used by smtp.inbound_listen" in message
    message = only_problem(data(metrics={"listen": "x:1", "port": 1}), tmp_path, "metrics.port")
    assert "unknown key" in message
