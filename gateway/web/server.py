"""HTTPS for the password page, on the gateway's own event loop.

aiohttp (aio-libs, the asyncio HTTP library most projects on asyncio use) runs in the
loop that serves SMTP and IMAP: no second process or thread to keep in step, and the
page reaches the one authenticator (its throttle, its argon2 pool, its cache) directly.
Its HTTP parser is the library's, not ours; we keep the body small and read it ourselves.

The TLS certificate is smtp.tls_cert/tls_key; the site's context hands each new handshake
to the one SIGHUP last built (``gateway.tls.following_context``), so a renewed
certificate serves the next connection without a restart.

Every response carries the headers that keep the page in its own frame and off other
origins' reach (CSP, HSTS, frame-ancestors/X-Frame-Options, no-store, no referrer).
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from gateway.tls import following_context
from gateway.web import page
from gateway.web.csrf import COOKIE_NAME, FIELD_NAME, FormTokens
from gateway.web.form import Message, Outcome, Submission, change_password
from gateway.web.rate import PostLimiter

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.config import Config
    from gateway.events.writer import EventLog

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "Strict-Transport-Security": "max-age=31536000",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # "same-origin", not "no-referrer": with no-referrer browsers send "Origin: null" on
    # the form's own POST, and the origin check below could not tell it from a forgery.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Server": "mailgate",
}
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 8

FORGED = Message(
    "Biểu mẫu không hợp lệ hoặc đã hết hạn: hãy mở lại trang và thử lại.",
    "The form is not valid or has expired: open the page again and retry.",
)
TOO_MANY = Message(
    "Quá nhiều yêu cầu từ địa chỉ này: hãy thử lại sau một phút.",
    "Too many requests from this address: try again in a minute.",
)
TOO_LARGE = Message("Yêu cầu quá lớn.", "The request is too large.")
UNAVAILABLE = Message(
    "Tạm thời không đổi được mật khẩu: hãy thử lại sau.",
    "The password cannot be changed right now: try again later.",
)
NOT_A_FORM = Message("Yêu cầu không phải là biểu mẫu.", "The request is not a form.")


class PageServices(Protocol):
    log: logging.Logger

    @property
    def config(self) -> Config: ...

    @property
    def tls(self) -> ssl.SSLContext | None: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def authenticator(self) -> Authenticator: ...


class PasswordPage:
    """The /password page and the site serving it."""

    def __init__(self, services: PageServices) -> None:
        self.services = services
        self.tokens = FormTokens()
        self.posts = PostLimiter()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)  # the config's cap is checked below
        app.router.add_get("/", self._root)
        app.router.add_get("/password", self._form)
        app.router.add_post("/password", self._submit)
        app.router.add_get("/password.css", self._css)
        app.on_response_prepare.append(_add_security_headers)
        return app

    async def start(self) -> str:
        """Listen on ``web.listen`` with HTTPS; returns what was bound."""
        config = self.services.config
        assert config.web is not None and config.smtp.tls_cert and config.smtp.tls_key
        tls = following_context(config.smtp.tls_cert, config.smtp.tls_key, self._current_tls)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        address = config.web.listen
        site = web.TCPSite(
            self._runner, address.host, address.port, ssl_context=tls, reuse_address=True
        )
        await site.start()
        return f"web {address}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _current_tls(self) -> ssl.SSLContext | None:
        return self.services.tls

    # -- handlers ------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/password")

    async def _css(self, request: web.Request) -> web.Response:
        return web.Response(text=page.CSS, content_type="text/css", charset="utf-8")

    async def _form(self, request: web.Request) -> web.Response:
        return self._form_response(Outcome(False, ""), status=200)

    async def _submit(self, request: web.Request) -> web.Response:
        web_config = self.services.config.web
        assert web_config is not None
        client = request.remote or "unknown"

        def emit(event: str, **fields: Any) -> None:
            self.services.events.emit(event, listener="web", client=client, **fields)

        if not self.posts.allow(client, web_config.max_posts_per_client):
            emit("password_change_refused", reason="[web.max_posts_per_client] too many posts")
            return _error(TOO_MANY, 429)
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
        own = {f"https://{request.host}", _origin_of(web_config.public_url)}
        if (origin is not None and origin not in own) or fetch_site not in ("same-origin", "none"):
            emit("password_change_refused", reason="[csrf] cross-origin post")
            return _error(FORGED, 403)
        if request.content_type != FORM_TYPE:
            return _error(NOT_A_FORM, 415)
        body = await _read_capped(request, web_config.max_request_bytes)
        if body is None:
            emit("password_change_refused", reason="[web.max_request_bytes] request too large")
            return _error(TOO_LARGE, 413)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                              max_num_fields=MAX_FIELDS)  # fmt: skip
        except (UnicodeDecodeError, ValueError):
            return _error(NOT_A_FORM, 400)
        fields = dict(pairs)
        if not self.tokens.valid(request.cookies.get(COOKIE_NAME), fields.get(FIELD_NAME)):
            emit("password_change_refused", reason="[csrf] missing, forged or expired form token")
            return _error(FORGED, 403)
        try:
            outcome = await change_password(
                self.services.authenticator, Submission.from_form(fields), client, emit
            )
        except Exception as exc:  # the directory busy or broken: say so, keep serving
            self.services.log.error("password page: %s", type(exc).__name__)
            emit("password_change_refused", reason=f"[web] internal error: {type(exc).__name__}")
            return _error(UNAVAILABLE, 503)
        if outcome.changed:
            response = web.Response(
                text=page.render_done(outcome.address), content_type="text/html"
            )
            response.del_cookie(
                COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Strict"
            )
            return response
        return self._form_response(outcome, status=400)

    def _form_response(self, outcome: Outcome, status: int) -> web.Response:
        """The form with a fresh token, and its nonce in the cookie."""
        web_config = self.services.config.web
        assert web_config is not None
        issued = self.tokens.issue(web_config.form_seconds)
        response = web.Response(
            text=page.render_form(outcome, issued.token), content_type="text/html", status=status
        )
        response.set_cookie(
            COOKIE_NAME, issued.nonce, max_age=int(web_config.form_seconds), path="/",
            secure=True, httponly=True, samesite="Strict",
        )  # fmt: skip
        return response


def _origin_of(url: str | None) -> str | None:
    """``https://host[:port]`` of ``web.public_url``, the origin users' browsers send."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _error(message: Message, status: int) -> web.Response:
    return web.Response(text=page.render_error(message), content_type="text/html", status=status)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (declared or sent)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
