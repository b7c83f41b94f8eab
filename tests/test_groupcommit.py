"""Group commit over SMTP: messages delivered at the same moment over several connections
share one transaction, and every sender still hears ``250`` only once its own message is
committed — or ``451`` when it is not."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, func, select

from privbot import audit, groupcommit
from privbot.app import Services
from privbot.store.models import OutboxItem, Shunted, Ticket
from tests.support import make_mail

N = 6


def _deliver(port: int, payload: bytes, sender: str, answers: dict[str, Any]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(sender, ["privacy@example.com"], payload)
        answers[sender] = 250
    except smtplib.SMTPResponseException as exc:
        answers[sender] = exc.smtp_code


def _hold_first_message(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The first message is taken alone and held in the pipeline until released, so the
    ones sent meanwhile queue behind it and are committed together."""
    entered, release = threading.Event(), threading.Event()
    real: Callable[..., Any] = groupcommit.receive_emails

    def held(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(groupcommit, "receive_emails", held)
    return entered, release


def _send_all(ctl: Any, payloads: list[bytes], entered: threading.Event, release: threading.Event) -> dict[str, Any]:
    port = ctl.port
    answers: dict[str, Any] = {}
    first = threading.Thread(target=_deliver, args=(port, payloads[0], "user0@example.org", answers))
    first.start()
    assert entered.wait(30)
    rest = [threading.Thread(target=_deliver, args=(port, p, f"user{i}@example.org", answers)) for i, p in enumerate(payloads[1:], 1)]
    for t in rest:
        t.start()
    _wait_queued(ctl, len(rest))
    release.set()
    for t in [first, *rest]:
        t.join(30)
    return answers


def _wait_queued(ctl: Any, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctl.handler.committer._queue.qsize() >= count:
            return
        time.sleep(0.01)
    raise AssertionError("the messages never reached the committer")


@pytest.fixture
def smtp_ctl(services: Services) -> Any:
    from privbot.channels.smtp_in import controller
    from tests.support import free_port

    ctl = controller(services, "127.0.0.1", free_port())
    ctl.start()
    yield ctl
    ctl.stop()


def _mail(i: int, body: str = "Please delete all the personal information you hold about me.") -> bytes:
    return bytes(make_mail(body, sender=f"user{i}@example.org", message_id=f"<gc-{i}@example.org>"))


def test_messages_arriving_together_share_one_commit_and_each_sender_hears_250(
    services: Services, smtp_ctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    event.listen(services.db.engine, "commit", lambda conn: commits.append(1))
    entered, release = _hold_first_message(monkeypatch)
    answers = _send_all(smtp_ctl, [_mail(i) for i in range(N)], entered, release)

    assert answers == {f"user{i}@example.org": 250 for i in range(N)}
    assert list(smtp_ctl.handler.committer.recent_groups) == [1, N - 1]  # the five that waited went in together
    assert len(commits) == 2
    with services.db.transaction() as s:
        requesters = s.scalars(select(Ticket.requester).order_by(Ticket.id)).all()
        assert sorted(requesters) == sorted(f"user{i}@example.org" for i in range(N))
        assert s.scalar(select(func.count(OutboxItem.id))) == N  # one acknowledgement each
        assert audit.verify_chain(s).ok


def test_a_message_that_fails_in_a_group_is_shunted_alone_and_the_others_are_accepted(
    services: Services, smtp_ctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = _hold_first_message(monkeypatch)
    payloads = [_mail(i) for i in range(N)]
    payloads[3] = b"\r\n\r\n"  # no headers, no body: nothing to parse
    answers = _send_all(smtp_ctl, payloads, entered, release)

    assert answers == {f"user{i}@example.org": 250 for i in range(N)}  # the bad one is kept, so accepted too
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Ticket.id))) == N - 1
        assert s.scalar(select(func.count(Shunted.id))) == 1


def test_a_group_that_cannot_reach_the_database_tells_every_sender_to_retry(
    services: Services, smtp_ctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privbot.store.db import DatabaseUnavailable

    entered, release = _hold_first_message(monkeypatch)
    first_then_held = groupcommit.receive_emails
    calls: list[int] = []

    def down_after_the_first(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the lone first message, committed before the database went away
            return first_then_held(*args, **kwargs)
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(groupcommit, "receive_emails", down_after_the_first)
    answers = _send_all(smtp_ctl, [_mail(i) for i in range(N)], entered, release)

    assert answers["user0@example.org"] == 250  # it was already being committed
    assert {answers[f"user{i}@example.org"] for i in range(1, N)} == {451}
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Ticket.id))) == 1


def test_a_commit_waits_a_moment_for_a_message_another_session_is_still_sending(
    services: Services, smtp_ctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(groupcommit, "LINGER_SECONDS", 5.0)  # long enough to see, bounded all the same
    monkeypatch.setattr(groupcommit, "EXPECT_SECONDS", 10.0)
    answers: dict[str, Any] = {}
    with smtplib.SMTP("127.0.0.1", smtp_ctl.port, timeout=30) as slow:
        slow.ehlo()
        slow.mail("user0@example.org")  # a message is on its way over this connection ...
        slow.rcpt("privacy@example.com")
        quick = threading.Thread(target=_deliver, args=(smtp_ctl.port, _mail(1), "user1@example.org", answers))
        quick.start()
        time.sleep(0.3)
        assert answers == {}  # ... so the other one waits to share its commit
        code, _ = slow.data(_mail(0))
        quick.join(30)
    assert code == 250 and answers == {"user1@example.org": 250}
    assert list(smtp_ctl.handler.committer.recent_groups) == [2]


def test_a_session_that_gave_up_is_not_waited_for(services: Services, smtp_ctl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groupcommit, "LINGER_SECONDS", 5.0)
    monkeypatch.setattr(groupcommit, "EXPECT_SECONDS", 10.0)  # only the RSET can end the wait
    answers: dict[str, Any] = {}
    with smtplib.SMTP("127.0.0.1", smtp_ctl.port, timeout=30) as gave_up:
        gave_up.ehlo()
        gave_up.mail("user0@example.org")
        gave_up.rset()  # the transaction is over: nothing will come
        started = time.monotonic()
        _deliver(smtp_ctl.port, _mail(1), "user1@example.org", answers)
        assert time.monotonic() - started < 2.5
    assert answers == {"user1@example.org": 250}
    assert list(smtp_ctl.handler.committer.recent_groups) == [1]


def test_the_committer_tells_apart_waiting_for_messages_and_committing_them(
    services: Services, smtp_ctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What bench/bench_smtp.py reports per group: over a few connections the clients and
    # the commits take turns, and these three figures show where a group's time goes.
    real: Callable[..., Any] = groupcommit.receive_emails

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(groupcommit, "receive_emails", slow)
    answers: dict[str, Any] = {}
    started = time.perf_counter()
    _deliver(smtp_ctl.port, _mail(0), "user0@example.org", answers)
    time.sleep(0.3)  # nothing arrives: the committer waits for a first message
    _deliver(smtp_ctl.port, _mail(1), "user1@example.org", answers)
    elapsed = time.perf_counter() - started

    assert answers == {"user0@example.org": 250, "user1@example.org": 250}
    committer = smtp_ctl.handler.committer
    assert committer.commits == 2
    assert committer.commit_seconds >= 0.4  # two groups, each held 0.2 s in the pipeline
    assert committer.idle_seconds >= 0.3  # the pause between the two deliveries
    assert committer.linger_seconds < 0.1  # nobody else was sending: no group waited to fill
    assert committer.idle_seconds + committer.linger_seconds + committer.commit_seconds <= elapsed
