"""Group commit (``receive_emails``): a backlog taken several messages per transaction
must end exactly as if each had been taken alone, and a group that cannot be taken
whole commits nothing, so the channel can take its messages one at a time."""

from __future__ import annotations

from email.policy import SMTPUTF8
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from privbot import audit
from privbot.app import Services
from privbot.intake import GROUP_MAX, receive_email, receive_emails
from privbot.store.models import Message, OutboxItem, Shunted, Ticket
from tests.support import break_classifier_on, make_mail

REQUESTS = [
    "Please delete all the personal information you hold about me.",
    "I would like a copy of all the data you have about me.",
    "Where is my invoice for last month?",
    "Please close my account.",
]


def raw(i: int, body: str | None = None) -> bytes:
    return bytes(make_mail(body or REQUESTS[i % len(REQUESTS)], sender=f"user{i}@example.org", subject=f"Request {i}",
                           message_id=f"<group-{i}@example.org>"))


def counts(services: Services) -> tuple[int, int, int]:
    with services.db.transaction() as s:
        return tuple(int(s.scalar(select(func.count()).select_from(m)) or 0) for m in (Ticket, OutboxItem, Shunted))  # type: ignore[return-value]


def test_a_group_is_committed_once_and_ends_as_if_each_message_came_alone(services: Services) -> None:
    commits = []
    event.listen(services.db.engine, "commit", lambda conn: commits.append(1))
    results = receive_emails(services, [raw(i) for i in range(8)], sources=[f"imap:INBOX/{i}" for i in range(8)])
    assert results is not None
    assert len(commits) == 1
    assert [r.action for r in results] == ["opened", "opened", "triage", "opened"] * 2
    assert [r.ticket_ref for r in results] == [f"PRIV-{i:06d}" for i in range(1, 9)]
    assert counts(services) == (8, 6, 0)  # an acknowledgement for each privacy request
    with services.db.transaction() as s:
        assert audit.verify_chain(s).ok
        # each acknowledgement threads onto its own request
        replies = s.scalars(select(Message).where(Message.direction == "out").order_by(Message.id)).all()
        assert [m.in_reply_to for m in replies] == [f"<group-{i}@example.org>" for i in (0, 1, 3, 4, 5, 7)]


def test_a_delivery_repeated_inside_one_group_opens_one_ticket(services: Services) -> None:
    results = receive_emails(services, [raw(1), raw(1), raw(2)], sources=["imap:INBOX/1", "imap:INBOX/2", "imap:INBOX/3"])
    assert results is not None
    assert [r.action for r in results] == ["opened", "duplicate", "triage"]
    assert results[1].ticket_ref == results[0].ticket_ref
    assert counts(services)[0] == 2


def test_a_group_knows_earlier_deliveries_and_requesters_whatever_characters_they_hold(services: Services) -> None:
    """The group's lookup hands its keys and addresses to the database as one list (a
    JSON array on SQLite, an array on PostgreSQL): quotes, backslashes, brackets and
    non-ASCII must round-trip, or a repeated delivery would open a second ticket."""
    odd = ['<a"b\\c@example.org>', "<it's-[1]%_*@example.org>", "<ünï-ид-中文@example.org>", "<a,b;c\"d@example.org>"]
    senders = ["o'brien@example.org", "zoë@example.org", "user+tag@example.org", "x%y@example.org"]
    mails = [make_mail(REQUESTS[0], sender=sender, subject=f"Request {i}", message_id=mid).as_bytes(policy=SMTPUTF8)
             for i, (sender, mid) in enumerate(zip(senders, odd, strict=True))]
    first = receive_emails(services, mails, sources=["smtp"] * len(mails))
    assert first is not None and [r.action for r in first] == ["opened"] * len(mails)
    again = receive_emails(services, mails, sources=["smtp"] * len(mails))
    assert again is not None and [r.action for r in again] == ["duplicate"] * len(mails)
    assert [r.ticket_ref for r in again] == [r.ticket_ref for r in first]
    # A new request from the same people: the lookup must find them as requesters with a
    # ticket, so their answers today are counted — at one a day, none goes out again.
    services.settings.max_auto_replies_per_day = 1
    more = [make_mail(REQUESTS[1], sender=sender, subject="Another").as_bytes(policy=SMTPUTF8) for sender in senders]
    third = receive_emails(services, more, sources=["smtp"] * len(more))
    assert third is not None and [(r.action, r.detail) for r in third] == [("opened", "no acknowledgement: rate limit")] * len(more)
    assert counts(services) == (8, 4, 0)


def test_ticket_references_stay_dense_when_a_group_repeats_earlier_deliveries(services: Services) -> None:
    first = receive_emails(services, [raw(0), raw(1)], sources=["smtp", "smtp"])
    assert first is not None and [r.ticket_ref for r in first] == ["PRIV-000001", "PRIV-000002"]
    # Two deliveries seen before, one repeated within the group: only two new tickets,
    # and on PostgreSQL only two ticket ids taken (the database counts them).
    group = receive_emails(services, [raw(0), raw(3), raw(1), raw(4), raw(3)], sources=["smtp"] * 5)
    assert group is not None
    assert [(r.action, r.ticket_ref) for r in group] == [
        ("duplicate", "PRIV-000001"), ("opened", "PRIV-000003"), ("duplicate", "PRIV-000002"),
        ("opened", "PRIV-000004"), ("duplicate", "PRIV-000003"),
    ]
    after = receive_email(services, raw(5))
    assert after is not None and after.ticket_ref == "PRIV-000005"  # no gap left behind


