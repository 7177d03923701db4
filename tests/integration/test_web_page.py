"""The password page end to end: Debian's chromium, driven by selenium, against a running
``mailgate serve`` (HTTPS with a test CA); then the new password over SMTP submission
(STARTTLS) and the IMAP proxy in front of a private Dovecot.

A screenshot of the page (fresh, and showing a refused weak password) is saved under
``test-artifacts/`` at the repository root for people to look at.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.dovecot import PrivateDovecot
from tests.integration.harness import Gateway, Sink, free_port, make_tls_files, wait_for_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
MASTER = "mg-web-master"
GENERATED = re.compile(r"initial password \(must be changed at first login\): (\S+)")
NEW = "Doi-Mat-Khau-2026!"  # ASCII: smtplib and imaplib send only ASCII passwords


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot"), {}, master_user=MASTER) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless chromium as Debian ships it; no driver or browser is ever downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "install Debian's chromium and chromium-driver (scripts/test)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
        "--window-size=900,1000", "--lang=vi",
    ):  # fmt: skip
        options.add_argument(flag)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield session
    session.quit()


class Site:
    """A running gateway with the page, the IMAP proxy and a test CA."""

    def __init__(self, gateway: Gateway, ca: Path, web_port: int) -> None:
        self.gateway = gateway
        self.ca = ca
        self.url = f"https://127.0.0.1:{web_port}/password"
        self.web_port = web_port

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def add_mailbox(self, address: str, dovecot: PrivateDovecot) -> str:
        """A new mailbox with a generated password that must change (as an operator makes)."""
        dovecot.add_user(address, "unused-by-the-proxy-1A")
        done = self.gateway.cli("mailbox", "add", address, "--name", "Trần Thị Hoa")
        match = GENERATED.search(done.stdout)
        assert match is not None, "mailbox add printed no generated password"
        return match.group(1)

    def smtp_login(self, address: str, password: str) -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", self.gateway.submission_port, timeout=30) as client:
            client.starttls(context=self.tls())
            try:
                code, text = client.login(address, password)
            except smtplib.SMTPAuthenticationError as exc:
                code, text = exc.smtp_code, exc.smtp_error
            return code, text.decode() if isinstance(text, bytes) else text

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.gateway.imap_port, timeout=30)
        client.starttls(ssl_context=self.tls())
        return client


def start_site(
    make_gateway: Callable[..., Gateway],
    dovecot: PrivateDovecot,
    sink: Sink,
    tmp_path: Path,
    **extra_sections: dict[str, object],
) -> Site:
    files = make_tls_files(tmp_path)
    smtp = {"tls_cert": str(files.cert), "tls_key": str(files.key), "require_tls_for_auth": True}
    gateway = make_gateway(
        f"lmtp://127.0.0.1:{dovecot.lmtp_port}", sink.url, mailboxes=(), smtp_extra=smtp
    )
    secret = gateway.workdir / "imap-master"
    secret.write_text(dovecot.master_password + "\n", encoding="utf-8")
    os.chmod(secret, 0o600)
    gateway.imap_port = free_port()
    gateway.imaps_port = free_port()
    web_port = free_port()
    gateway.add_sections(
        {
            "imap": {
                "listen": f"127.0.0.1:{gateway.imap_port}",
                "listen_tls": f"127.0.0.1:{gateway.imaps_port}",
                "upstream": f"127.0.0.1:{dovecot.imap_port}",
                "upstream_master_user": MASTER,
                "upstream_master_password_file": str(secret),
            },
            "web": {
                "listen": f"127.0.0.1:{web_port}",
                "public_url": f"https://127.0.0.1:{web_port}/password",
            },
            **extra_sections,
        }
    )
    gateway.start()
    for port in (web_port, gateway.imap_port, gateway.imaps_port):
        wait_for_port(port, process=gateway.process)
    return Site(gateway, files.ca, web_port)


@pytest.fixture
def site(
    make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink, tmp_path: Path
) -> Site:
    return start_site(make_gateway, dovecot, sink, tmp_path)


def fill(browser, site: Site, address: str, current: str, new: str, confirm: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(site.url)
    for name, value in (("address", address), ("current", current), ("new", new)):
        browser.find_element(By.ID, name).send_keys(value)
    browser.find_element(By.ID, "confirm").send_keys(confirm)


def click_and_wait(browser, selector: str) -> str:  # type: ignore[no-untyped-def]
    """Click, wait for the next page to replace this one; its heading."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, selector).click()
    WebDriverWait(browser, 20).until(expected_conditions.staleness_of(old))
    return browser.find_element(By.TAG_NAME, "h1").text


def submit(browser) -> str:  # type: ignore[no-untyped-def]
    return click_and_wait(browser, "button[type=submit]")


def screenshot(browser, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / name))


def test_change_in_the_browser_then_log_in_over_smtp_and_imap(
    site: Site, dovecot: PrivateDovecot, browser
) -> None:  # type: ignore[no-untyped-def]
    address = "tthoa@example.gov.vn"
    initial = site.add_mailbox(address, dovecot)
    # Before: logins work, and both the IMAP [ALERT] and the SMTP event name the page.
    imap = site.imap()
    typ, _ = imap.login(address, initial)
    assert typ == "OK"
    assert "ALERT" in imap.untagged_responses  # imaplib files the text under "OK"
    untagged_ok = imap.untagged_responses.get("OK", [])
    imap.logout()
    assert any(site.url.encode() in line for line in untagged_ok), untagged_ok
    assert site.smtp_login(address, initial)[0] == 235
    success = site.gateway.wait_event(
        "auth_success", lambda e: e.get("listener") == "submission" and e.get("user") == address
    )
    assert success["must_change"] is True and site.url in success["reason"]

    fill(browser, site, address, initial, NEW, NEW)
    screenshot(browser, "password-page.png")
    heading = submit(browser)
    assert "Password changed" in heading, browser.page_source[:2000]
    assert NEW not in browser.page_source and initial not in browser.page_source

    assert site.smtp_login(address, NEW)[0] == 235
    assert site.smtp_login(address, initial)[0] == 535
    imap = site.imap()
    imap.login(address, NEW)
    assert "ALERT" not in imap.untagged_responses  # must-change is cleared
    typ, _ = imap.select("INBOX")
    assert typ == "OK"
    imap.logout()
    changed = site.gateway.wait_event("password_changed", lambda e: e.get("user") == address)
    assert changed["actor"] == "user" and changed["listener"] == "web"
    assert changed["client"] == "127.0.0.1"
    logs = site.gateway.all_logs()
    assert NEW not in logs and initial not in logs


