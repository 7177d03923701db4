"""The envelope-address fast path agrees with aiosmtpd's full parser wherever it answers."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from gateway.smtp.addresses import plain_angle_address

FULL = SMTP(handler=None, hostname="test.local")


@pytest.mark.parametrize(
    "arg",
    [
        "<bob@example.gov.vn>",
        "<Bob.Nguyen+tag@Example.GOV.VN> SIZE=1000 BODY=8BITMIME",
        "  <a_b-c@x-y.z>",
        "<o'brien@x.org>",
        "<a@b>",
    ],
)
def test_plain_addresses_match_the_full_parser(arg: str) -> None:
    assert plain_angle_address(arg) == FULL._getaddr(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "<>",
        '<"quoted local"@x.org>',
        "<.lead@x.org>",
        "<trail.@x.org>",
        "<a..b@x.org>",
        "<nguyễn@example.gov.vn>",
        "<a@đà.vn>",
        "<@relay:a@x.org>",
        "bob@example.gov.vn",
        "<a@b@c>",
        "<no-at-sign>",
        "<unclosed@x.org",
        "<a b@x.org>",
    ],
)
def test_anything_unusual_is_left_to_the_full_parser(arg: str) -> None:
    assert plain_angle_address(arg) is None
