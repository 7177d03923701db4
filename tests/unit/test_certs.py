"""gateway.signing.certs: loading bundles and judging certificates, checked against openssl."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.signing.certs import (
    CertificateError,
    addresses_of,
    describe,
    fingerprint,
    load_bundle,
    problem,
)
from tests.unit.smime_pki import NOW, forget_keys, make_ca, make_crl, make_leaf

ADDR = "an.nguyen@bo.gov.vn"


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def leaf(ca):
    return make_leaf(ca, ADDR)


def _no_secret(message: str, pair) -> None:
    pem = pair.key_pem().decode()
    body = "".join(pem.splitlines()[1:-1])
    assert "PRIVATE KEY" not in message
    assert body[:40] not in message


# --- load_bundle ---------------------------------------------------------------------


def test_pem_cert_key_and_chain_in_any_order(ca, leaf):
    bundle = load_bundle(ca.cert_pem() + leaf.key_pem() + leaf.cert_pem())
    assert bundle.certificate == leaf.cert
    assert bundle.chain == (ca.cert,)
    assert bundle.key is not None


def test_pem_certificate_only_picks_the_non_ca(ca, leaf):
    bundle = load_bundle(ca.cert_pem() + leaf.cert_pem())
    assert bundle.certificate == leaf.cert and bundle.key is None
    assert bundle.chain == (ca.cert,)


def test_encrypted_pkcs8_key_needs_its_password(leaf):
    data = leaf.cert_pem() + leaf.key_pem(b"m\xe1\xba\xadt kh\xe1\xba\xa9u")
    assert load_bundle(data, "mật khẩu".encode()).key is not None
    with pytest.raises(CertificateError, match="password is needed") as no_pw:
        load_bundle(data)
    with pytest.raises(CertificateError, match="wrong password") as bad_pw:
        load_bundle(data, b"wrong")
    _no_secret(str(no_pw.value), leaf)
    _no_secret(str(bad_pw.value), leaf)


def test_key_that_matches_no_certificate_is_refused(ca, leaf):
    other = make_leaf(ca, "khac@bo.gov.vn")
    with pytest.raises(CertificateError, match="does not match") as err:
        load_bundle(leaf.cert_pem() + other.key_pem())
    _no_secret(str(err.value), other)


def test_pkcs12_with_password_made_by_cryptography(ca, leaf):
    data = pkcs12.serialize_key_and_certificates(
        b"an", leaf.key, leaf.cert, [ca.cert], serialization.BestAvailableEncryption(b"s3cret")
    )
    bundle = load_bundle(data, b"s3cret")
    assert bundle.certificate == leaf.cert and bundle.chain == (ca.cert,)
    with pytest.raises(CertificateError, match="wrong password for the PKCS#12"):
        load_bundle(data, b"nope")
    with pytest.raises(CertificateError, match="password may be needed"):
        load_bundle(data)


def test_pkcs12_made_by_openssl_cli(tmp_path: Path, ca, leaf):
    cert_path, key_path = leaf.write(tmp_path, "an")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    out = tmp_path / "an.p12"
    args = ["pkcs12", "-export", "-in", str(cert_path), "-inkey", str(key_path)]
    args += ["-certfile", str(tmp_path / "ca.pem"), "-out", str(out), "-passout", "pass:pw"]
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)
        data = out.read_bytes()
    finally:
        forget_keys(tmp_path)
    bundle = load_bundle(data, b"pw")
    assert bundle.certificate == leaf.cert and bundle.key is not None
    assert bundle.chain == (ca.cert,)


def test_der_certificate_and_garbage(leaf):
    assert load_bundle(leaf.cert.public_bytes(serialization.Encoding.DER)).key is None
    with pytest.raises(CertificateError, match="not PEM"):
        load_bundle(b"\x00\x01 not a certificate")
    with pytest.raises(CertificateError, match="no certificate"):
        load_bundle(b"-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n")


# --- addresses, fingerprint, describe --------------------------------------------------


def test_addresses_from_san_and_subject_lower_cased(ca):
    assert addresses_of(make_leaf(ca, "An.Nguyen@Bo.Gov.VN").cert) == {ADDR}
    assert addresses_of(make_leaf(ca, "vanthu@bo.gov.vn", in_subject=True).cert) == {
        "vanthu@bo.gov.vn"
    }


def test_fingerprint_matches_openssl(tmp_path: Path, leaf):
    cert_path = tmp_path / "an.pem"
    cert_path.write_bytes(leaf.cert_pem())
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert_path), "-noout", "-fingerprint", "-sha256"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert fingerprint(leaf.cert) == out.split("=", 1)[1].strip().replace(":", "").lower()


def test_bundle_repr_shows_no_key(ca, leaf):
    assert "key" not in repr(load_bundle(leaf.cert_pem() + leaf.key_pem()))


def test_describe_names_what_keys_list_shows(leaf):
    info = describe(leaf.cert)
    assert info["addresses"] == [ADDR]
    assert info["fingerprint"] == fingerprint(leaf.cert)
    assert {"digitalSignature", "keyEncipherment", "emailProtection"} <= set(info["usages"])
    assert info["not_after"] == leaf.cert.not_valid_after_utc.isoformat()
    assert info["serial"] == format(leaf.cert.serial_number, "x")
    assert info["subject"] == "CN=Nguyễn an.nguyen"
    assert info["issuer"] == "CN=Test CA"


# --- problem ---------------------------------------------------------------------------


def test_usable_certificate_has_no_problem(leaf):
    assert problem(leaf.cert, ADDR.upper(), "sign", NOW) is None
    assert problem(leaf.cert, ADDR, "encrypt", NOW) is None


def test_wrong_address(leaf):
    assert problem(leaf.cert, "khac@bo.gov.vn", "sign", NOW) == (
        f"certificate is for {ADDR}, not khac@bo.gov.vn"
    )


def test_expired_names_the_date(ca):
    end = NOW - timedelta(days=2)
    old = make_leaf(ca, ADDR, not_before=NOW - timedelta(days=400), not_after=end)
    assert problem(old.cert, ADDR, "sign", NOW) == (
        f"certificate expired on {end:%Y-%m-%d %H:%M} UTC"
    )


def test_not_yet_valid(ca):
    start = NOW + timedelta(days=3)
    future = make_leaf(ca, ADDR, not_before=start)
    assert problem(future.cert, ADDR, "encrypt", NOW) == (
        f"certificate is not valid before {start:%Y-%m-%d %H:%M} UTC"
    )


def test_eku_without_email_protection(ca):
    tls = make_leaf(ca, ADDR, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert "lacks emailProtection" in str(problem(tls.cert, ADDR, "sign", NOW))


def test_key_usage_per_purpose(ca):
    enc_only = make_leaf(ca, ADDR, digital_signature=False)
    sig_only = make_leaf(ca, ADDR, key_encipherment=False)
    assert "lacks digitalSignature" in str(problem(enc_only.cert, ADDR, "sign", NOW))
    assert problem(enc_only.cert, ADDR, "encrypt", NOW) is None
    assert "lacks keyEncipherment" in str(problem(sig_only.cert, ADDR, "encrypt", NOW))
    assert problem(sig_only.cert, ADDR, "sign", NOW) is None


def test_ec_certificate_signs_but_cannot_be_encrypted_to(ca):
    ec_leaf = make_leaf(ca, ADDR, key=ec.generate_private_key(ec.SECP256R1()))
    assert problem(ec_leaf.cert, ADDR, "sign", NOW) is None
    assert "only RSA" in str(problem(ec_leaf.cert, ADDR, "encrypt", NOW))


def test_revoked_per_crl_names_the_date(ca, leaf):
    when = NOW - timedelta(days=1)
    crl = make_crl(ca, [leaf.cert], when)
    assert problem(leaf.cert, ADDR, "sign", NOW, crl) == (
        f"certificate was revoked on {when:%Y-%m-%d} UTC"
    )
    other_ca = make_ca("Other CA")
    assert problem(leaf.cert, ADDR, "sign", NOW, make_crl(other_ca, [leaf.cert], when)) is None
    assert problem(leaf.cert, ADDR, "sign", NOW, make_crl(ca, [], when)) is None


def test_naive_now_is_utc(leaf):
    assert problem(leaf.cert, ADDR, "sign", NOW.replace(tzinfo=None)) is None
