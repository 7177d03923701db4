"""systemd/mailgate.service is hardened ("OK", exposure <= 2.0 in systemd-analyze) and
still holds what the gateway needs: ports below 1024, its data and log dirs, and the
address families clamd, gpg-agent, LMTP and syslog use."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "mailgate.service"


def service_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_analyze_rates_the_unit_ok() -> None:
    # systemd-analyze comes with the systemd package, on every Debian 12 host: no skip.
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (Debian package systemd)"
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


def test_the_unit_still_allows_what_the_gateway_needs() -> None:
    settings = service_settings()
    assert settings["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert "CAP_NET_BIND_SERVICE" in settings["CapabilityBoundingSet"][0].split()
    assert set(settings["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "-/opt/mailgate/var" in settings["ReadWritePaths"]
    assert settings["StateDirectory"] == ["mailgate"] and settings["LogsDirectory"] == ["mailgate"]
    assert settings.get("PrivateNetwork", ["false"]) == ["false"]
    assert settings.get("PrivateUsers", ["false"]) == ["false"]  # would void the capability
    # The argon2 pool calls setpriority: @resources must not be denied.
    denied = " ".join(v for v in settings["SystemCallFilter"] if v.startswith("~"))
    assert "@resources" not in denied
