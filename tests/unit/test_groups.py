"""Group mailboxes: the directory's routes, who may post (RCPT), the expansion (DATA)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.directory.lifecycle import sendable_identities
from gateway.directory.mailboxes import Directory, DirectoryError, Registration
from gateway.dsn import FailedRecipient, build_dsn
from gateway.filters import groups
from gateway.pipeline import REGISTRY, Action, EnabledFilter, run_filters
from tests.unit.fakes import message_context

D = "example.gov.vn"
ALL, TEAM, BOARD, EMPTY = (f"{n}@{D}" for n in ("all", "team", "board", "empty"))
AN, BINH, CHI, DUNG, EM = (f"{n}@{D}" for n in ("an", "binh", "chi", "dung", "em"))


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Directory]:
    """all = {an, team}; team = {binh, chi, board}; board = {chi, dung, em};
    em revoked, dung locked; empty has only em (revoked)."""
    found = Directory(tmp_path / "directory.sqlite3")
    for address in (AN, BINH, CHI, DUNG, EM):
        found.add(Registration(address, address.split("@")[0].title()), None)
    for address in (ALL, TEAM, BOARD, EMPTY):
        found.add(Registration(address, address.split("@")[0].title(), kind="group"), None)
    for group, member in (
        (ALL, AN), (ALL, TEAM), (TEAM, BINH), (TEAM, CHI), (TEAM, BOARD),
        (BOARD, CHI), (BOARD, DUNG), (BOARD, EM), (EMPTY, EM),
    ):  # fmt: skip
        found.add_member(group, member)
    found.set_state(EM, "revoked", "left")
    found.set_state(DUNG, "locked", "6 months without access")
    yield found
    found.close()


def test_routes_reach_every_deliverable_member_once_by_the_shortest_chain(
    directory: Directory,
) -> None:
    routes = directory.group_routes(ALL)
    assert routes == {
        AN: (ALL,),
        BINH: (ALL, TEAM),
        CHI: (ALL, TEAM),  # also through board, one level deeper: the shorter chain wins
        DUNG: (ALL, TEAM, BOARD),  # locked: still receives (MIC 7.1)
    }  # em is revoked; groups themselves get nothing
    assert list(routes) == [AN, BINH, CHI, DUNG]  # nearer members first, stable
    assert directory.group_routes(EMPTY) == {}
    assert directory.group_routes(AN) == {}  # not a group


def test_membership_counts_nested_groups(directory: Directory) -> None:
    assert directory.is_member(ALL, DUNG)
    assert directory.is_member(ALL, "CHI@example.gov.vn")
    assert not directory.is_member(TEAM, AN)


def test_post_policy_is_stored_checked_and_reset(directory: Directory) -> None:
    assert directory.require(TEAM).post_policy is None
    assert directory.set_post_policy(TEAM, "members").post_policy == "members"
    assert directory.set_post_policy(TEAM, None).post_policy is None
    with pytest.raises(DirectoryError, match="one of anyone, local, members"):
        directory.set_post_policy(TEAM, "everyone")
    with pytest.raises(DirectoryError, match="not a group"):
        directory.set_post_policy(AN, "anyone")


def refusal(directory: Directory, group: str, user: str | None, sender: str, **cfg: Any) -> str:
    found = groups.rcpt_refusal(
        directory, directory.require(group), groups.Config(**cfg), user, sender
    )
    return "accepted" if found is None else str(found)


def test_who_may_post_follows_the_group_then_the_default(directory: Directory) -> None:
    outsider = "x@other.org"
    # default: local (authenticated) senders only; an inbound MAIL FROM in our own domain
    # is no proof of anything
    assert refusal(directory, ALL, None, outsider).startswith(
        "550 5.7.1 Group does not accept mail from this sender [groups]: "
        "all@example.gov.vn accepts mail from local senders only"
    )
    assert refusal(directory, ALL, None, AN) != "accepted"
    assert refusal(directory, ALL, EM, EM) == "accepted"
    assert refusal(directory, ALL, None, outsider, default_post_policy="anyone") == "accepted"
    directory.set_post_policy(TEAM, "members")
    assert "accepts mail from its members only" in refusal(directory, TEAM, AN, AN)
    assert refusal(directory, TEAM, DUNG, DUNG) == "accepted"  # a member through board
    assert refusal(directory, TEAM, CHI, "unit@example.gov.vn") == "accepted"  # the login
    assert "members only" in refusal(directory, TEAM, None, CHI)  # inbound, forged or not
    directory.set_post_policy(TEAM, "anyone")
    assert refusal(directory, TEAM, None, outsider, default_post_policy="members") == "accepted"


def test_a_group_with_no_deliverable_member_is_refused(directory: Directory) -> None:
    assert refusal(directory, EMPTY, AN, AN) == (
        "550 5.2.1 Group has no deliverable member [groups]: empty@example.gov.vn"
        " has no deliverable member"
    )


def test_the_plan_keeps_direct_recipients_and_adds_each_member_once() -> None:
    routes_of = {
        ALL: {AN: (ALL,), BINH: (ALL, TEAM), CHI: (ALL, TEAM)},
        TEAM: {BINH: (TEAM,), CHI: (TEAM,), DUNG: (TEAM, BOARD)},
    }
    plan = groups.plan_delivery(
        [TEAM, "Chi@example.gov.vn", ALL, "x@other.org"], frozenset({ALL, TEAM}), routes_of
    )
    assert plan.recipients == ["Chi@example.gov.vn", "x@other.org", BINH, DUNG, AN]
    assert plan.routes == {
        "Chi@example.gov.vn": "direct",
        "x@other.org": "direct",
        BINH: TEAM,
        DUNG: f"{TEAM} > {BOARD}",
        AN: ALL,
    }
    assert plan.members == {TEAM: [BINH, DUNG], ALL: [AN]}


@dataclass
class Services:
    directory: Directory
    emitted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def events(self) -> Services:
        return self

    def emit(self, event: str, **fields: Any) -> None:
        self.emitted.append((event, fields))


def expand(directory: Directory, recipients: list[str], found: set[str], **cfg: Any):
    services = Services(directory)
    ctx = message_context(
        recipients=recipients, group_recipients=frozenset(found), services=services
    )
    enabled = [EnabledFilter(REGISTRY["groups"], groups.Config(**cfg))]
    verdict = asyncio.run(run_filters(ctx, enabled))
    return ctx, verdict, services.emitted


def test_expansion_replaces_groups_by_members_and_records_it(directory: Directory) -> None:
    ctx, verdict, emitted = expand(directory, [BINH, ALL], {ALL})
    assert verdict.action is Action.ACCEPT
    assert ctx.recipients == [BINH, AN, CHI, DUNG]  # binh named directly: one copy
    assert ctx.envelope_recipients == (BINH, ALL)  # the envelope as received stays
    assert ctx.delivery_plan == {
        BINH: "direct", AN: ALL, CHI: f"{ALL} > {TEAM}", DUNG: f"{ALL} > {TEAM} > {BOARD}",
    }  # fmt: skip
    ((event, fields),) = emitted
    assert event == "group_expanded"
    assert fields["group"] == ALL and fields["recipients"] == [AN, CHI, DUNG]


def test_no_group_found_at_rcpt_means_no_lookup(directory: Directory) -> None:
    directory.close()  # any query would now fail
    ctx, verdict, emitted = expand(directory, [ALL], set())
    assert verdict.action is Action.ACCEPT and ctx.recipients == [ALL] and emitted == []


def test_too_many_members_is_refused_naming_the_limit(directory: Directory) -> None:
    _, verdict, emitted = expand(directory, [ALL], {ALL}, max_recipients=3)
    assert verdict.action is Action.REJECT and emitted == []
    assert str(verdict.reply).startswith(
        "550 5.5.3 Group expands to too many recipients [groups]: all@example.gov.vn expand"
        " to 4 recipients, the limit is 3"
    )


def test_validate_names_the_key() -> None:
    assert groups.validate(groups.Config(default_post_policy="all")) == [
        "default_post_policy: 'all' is not a post policy; write one of anyone, local, members"
    ]


def test_a_members_bounce_names_the_group_the_sender_wrote() -> None:
    failure = FailedRecipient(BINH, "5.1.1", "550 5.1.1 unknown", "lmtp.example", ALL)
    text = build_dsn(
        reporting_mta="mx.example.gov.vn",
        original_sender="a@other.org",
        queue_id="Q1",
        arrival=datetime.now(UTC),
        failures=[failure],
        original_headers=b"Subject: x\r\n",
    ).decode()
    assert f"Original-Recipient: rfc822; {ALL}" in text
    assert f"Final-Recipient: rfc822; {BINH}" in text


def test_a_unit_mailbox_past_its_departure_deadline_is_no_identity(
    directory: Directory,
) -> None:
    unit = f"vanthu@{D}"
    directory.add_unit("VP", "Văn phòng")
    directory.add(Registration(unit, "Van thu", kind="unit", unit="VP"), None)
    directory.delegate(unit, AN)
    assert sendable_identities(directory, AN) == {AN, unit}
    today = datetime.now(UTC).date()
    directory.set_retirement(unit, today.isoformat())  # staff rank: send-locked the same day
    assert sendable_identities(directory, AN) == {AN}
    assert sendable_identities(directory, AN, today - timedelta(days=1)) == {AN, unit}
