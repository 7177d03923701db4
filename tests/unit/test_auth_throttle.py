"""Failed-login throttling per address and per client (gateway/auth_throttle.py)."""

from __future__ import annotations

from gateway.auth_throttle import LoginThrottle


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, per_address: int = 3, per_client: int = 5) -> LoginThrottle:
    return LoginThrottle(per_address, per_client, window_seconds=60, clock=clock)


def test_nothing_blocked_at_first() -> None:
    assert throttle(Clock()).blocked("dvbe@most.gov.vn", "192.0.2.1") is None


def test_per_address_limit() -> None:
    clock = Clock()
    limiter = throttle(clock)
    for _ in range(2):
        limiter.failed("dvbe@most.gov.vn", "192.0.2.1")
        clock.now += 1
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") is None
    limiter.failed("dvbe@most.gov.vn", "192.0.2.2")
    why = limiter.blocked("dvbe@most.gov.vn", "198.51.100.9")  # from anywhere
    assert why == "too many failed logins for this user name"
    assert limiter.blocked("DVBE@MOST.gov.vn", "198.51.100.9") == why  # case-insensitive
    assert limiter.blocked("other@most.gov.vn", "198.51.100.9") is None


def test_per_client_limit() -> None:
    clock = Clock()
    limiter = throttle(clock)
    for n in range(5):  # a different address each time: the per-address limit never trips
        limiter.failed(f"user{n}@most.gov.vn", "192.0.2.1")
    why = limiter.blocked("fresh@most.gov.vn", "192.0.2.1")
    assert why == "too many failed logins from 192.0.2.1"
    assert limiter.blocked("fresh@most.gov.vn", "192.0.2.2") is None


def test_window_expiry() -> None:
    clock = Clock()
    limiter = throttle(clock)
    for _ in range(3):
        limiter.failed("dvbe@most.gov.vn", "192.0.2.1")
    clock.now += 59.9
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") is not None
    clock.now += 0.2  # the failures are now more than 60 s old
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") is None


def test_window_slides() -> None:
    clock = Clock()
    limiter = throttle(clock)
    limiter.failed("dvbe@most.gov.vn", "192.0.2.1")  # t=1000
    clock.now += 40
    limiter.failed("dvbe@most.gov.vn", "192.0.2.1")  # t=1040
    limiter.failed("dvbe@most.gov.vn", "192.0.2.1")
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") is not None
    clock.now += 21  # t=1061: the first failure left the window, two remain
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") is None
    limiter.failed("dvbe@most.gov.vn", "192.0.2.1")
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") is not None


def test_success_clears_the_address_but_not_the_client() -> None:
    clock = Clock()
    limiter = throttle(clock, per_address=3, per_client=4)
    for _ in range(3):
        limiter.failed("dvbe@most.gov.vn", "192.0.2.1")
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.7") is not None
    limiter.succeeded("DVBE@most.gov.vn")
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.7") is None
    # the client's failures still count: one more and it is blocked for every address
    limiter.failed("other@most.gov.vn", "192.0.2.1")
    assert limiter.blocked("dvbe@most.gov.vn", "192.0.2.1") == (
        "too many failed logins from 192.0.2.1"
    )
