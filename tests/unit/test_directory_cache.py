"""The RCPT cache remembers acceptances only, and only for its ttl."""

from __future__ import annotations

from gateway.directory.cache import AcceptedRecipients


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_remembers_case_insensitively_until_the_ttl() -> None:
    clock = Clock()
    cache = AcceptedRecipients(ttl=10, clock=clock)
    assert "an@example.gov.vn" not in cache
    cache.add("An@Example.gov.vn")
    assert "an@example.gov.vn" in cache
    clock.now += 9.9
    assert "AN@example.gov.vn" in cache
    clock.now += 0.2
    assert "an@example.gov.vn" not in cache, "a revocation takes effect after the ttl"


def test_size_bound() -> None:
    cache = AcceptedRecipients(ttl=10, size=3, clock=Clock())
    for n in range(3):
        cache.add(f"u{n}@x.vn")
    cache.add("u3@x.vn")
    assert "u3@x.vn" in cache
    assert sum(f"u{n}@x.vn" in cache for n in range(3)) == 0


def test_forgets_everything_when_the_directory_changes() -> None:
    """A revocation committed by any process applies to the next RCPT, not after the ttl."""
    versions = iter([1, 1, 2, None, None])
    cache = AcceptedRecipients(ttl=10, clock=Clock(), version=lambda: next(versions))
    assert "an@example.gov.vn" not in cache  # version 1 noted
    cache.add("an@example.gov.vn")
    assert "an@example.gov.vn" in cache  # still 1
    assert "an@example.gov.vn" not in cache, "the directory changed: read it again"
    cache.add("an@example.gov.vn")
    assert "an@example.gov.vn" not in cache, "an unreadable version remembers nothing"


def test_clear() -> None:
    cache = AcceptedRecipients(ttl=10, clock=Clock())
    cache.add("an@example.gov.vn")
    cache.clear()
    assert "an@example.gov.vn" not in cache


def test_an_answer_read_before_a_change_is_not_kept() -> None:
    """Session A misses, looks X up (active), X is revoked meanwhile and session B's RCPT
    sees the new version first: A's late answer must not be remembered under it."""
    version = [1]
    cache = AcceptedRecipients(ttl=10, clock=Clock(), version=lambda: version[0])
    assert "x@example.gov.vn" not in cache  # A misses at version 1
    started = cache.generation  # A's lookup begins; it reads X as active
    version[0] = 2  # the CLI revokes X
    assert "y@example.gov.vn" not in cache  # B's RCPT sees version 2 first
    cache.add("x@example.gov.vn", started)  # A's answer arrives late
    assert "x@example.gov.vn" not in cache


def test_an_answer_read_before_a_reload_is_not_kept() -> None:
    cache = AcceptedRecipients(ttl=10, clock=Clock())
    started = cache.generation
    cache.clear()  # SIGHUP while the lookup was in flight
    cache.add("x@example.gov.vn", started)
    assert "x@example.gov.vn" not in cache