def test_weak_password_shows_its_rule_next_to_the_field(
    site: Site, dovecot: PrivateDovecot, browser
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    address = "lvminh@example.gov.vn"
    initial = site.add_mailbox(address, dovecot)
    fill(browser, site, address, initial, "matkhauyeu", "matkhauyeu")
    submit(browser)
    field = browser.find_element(By.ID, "new")
    assert field.get_attribute("aria-invalid") == "true"
    described = (field.get_attribute("aria-describedby") or "").split()
    assert "new-error" in described
    error = browser.find_element(By.ID, "new-error").text
    assert "at least 3 of" in error and "Quy tắc mật khẩu" in error
    assert browser.find_element(By.ID, "current").get_attribute("value") == ""  # not echoed
    screenshot(browser, "password-page-weak.png")
    assert site.smtp_login(address, initial)[0] == 235  # nothing changed


def test_locked_mailbox_cannot_change_its_password(
    site: Site, dovecot: PrivateDovecot, browser
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    address = "pvnam@example.gov.vn"
    initial = site.add_mailbox(address, dovecot)
    site.gateway.cli("mailbox", "lock", address, "--reason", "leaked password")
    fill(browser, site, address, initial, NEW, NEW)
    submit(browser)
    assert "locked" in browser.find_element(By.ID, "current-error").text
    site.gateway.cli("mailbox", "unlock", address)  # a new password; the page's one never set
    assert site.smtp_login(address, NEW)[0] == 535
    site.gateway.wait_event(
        "auth_failure", lambda e: e.get("listener") == "web" and "locked" in e.get("reason", "")
    )


def test_forged_posts_are_refused(site: Site, dovecot: PrivateDovecot, browser) -> None:  # type: ignore[no-untyped-def]
    """A post without the form token (a script), and one from another origin in the
    browser (a data: page, Origin: null), change nothing."""

    address = "dqhung@example.gov.vn"
    initial = site.add_mailbox(address, dovecot)
    fields = {"address": address, "current": initial, "new": NEW, "confirm": NEW}
    request = urllib.request.Request(site.url, data=urllib.parse.urlencode(fields).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=site.tls(), timeout=30)
    assert refused.value.code == 403
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    evil = f'<form method="post" action="{site.url}">{inputs}<button id="go">Win</button></form>'
    browser.get("data:text/html;charset=utf-8," + urllib.parse.quote(evil))
    assert "Not done" in click_and_wait(browser, "#go")
    assert site.smtp_login(address, initial)[0] == 235
    assert site.smtp_login(address, NEW)[0] == 535
    reasons = [e["reason"] for e in site.gateway.events("password_change_refused")]
    assert sum("[csrf]" in r for r in reasons) >= 2


def test_refuse_must_change_names_the_page(
    make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink, tmp_path: Path
) -> None:
    site = start_site(make_gateway, dovecot, sink, tmp_path, auth={"refuse_must_change": True})
    address = "nthlan@example.gov.vn"
    initial = site.add_mailbox(address, dovecot)
    code, text = site.smtp_login(address, initial)
    assert code == 535 and site.url in text and "[auth.refuse_must_change]" in text
    imap = site.imap()
    with pytest.raises(imaplib.IMAP4.error) as refused:
        imap.login(address, initial)
    assert "EXPIRED" in str(refused.value) and site.url in str(refused.value)
    refusals = site.gateway.wait_events("login_refused", 2)
    assert {e["listener"] for e in refusals} == {"submission", "imap"}


def test_sighup_serves_a_renewed_certificate_on_the_page_and_imaps(
    site: Site, tmp_path: Path
) -> None:
    """Both listeners that own their TLS socket (the page's and IMAPS) follow a SIGHUP."""

    def served_certificate(port: int) -> bytes:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            certificate = tls.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate

    ports = (site.web_port, site.gateway.imaps_port)
    before = [served_certificate(port) for port in ports]
    (tmp_path / "renewed").mkdir()
    renewed = make_tls_files(tmp_path / "renewed")
    config = site.gateway.config_path.read_text(encoding="utf-8")
    cert_path = Path(re.search(r'tls_cert = "([^"]+)"', config).group(1))  # type: ignore[union-attr]
    key_path = Path(re.search(r'tls_key = "([^"]+)"', config).group(1))  # type: ignore[union-attr]
    shutil.copyfile(renewed.cert, cert_path)
    shutil.copyfile(renewed.key, key_path)
    reloads = len(site.gateway.events("config_reloaded"))
    site.gateway.signal(1)  # SIGHUP
    site.gateway.wait_events("config_reloaded", reloads + 1)
    expected = ssl.PEM_cert_to_DER_cert(
        renewed.cert.read_text().split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n"
    )
    after = [served_certificate(port) for port in ports]
    assert after == [expected, expected] and expected not in before
