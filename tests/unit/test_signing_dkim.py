"""gateway/signing/dkim.py and results.py without a network: signatures made with
cryptography's keys verify with dkimpy's own code; results name what they saw."""

from __future__ import annotations

import random

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy

from gateway.signing import dkim, results
from gateway.signing.stage import from_domain

MESSAGE = (
    b"From: =?utf-8?b?VHLhuqduIEhvYQ==?= <hoa@example.gov.vn>\r\n"
    b"To: partner@other.org\r\nSubject: Bao cao\r\n"
    b"Date: Mon, 07 Dec 2026 10:00:00 +0700\r\nMessage-ID: <a1@example.gov.vn>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "Nội dung công văn.\r\n".encode() * 50
)
RSA = rsa.generate_private_key(65537, 2048)
ED = ed25519.Ed25519PrivateKey.generate()


def lookup_for(key: dkim.SigningKey):  # type: ignore[no-untyped-def]
    value = dkim.record_text("mail", "example.gov.vn", key)
    return lambda name, timeout=5: value if name == b"mail._domainkey.example.gov.vn." else None


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy_and_breaks_when_tampered(key: dkim.SigningKey) -> None:
    signed = dkim.signature_field(MESSAGE, "example.gov.vn", "mail", key) + MESSAGE
    lookup = lookup_for(key)
    assert dkimpy.verify(signed, dnsfunc=lookup)
    assert [r.result for r in dkim.verify(signed, lookup)] == ["pass"]
    body_changed = signed.replace("công văn".encode(), b"cong van", 1)
    assert [r.result for r in dkim.verify(body_changed, lookup)] == ["fail"]
    subject_changed = signed.replace(b"Subject: Bao cao", b"Subject: Bao cao!")
    assert [r.result for r in dkim.verify(subject_changed, lookup)] == ["fail"]


def test_relaxed_canonicalisation_survives_refolding_and_trailing_spaces() -> None:
    signed = dkim.signature_field(MESSAGE, "example.gov.vn", "mail", RSA) + MESSAGE
    relayed = signed.replace(b"Subject: Bao cao", b"Subject:   Bao\r\n  cao")
    relayed = relayed.replace(b"\r\n\r\n", b"\r\n\r\n", 1).replace(b".\r\n", b".  \r\n")
    assert [r.result for r in dkim.verify(relayed, lookup_for(RSA))] == ["pass"]


def test_from_is_signed_twice_so_a_second_from_breaks_it() -> None:
    field = dkim.signature_field(MESSAGE, "example.gov.vn", "mail", RSA)
    tags = b"".join(field.split(b"\r\n"))
    h = tags.split(b"h=", 1)[1].split(b";", 1)[0].replace(b" ", b"").split(b":")
    assert h.count(b"from") == 2
    forged = field + b"From: boss@example.gov.vn\r\n" + MESSAGE
    assert [r.result for r in dkim.verify(forged, lookup_for(RSA))] == ["fail"]


def test_missing_key_is_permerror_and_a_dns_failure_temperror() -> None:
    signed = dkim.signature_field(MESSAGE, "example.gov.vn", "mail", RSA) + MESSAGE
    (missing,) = dkim.verify(signed, lambda name, timeout=5: None)
    assert missing.result == "permerror" and missing.domain == "example.gov.vn"

    def failing(name: bytes, timeout: float = 5) -> bytes:
        raise dkim.TxtTemporaryError("DNS lookup timed out")

    (unknown,) = dkim.verify(signed, failing)
    assert unknown.result == "temperror" and unknown.selector == "mail"
    assert dkim.verify(MESSAGE, failing) == []  # not signed: nothing looked up


def test_record_is_one_line_and_splits_long_keys_into_txt_strings() -> None:
    line = dkim.dns_record("mail", "example.gov.vn", RSA)
    assert line.startswith('mail._domainkey.example.gov.vn. IN TXT "v=DKIM1; k=rsa; p=')
    assert "\n" not in line and all(len(p) <= 255 for p in line.split('"')[1::2])
    assert dkim.record_text("mail", "example.gov.vn", ED).startswith(b"v=DKIM1; k=ed25519; p=")


def test_only_our_authentication_results_are_dropped() -> None:
    section = (
        b"Authentication-Results: MX.example.gov.vn; dkim=pass\r\n"
        b"Authentication-Results: mx.example.gov.vn 1;\r\n\tdkim=pass header.d=x\r\n"
        b"Authentication-Results: relay.other.vn; spf=pass\r\n"
        b"Subject: mx.example.gov.vn\r\n"
    )
    kept, dropped = results.drop_ours(section, "mx.example.gov.vn")
    assert dropped == 2
    assert (
        kept
        == b"Authentication-Results: relay.other.vn; spf=pass\r\nSubject: mx.example.gov.vn\r\n"
    )


def test_header_value_names_each_method() -> None:
    value = results.header_value(
        "mx.example.gov.vn",
        [
            results.MethodResult("dkim", "pass", (("header.d", "a.vn"), ("header.s", "m"))),
            results.MethodResult("smime", "fail", reason='bad "sig"'),
        ],
    )
    assert value == (
        "mx.example.gov.vn;\r\n\tdkim=pass header.d=a.vn header.s=m;"
        '\r\n\tsmime=fail reason="bad sig"'
    )


