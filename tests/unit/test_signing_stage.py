"""Which signatures the signing stage makes on the event loop (gateway/signing/stage.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.signing.protect import Plan
from gateway.signing.stage import _cheap_to_sign


def smime_signer(key: object) -> tuple[str, object]:
    return ("smime", SimpleNamespace(key=key, certificate=None, chain=()))


@pytest.mark.parametrize(
    ("plan", "cheap"),
    [
        (Plan(), True),  # nothing to do
        (Plan(signer=smime_signer(rsa.generate_private_key(65537, 2048))), True),
        (Plan(signer=smime_signer(ec.generate_private_key(ec.SECP256R1()))), True),
        (Plan(signer=smime_signer(rsa.generate_private_key(65537, 3072))), False),
        (Plan(signer=("pgp", object())), False),  # gpg: milliseconds, in a thread
        (Plan(signer=smime_signer(rsa.generate_private_key(65537, 2048)), encrypt=True), False),
    ],
    ids=["nothing", "rsa2048", "p256", "rsa3072", "pgp", "encrypt"],
)
def test_only_cheap_signatures_are_made_on_the_loop(plan: Plan, cheap: bool) -> None:
    assert _cheap_to_sign(plan) is cheap
