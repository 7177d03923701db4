"""gateway/web/server.py over HTTP with aiohttp's test client: headers, the form token,
origin, size and rate limits, and a change end to end (TLS is tested in integration)."""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import Authenticator
from gateway.auth_throttle import LoginThrottle
from gateway.config import AuthSection, ListenAddress, WebSection
from gateway.directory.mailboxes import Directory, Registration
from gateway.web.csrf import COOKIE_NAME
from gateway.web.server import SECURITY_HEADERS, PasswordPage

USER, PASSWORD, NEW = "nvbinh@example.gov.vn", "Ban-Dau-2026", "Mật-Khẩu-Mới-2026"
CHEAP = AuthSection(argon2_memory_kib=8, argon2_time_cost=1, argon2_parallelism=1)
TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


class Events:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.records.append({"event": event, **fields})


@dataclass
class FakeConfig:
    web: WebSection


@dataclass
class Services:
    """What the page needs of the Runtime; the authenticator and directory are real."""

    config: FakeConfig
    authenticator: Authenticator
    events: Events = field(default_factory=Events)
    tls: Any = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test"))


@pytest.fixture
def services(tmp_path: Path):
    directory = Directory.for_data_dir(tmp_path, CHEAP.argon2().hasher())
    directory.add(Registration(USER, "Nguyễn Văn Bình"), PASSWORD, must_change=True)
    auth = Authenticator(directory, LoginThrottle(5, 100, 900), CHEAP)
    web = WebSection(listen=ListenAddress("127.0.0.1", 8443), max_posts_per_client=4)
    yield Services(FakeConfig(web), auth)
    auth.close()
    directory.close()


@pytest.fixture
async def client(services: Services):
    page = PasswordPage(services)  # type: ignore[arg-type]
    async with TestClient(TestServer(page.app())) as test_client:
        yield test_client


@pytest.fixture
def browser(client: TestClient) -> Browser:
    return Browser(client)


class Browser:
    """A client that keeps the form cookie: aiohttp's jar, rightly, sends no ``Secure``
    cookie over the plain HTTP of the test server, so it is carried here by hand."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.cookie = ""

    async def fresh_token(self) -> str:
        response = await self.client.get("/password")
        assert response.status == 200
        self.cookie = response.cookies[COOKIE_NAME].value
        match = TOKEN.search(await response.text())
        assert match is not None
        return match.group(1)

    async def post(self, data: Any = None, headers: dict[str, str] | None = None, **kw: Any):
        headers = {"Cookie": f"{COOKIE_NAME}={self.cookie}", **(headers or {})}
        return await self.client.post("/password", data=data, headers=headers, **kw)


def form(token: str, **changes: str) -> dict[str, str]:
    values = {"form_token": token, "address": USER, "current": PASSWORD, "new": NEW}
    values["confirm"] = changes.pop("confirm", changes.get("new", NEW))
    values.update(changes)
    return values


async def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for path in ("/password", "/password.css", "/nothing-here"):
        response = await client.get(path, allow_redirects=False)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (path, name)
    page = await client.get("/password")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Max-Age=600", "Path=/"):
        assert attribute in cookie


async def test_form_works_end_to_end_and_clears_must_change(
    browser: Browser, services: Services
) -> None:
    token = await browser.fresh_token()
    response = await browser.post(form(token))
    text = await response.text()
    assert response.status == 200, text
    assert "Password changed" in text and NEW not in text and PASSWORD not in text
    directory = services.authenticator.directory
    assert directory.check_password(USER, NEW)
    mailbox = directory.get(USER)
    assert mailbox is not None and not mailbox.must_change
    changed = [e for e in services.events.records if e["event"] == "password_changed"]
    assert changed and changed[0]["actor"] == "user" and changed[0]["listener"] == "web"


async def test_weak_password_shows_its_rule_next_to_the_field(browser: Browser) -> None:
    token = await browser.fresh_token()
    response = await browser.post(form(token, new="yeu", confirm="yeu"))
    text = await response.text()
    assert response.status == 400
    assert 'aria-describedby="new-error new-hint"' in text and 'aria-invalid="true"' in text
    error = re.search(r'<p class="error" id="new-error">(.*?)</p>', text)
    assert error is not None and "at least 8 characters" in error.group(1)
    assert "Quy tắc mật khẩu" in error.group(1)
    assert PASSWORD not in text and 'value="yeu"' not in text  # no password echoed
    assert f'value="{USER}"' in text  # the address is kept


async def test_post_without_the_form_token_is_refused(browser: Browser, services: Services) -> None:
    await browser.fresh_token()  # the cookie is there, the token is not
    response = await browser.post(form(""))
    assert response.status == 403
    assert services.authenticator.directory.check_password(USER, PASSWORD)
    refused = [e for e in services.events.records if e["event"] == "password_change_refused"]
    assert refused and "[csrf]" in refused[-1]["reason"]


async def test_token_from_another_cookie_is_refused(browser: Browser, services: Services) -> None:
    """The attacker's own token (fetched with the attacker's cookie) is no good with ours."""
    token = await browser.fresh_token()
    await browser.fresh_token()  # the victim's cookie now
    response = await browser.post(form(token))
    assert response.status == 403
    assert services.authenticator.directory.check_password(USER, PASSWORD)


async def test_cross_origin_post_is_refused(browser: Browser, services: Services) -> None:
    token = await browser.fresh_token()
    response = await browser.post(form(token), headers={"Origin": "https://evil.example"})
    assert response.status == 403
    assert services.authenticator.directory.check_password(USER, PASSWORD)


async def test_large_and_non_form_bodies_are_refused(browser: Browser) -> None:
    token = await browser.fresh_token()
    big = await browser.post(form(token, address="a" * 20_000))
    assert big.status == 413
    json_body = await browser.post(json={"address": USER})
    assert json_body.status == 415


async def test_posts_per_client_are_limited(browser: Browser) -> None:
    token = await browser.fresh_token()
    codes = []
    for _ in range(6):
        response = await browser.post(form(token, confirm="x"))
        codes.append(response.status)
    assert codes == [400, 400, 400, 400, 429, 429]


async def test_public_url_origin_is_accepted(browser: Browser, services: Services) -> None:
    """Behind a reverse proxy the Host may differ; the configured public origin is ours."""
    services.config.web = replace(
        services.config.web, public_url="https://matkhau.example.gov.vn/password"
    )
    token = await browser.fresh_token()
    response = await browser.post(form(token), headers={"Origin": "https://matkhau.example.gov.vn"})
    assert response.status == 200


async def test_directory_failure_is_a_503_not_a_traceback(
    browser: Browser, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(proved: Any, new_password: str) -> bool:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(services.authenticator, "change_password", broken)
    token = await browser.fresh_token()
    response = await browser.post(form(token))
    assert response.status == 503
    assert (
        response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    )
    assert "try again later" in await response.text()
    assert NEW not in repr(services.events.records)