def test_from_domain() -> None:
    assert from_domain(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n") == "example.gov.vn"
    assert from_domain(b"To: x@y.vn\r\n") is None


def test_an_inbound_check_that_cannot_run_is_temperror_not_a_refusal(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from gateway.signing import smime
    from gateway.signing.keys import KeyStore
    from gateway.signing.stage import SigningStage, StageSettings
    from gateway.spool import Body, Spool

    settings = StageSettings("mx.example.gov.vn", ("example.gov.vn",), None, True, 1.0, None)
    stage = SigningStage(KeyStore(tmp_path), Spool(tmp_path / "spool"), settings)
    signed = (
        b"From: a@other.vn\r\nContent-Type: multipart/signed;"
        b' protocol="application/pkcs7-signature"; boundary="b"\r\n\r\n--b--\r\n'
    )

    def slow(*args: object, **kwargs: object) -> None:
        raise smime.SmimeTemporaryError("openssl cms -verify took over 10 s")

    monkeypatch.setattr(smime, "verify", slow)
    examined = stage._examine(Body.from_bytes(signed), [])
    assert [(r.method, r.result) for r in examined.found] == [
        ("dkim", "none"),
        ("smime", "temperror"),
    ]


def _random_bytes(rng: random.Random, pieces: list[bytes], most: int) -> bytes:
    return b"".join(rng.choice(pieces) for _ in range(rng.randrange(most)))


def test_relaxed_body_is_dkimpys_byte_for_byte() -> None:
    """The fast canonicalisation against dkimpy's own, on bodies made of the pieces its
    rules are about: runs of spaces and tabs, at line ends and inside, bare CR and LF,
    empty lines at the end, no final CRLF, nothing at all."""
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    pieces = [
        b" ",
        b"  ",
        b"\t",
        b" \t ",
        b"\r\n",
        b"\r\n\r\n",
        b"\r",
        b"\n",
        b"a",
        b"x y",
        b"\xe1\xba\xad",
    ]
    rng = random.Random(20261207)
    bodies = [b"", b"\r\n", b"\r\n\r\n", b" ", b"a", b"a \r\n \r\n\r\n"]
    bodies += [_random_bytes(rng, pieces, 40) for _ in range(5000)]
    for body in bodies:
        assert dkim.relaxed_body(body) == relaxed.canonicalize_body(body), body


def test_cut_is_where_dkimpy_cuts() -> None:
    pieces = [b"A: b\r\n", b" folded\r\n", b"\r\n", b"\n", b"\r", b"text ", b"B:\r\n"]
    rng = random.Random(7)
    messages = [MESSAGE, b"From: a@b\r\n", b"\r\nbody\r\n", b"From: a@b\r\n\r\n"]
    messages += [b"From: a@b\r\n" + _random_bytes(rng, pieces, 30) for _ in range(3000)]
    for message in messages:
        try:
            whole = dkimpy.DKIM(message)
        except dkimpy.MessageFormatError:
            with pytest.raises(dkimpy.MessageFormatError):
                dkim._cut(message)
            continue
        parsed, body = dkim._cut(message)
        assert (parsed.headers, body) == (whole.headers, whole.body), message


def test_cut_parses_only_the_header_section_of_crlf_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of ``_cut``: dkimpy never splits a CRLF body line by line."""
    seen: list[bytes] = []

    class Recording(dkimpy.DKIM):
        def __init__(self, message: bytes, *args: object, **kwargs: object) -> None:
            seen.append(message)
            super().__init__(message, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dkim.dkimpy, "DKIM", Recording)
    _, body = dkim._cut(MESSAGE)
    head, _sep, rest = MESSAGE.partition(b"\r\n\r\n")
    assert seen == [head + b"\r\n\r\n"] and body == rest
    dkim._cut(MESSAGE.replace(b"\r\n", b"\n", 1))  # a bare LF: dkimpy's own parse, whole
    assert len(seen[-1]) == len(MESSAGE) - 1


def test_a_plain_from_is_read_as_the_email_package_reads_it() -> None:
    """``addresses_in`` (the From: checks of sender_identity and the signing stage) reads
    ``Name <a@b>`` and ``a@b`` itself and leaves every other shape to
    ``email.utils.getaddresses``: on generated shapes both give the same addresses."""
    import email.utils
    import random

    from gateway import pipeline
    from gateway.signing import stage

    draw = random.Random(11)
    local = [*"abcXYZ09.-_+!#$%&'*/=?^`{|}~", "ễ", "đ"]
    name = [*"abc XYZ.", "Văn", "'", "!", "=?utf-8?q?x?=", "ễ", '"', "(", ",", ":", ";", "<"]
    read_fast = 0
    for _ in range(5000):
        part = ["".join(draw.choice(local) for _ in range(draw.randint(1, 6))) for _ in "ld"]
        shown = "".join(draw.choice(name) for _ in range(draw.randint(0, 4)))
        value = draw.choice(
            [f"{shown} <{part[0]}@{part[1]}>", f"{part[0]}@{part[1]}", f" {part[0]}@{part[1]} "]
        )
        read_fast += pipeline._PLAIN_FIELD.fullmatch(value) is not None
        expected = [a.lower() for _, a in email.utils.getaddresses([value])]
        assert pipeline.addresses_in([value]) == expected, value
        headers = f"Subject: s\r\nFrom: {value}\r\n\r\n".encode()
        first = next((a.strip("<>") for a in expected if "@" in a), None)
        assert stage.from_address(headers) == first, value
    assert read_fast > 2500  # the fast path was taken, not only the parser
    folded = b"From: =?utf-8?b?Tmfhu4VuIFbEg24gQQ==?=\r\n <NVA@Bo.Gov.VN>\r\n\r\n"
    assert stage.from_domain(folded) == "bo.gov.vn"
    assert stage.from_address(b'From: "Doe, J" <j@d.vn>, k@e.vn\r\n\r\n') == "j@d.vn"
    assert pipeline.addresses_in(["a@b.vn", "c@d.vn"]) == ["a@b.vn", "c@d.vn"]
