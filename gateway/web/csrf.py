"""Form tokens against cross-site request forgery (the "signed double-submit" pattern).

GET hands out a random nonce in a ``__Host-`` cookie (Secure, HttpOnly, SameSite=Strict,
path /, no domain) and, in the form, a token binding that nonce to an expiry with an HMAC
under a key drawn per process. A POST stands only when the cookie's nonce and the form's
token agree and the token has not expired. A forged cross-site POST has neither: the
browser does not send a SameSite=Strict cookie from another site, and the attacker cannot
read the token. A restart draws a new key, so an open form is simply shown again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE_NAME = "__Host-mailgate-form"
FIELD_NAME = "form_token"


@dataclass(frozen=True, slots=True)
class Issued:
    nonce: str  # goes in the cookie
    token: str  # goes in the form


class FormTokens:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock

    def issue(self, lifetime: float) -> Issued:
        nonce = secrets.token_urlsafe(32)
        expires = int(self._clock() + lifetime)
        return Issued(nonce, f"{expires}.{self._mac(nonce, expires)}")

    def valid(self, nonce: str | None, token: str | None) -> bool:
        """True when ``token`` was issued with ``nonce`` by this process and is current."""
        if not nonce or not token or len(token) > 200 or len(nonce) > 200:
            return False
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit():
            return False
        expires = int(expires_text)
        if expires < self._clock():
            return False
        return hmac.compare_digest(mac, self._mac(nonce, expires))

    def _mac(self, nonce: str, expires: int) -> str:
        message = f"{nonce}|{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
