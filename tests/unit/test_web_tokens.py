"""gateway/web/csrf.py and rate.py: form tokens expire and bind to their cookie; posts
are counted per client over a sliding minute."""

from __future__ import annotations

from gateway.web.csrf import FormTokens
from gateway.web.rate import PostLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_token_is_valid_with_its_own_nonce_until_it_expires() -> None:
    clock = Clock()
    tokens = FormTokens(clock)
    issued = tokens.issue(600)
    assert tokens.valid(issued.nonce, issued.token)
    other = tokens.issue(600)
    assert not tokens.valid(other.nonce, issued.token)
    assert not tokens.valid(issued.nonce, None) and not tokens.valid(None, issued.token)
    clock.now += 601
    assert not tokens.valid(issued.nonce, issued.token)


def test_tampered_expiry_and_other_processes_tokens_are_refused() -> None:
    clock = Clock()
    tokens = FormTokens(clock)
    issued = tokens.issue(600)
    expires, mac = issued.token.split(".")
    assert not tokens.valid(issued.nonce, f"{int(expires) + 3600}.{mac}")
    assert not tokens.valid(issued.nonce, "garbage")
    assert not FormTokens(clock).valid(issued.nonce, issued.token)  # a restart: new key


def test_posts_are_limited_per_client_over_a_sliding_minute() -> None:
    clock = Clock()
    limiter = PostLimiter(clock)
    assert [limiter.allow("a", 3) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 3)  # another client is not affected
    clock.now += 30
    assert not limiter.allow("a", 3)
    clock.now += 31  # the first three are now older than a minute
    assert limiter.allow("a", 3)