def test_a_groups_commit_rides_with_its_inserts(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    if services.db.dialect != "postgresql":
        pytest.skip("PostgreSQL: SQLite has no round trip to save")
    dialect = services.db.engine.dialect
    real_commit = dialect.do_commit
    open_at_commit: list[str] = []

    def do_commit(dbapi_conn: Any) -> None:
        open_at_commit.append(dbapi_conn.driver_connection.info.transaction_status.name)
        real_commit(dbapi_conn)

    monkeypatch.setattr(dialect, "do_commit", do_commit)
    first = receive_emails(services, [raw(0), raw(1)], sources=["smtp", "smtp"])
    assert first is not None and [r.action for r in first] == ["opened", "opened"]
    assert open_at_commit == ["IDLE"]  # COMMIT went with the INSERTs: nothing left to send
    assert counts(services) == (2, 2, 0)


def test_a_group_of_automatic_replies_only_opens_nothing_and_answers_nothing(services: Services) -> None:
    # No message of the group may open a ticket: on PostgreSQL the first round trip then
    # asks for no ticket ids at all (an empty list of deliveries to count).
    out_of_office = [bytes(make_mail("I am out of the office until Monday.", sender=f"away{i}@example.org",
                                     message_id=f"<ooo-{i}@example.org>", headers={"Auto-Submitted": "auto-replied"}))
                     for i in range(3)]
    results = receive_emails(services, out_of_office, sources=["smtp"] * 3)
    assert results is not None and [r.action for r in results] == ["auto_reply"] * 3
    assert counts(services) == (0, 0, 0)
    after = receive_email(services, raw(0))
    assert after is not None and after.ticket_ref == "PRIV-000001"  # no ticket id was taken by the group


def test_a_group_with_a_failing_message_commits_nothing_and_each_message_then_goes_alone(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_classifier_on(services, monkeypatch)
    group = [raw(0), raw(1, "Please explode my account."), raw(3)]
    assert receive_emails(services, group, sources=["imap:INBOX/1", "imap:INBOX/2", "imap:INBOX/3"]) is None
    assert counts(services) == (0, 0, 0)  # the first message was not committed either
    actions = [receive_email(services, r, source="imap:INBOX/x").action for r in group]  # type: ignore[union-attr]
    assert actions == ["opened", "shunted", "opened"]
    assert counts(services) == (2, 2, 1)


def test_an_unparseable_message_or_an_oversized_group_is_left_to_one_at_a_time(services: Services) -> None:
    assert receive_emails(services, [raw(0), b"no headers, not mail\r\n"], sources=["a", "b"]) is None
    many = [raw(i) for i in range(GROUP_MAX + 1)]
    assert receive_emails(services, many, sources=["imap"] * len(many)) is None
    assert counts(services) == (0, 0, 0)


def test_the_daily_answer_limit_holds_inside_a_group_and_across_groups(services: Services) -> None:
    cap = services.settings.max_auto_replies_per_day

    def burst(sender: str, start: int, n: int) -> list[bytes]:
        return [bytes(make_mail(REQUESTS[0], sender=sender, subject=f"Request {i}", message_id=f"<burst-{i}@example.org>"))
                for i in range(start, start + n)]

    def acknowledged(sender: str) -> int:
        with services.db.transaction() as s:
            return int(s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.recipient == sender)) or 0)

    # one requester fills a whole group: only the first `cap` requests are answered
    mixed = burst("flood@example.org", 0, GROUP_MAX - 1) + [raw(0)]
    results = receive_emails(services, mixed, sources=["imap"] * len(mixed))
    assert results is not None
    assert [r.detail for r in results[:-1]].count("no acknowledgement: rate limit") == GROUP_MAX - 1 - cap
    assert acknowledged("flood@example.org") == cap
    assert acknowledged("user0@example.org") == 1  # a stranger in the same group is answered
    # a later group counts what earlier transactions sent; so does a message taken alone
    assert receive_emails(services, burst("flood@example.org", 100, 3), sources=["imap"] * 3) is not None
    receive_email(services, burst("flood@example.org", 200, 1)[0], source="imap")
    assert acknowledged("flood@example.org") == cap
    # a requester whose only earlier ticket was triage still gets answers, up to the limit
    receive_email(services, bytes(make_mail(REQUESTS[2], sender="late@example.org", message_id="<late-0@example.org>")), source="imap")
    later = burst("late@example.org", 300, cap + 2)
    assert receive_emails(services, later, sources=["imap"] * len(later)) is not None
    assert acknowledged("late@example.org") == cap


def test_a_delivery_another_node_records_first_is_answered_as_a_duplicate(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two privbot nodes on one PostgreSQL take the same delivery at the same moment:
    the one that commits second finds its INSERT refused (written in one pipelined round
    trip, store.bulk) and reports a duplicate — one ticket, one acknowledgement."""
    from privbot import intake as intake_mod
    from privbot.app import build_services
    from tests.conftest import make_settings

    ours = build_services(make_settings(tmp_path / "a", pg_url))
    theirs = build_services(make_settings(tmp_path / "b", pg_url), migrate=False)
    real_record = intake_mod._record
    theirs_result = []

    def record_after_the_other_node(services: Services, *args: object, **kwargs: object) -> object:
        if services is ours and not theirs_result:
            # Our duplicate check has run and found nothing; the other node now commits
            # the same delivery before we write ours.
            theirs_result.append(receive_email(theirs, raw(0)))
        return real_record(services, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(intake_mod, "_record", record_after_the_other_node)
    try:
        result = receive_email(ours, raw(0))
        assert [r.action for r in theirs_result if r] == ["opened"]
        assert result is not None and result.action == "duplicate"
        assert counts(ours) == (1, 1, 0)  # their ticket and acknowledgement only; nothing shunted
    finally:
        ours.db.dispose()
        theirs.db.dispose()
