"""Legal clocks, staff reminders, escalations, extensions, the UK clock stop, retention.

Everything runs with a frozen clock moved forward by days, on SQLite and PostgreSQL, and
goes through the real sweeps and the real outbox into the Maildir a person would open.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from privbot import audit, clock, deadlines, scheduler, shunt, sweeps
from privbot.app import Services
from privbot.cli import main
from privbot.config import ConfigError, Settings, load_settings
from privbot.domain import Status
from privbot.store.models import (
    AuditEntry,
    DeadlineEvent,
    Draft,
    Message,
    OutboxItem,
    Reminder,
    Shunted,
    TelegramChat,
    TelegramUpdate,
    Ticket,
)
from tests.support import make_mail, outbox_messages

STAFF = "dpo@example.com"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def staffed(services: Services) -> Services:
    services.settings.staff_address = STAFF
    return services


def open_ticket(services: Services, *, legal_clock: str = "default", status: str = "received", language: str = "en",
                requester: str = "alice@example.org") -> int:
    now = clock.now()
    with services.db.transaction() as s:
        t = Ticket(
            intent="access", intents=["access"], status=status, channel="email", requester=requester, language=language,
            received_at=now, due_at=deadlines.due_at(services.settings, now, legal_clock), legal_clock=legal_clock, updated_at=now,
        )
        s.add(t)
        s.flush()
        s.add(Message(ticket_id=t.id, direction="in", kind="request", channel="email", message_id=f"<req{t.id}@example.org>",
                      sender=requester, subject="My data", body="Please send me a copy of my data. I am Alice Liddell.",
                      new_text="Please send me a copy of my data.", raw=b"raw bytes of the request", created_at=now))
        return t.id


def run_sweeps(services: Services) -> list[str]:
    return scheduler.run_once(services)


def staff_mail(services: Services) -> list[str]:
    return [m.get_content() for m in outbox_messages(services.settings.data_dir) if m["To"] == STAFF]


def reminder_kinds(services: Services, ticket_id: int) -> list[str]:
    with services.db.transaction() as s:
        return list(s.scalars(select(Reminder.kind).where(Reminder.ticket_id == ticket_id).order_by(Reminder.id)))


def ticket(services: Services, ticket_id: int) -> Ticket:
    with services.db.transaction() as s:
        t = s.get(Ticket, ticket_id)
        assert t is not None
        return t


# ---------------------------------------------------------------------------- the clocks


def test_gdpr_month_ends_on_the_same_date_or_the_last_day_of_a_shorter_month() -> None:
    s = Settings(legal_clock="gdpr")
    assert deadlines.due_at(s, datetime(2026, 1, 31, 10, tzinfo=UTC)) == datetime(2026, 2, 28, 10, tzinfo=UTC)
    assert deadlines.due_at(s, datetime(2028, 1, 31, 10, tzinfo=UTC)) == datetime(2028, 2, 29, 10, tzinfo=UTC)
    assert deadlines.due_at(s, datetime(2026, 3, 15, 10, tzinfo=UTC)) == datetime(2026, 4, 15, 10, tzinfo=UTC)
    assert deadlines.due_at(s, datetime(2026, 12, 31, tzinfo=UTC), "uk") == datetime(2027, 1, 31, tzinfo=UTC)


def test_day_counted_clocks_give_30_45_and_the_configured_days() -> None:
    at = datetime(2026, 3, 2, tzinfo=UTC)
    assert deadlines.due_at(Settings(), at) == at + timedelta(days=30)
    assert deadlines.due_at(Settings(deadline_days=14), at, "default") == at + timedelta(days=14)
    assert deadlines.due_at(Settings(), at, "pdpa") == at + timedelta(days=30)
    assert deadlines.due_at(Settings(), at, "ccpa") == at + timedelta(days=45)


def test_ccpa_receipt_must_be_confirmed_within_ten_business_days() -> None:
    friday = datetime(2026, 3, 6, 12, tzinfo=UTC)
    t = Ticket(received_at=friday, legal_clock="ccpa")
    assert deadlines.confirm_by(Settings(), t) == datetime(2026, 3, 20, 12, tzinfo=UTC)  # two weeks, weekends skipped
    assert deadlines.confirm_by(Settings(), Ticket(received_at=friday, legal_clock="gdpr")) is None


def test_ccpa_business_days_skip_the_public_holidays_the_deployment_lists() -> None:
    t = Ticket(received_at=datetime(2026, 12, 18, 12, tzinfo=UTC), legal_clock="ccpa")  # a Friday
    assert deadlines.confirm_by(Settings(), t) == datetime(2027, 1, 1, 12, tzinfo=UTC)
    holidays = Settings(holidays="2026-12-25, 2027-01-01")
    assert deadlines.confirm_by(holidays, t) == datetime(2027, 1, 5, 12, tzinfo=UTC)  # Christmas, New Year's Day


def test_a_new_ticket_gets_the_deadline_of_the_deployments_law(services: Services, frozen_clock: object) -> None:
    from privbot.intake import receive_email

    services.settings.legal_clock = "gdpr"
    clock.freeze(datetime(2026, 1, 31, 9, tzinfo=UTC))
    result = receive_email(services, make_mail("Please delete all the personal data you hold about me.").as_bytes())
    assert result is not None and result.ticket_ref
    with services.db.transaction() as s:
        t = s.scalars(select(Ticket)).one()
        assert (t.legal_clock, t.due_at) == ("gdpr", datetime(2026, 2, 28, 9, tzinfo=UTC))


def test_a_bad_reminder_setting_names_itself() -> None:
    with pytest.raises(ConfigError, match="PRIVBOT_REMINDER_DAYS"):
        load_settings(environ={"PRIVBOT_REMINDER_DAYS": "7,soon"})
    assert load_settings(environ={"PRIVBOT_REMINDER_DAYS": "1, 14,3"}).reminder_days == "1, 14,3"
    assert deadlines.parse_reminder_days("1, 14,3") == [14, 3, 1]


# ---------------------------------------------------------------------------- reminders


def test_staff_are_reminded_7_3_and_1_days_before_and_told_once_when_overdue(staffed: Services, frozen_clock: object) -> None:
    tid = open_ticket(staffed)
    ref = ticket(staffed, tid).ref
    clock.fast_forward(days=22)  # 8 days left
    run_sweeps(staffed)
    assert reminder_kinds(staffed, tid) == [] and staff_mail(staffed) == []
    expected = []
    for days, kind in ((1, "due-7d"), (4, "due-3d"), (2, "due-1d"), (1, "overdue")):
        clock.fast_forward(days=days, hours=1)
        run_sweeps(staffed)
        run_sweeps(staffed)  # a second pass, at the same moment, sends nothing more
        expected.append(kind)
        assert reminder_kinds(staffed, tid) == expected
        assert len(staff_mail(staffed)) == len(expected)
    clock.fast_forward(days=10)
    run_sweeps(staffed)
    mails = staff_mail(staffed)
    assert len(mails) == 4 and all(ref in m for m in mails)
    assert sum("past the legal deadline" in m or "passed their legal deadline" in m for m in mails) == 1
    assert "alice@example.org" not in "".join(mails)  # staff get the reference, not the address


def test_a_team_that_works_in_german_gets_its_reminders_and_escalations_in_german(staffed: Services, frozen_clock: object) -> None:
    staffed.settings.staff_language = "de"
    tid = open_ticket(staffed, language="fr")  # the requester's language is theirs; staff read their own
    ref = ticket(staffed, tid).ref
    clock.fast_forward(days=26, hours=1)  # 4 days left: the 7-day reminder
    run_sweeps(staffed)
    clock.fast_forward(days=5)  # overdue
    run_sweeps(staffed)
    escalation, reminder = sorted(outbox_messages(staffed.settings.data_dir), key=lambda m: "fällig" in m["Subject"])
    assert reminder["Subject"] == "1 Datenschutzanfrage bald fällig"
    assert f"{ref}  access  received  fällig 2026-04-01" in reminder.get_content() and "(in 4 Tagen" in reminder.get_content()
    assert escalation["Subject"].startswith("ÜBERFÄLLIG: 1 Datenschutzanfrage nach Ablauf der gesetzlichen Frist")
    assert ref in escalation.get_content() and "ohne Antwort überschritten" in escalation.get_content()


def test_a_ticket_found_late_gets_only_the_most_urgent_reminder(staffed: Services, frozen_clock: object) -> None:
    tid = open_ticket(staffed)
    clock.fast_forward(days=28)  # the sweeps were down: 2 days left, no reminder yet
    run_sweeps(staffed)
    clock.fast_forward(hours=2)
    run_sweeps(staffed)
    assert reminder_kinds(staffed, tid) == ["due-3d"]
    assert len(staff_mail(staffed)) == 1


def test_answered_tickets_get_no_reminders_and_many_due_tickets_share_one_digest(staffed: Services, frozen_clock: object) -> None:
    ids = [open_ticket(staffed) for _ in range(5)]
    with staffed.db.transaction() as s:
        s.get(Ticket, ids[0]).status = Status.ANSWERED  # type: ignore[union-attr]
    clock.fast_forward(days=24)
    run_sweeps(staffed)
    assert reminder_kinds(staffed, ids[0]) == []
    assert all(reminder_kinds(staffed, i) == ["due-7d"] for i in ids[1:])
    (digest,) = staff_mail(staffed)
    assert all(ticket(staffed, i).ref in digest for i in ids[1:]) and ticket(staffed, ids[0]).ref not in digest


def test_racing_sweeps_send_each_reminder_once(staffed: Services, frozen_clock: object) -> None:
    ids = [open_ticket(staffed) for _ in range(20)]
    clock.fast_forward(days=29, hours=12)
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            sweeps.deadline_sweep(staffed)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with staffed.db.transaction() as s:
        assert s.scalar(select(func.count(Reminder.id))) == 20
        assert s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.recipient == STAFF)) == 1
    assert all(reminder_kinds(staffed, i) == ["due-1d"] for i in ids)


def test_without_a_staff_address_reminders_are_still_recorded_for_the_console(services: Services, frozen_clock: object) -> None:
    tid = open_ticket(services)
    clock.fast_forward(days=31)
    assert any(line.startswith("deadlines: 1 overdue") for line in run_sweeps(services))
    assert reminder_kinds(services, tid) == ["overdue"]
    assert outbox_messages(services.settings.data_dir) == []


def test_ccpa_staff_are_told_when_receipt_was_not_confirmed(staffed: Services, frozen_clock: object) -> None:
    confirmed = open_ticket(staffed, legal_clock="ccpa")
    silent = open_ticket(staffed, legal_clock="ccpa")
    with staffed.db.transaction() as s:
        s.add(Message(ticket_id=confirmed, direction="out", kind="acknowledgement", channel="email", created_at=clock.now()))
    clock.fast_forward(days=2)
    run_sweeps(staffed)
    run_sweeps(staffed)
    assert reminder_kinds(staffed, silent) == ["confirm-receipt"] and reminder_kinds(staffed, confirmed) == []
    (mail,) = staff_mail(staffed)
    assert ticket(staffed, silent).ref in mail and "confirm by 2026-03-16" in mail


def test_the_confirm_by_date_staff_are_given_leaves_out_public_holidays(staffed: Services, frozen_clock: object) -> None:
    staffed.settings.holidays = "2026-03-09,2026-03-10"  # the Monday and Tuesday after
    silent = open_ticket(staffed, legal_clock="ccpa")
    clock.fast_forward(days=2)
    run_sweeps(staffed)
    (mail,) = staff_mail(staffed)
    assert ticket(staffed, silent).ref in mail and "confirm by 2026-03-18" in mail


# ---------------------------------------------------------------------------- extensions


def extend(services: Services, tid: int, days: int, reason: str = "We must collect records from three systems.") -> Draft:
    with services.db.transaction() as s:
        t = s.get(Ticket, tid)
        assert t is not None
        return deadlines.extend(s, services.settings, t, days, reason, "carol@example.com")


def test_gdpr_extension_inside_the_first_month_moves_the_deadline_and_tells_the_requester(services: Services, frozen_clock: object) -> None:
    tid = open_ticket(services, legal_clock="gdpr")
    first_due = ticket(services, tid).due_at
    clock.fast_forward(days=20)
    draft = extend(services, tid, 45, "We must collect records from three systems.")
    assert draft.kind == "extension" and draft.status == "sent" and draft.approved_by == "carol@example.com"
    t = ticket(services, tid)
    assert t.extended and t.due_at == first_due + timedelta(days=45)
    run_sweeps(services)
    (notice,) = [m for m in outbox_messages(services.settings.data_dir) if m["To"] == "alice@example.org"]
    body = notice.get_content()
    assert t.ref in notice["Subject"] and "three systems" in body and "17 May 2026" in body and "02 April 2026" in body
    assert notice["In-Reply-To"] == f"<req{tid}@example.org>"
    with services.db.transaction() as s:
        (event,) = s.scalars(select(DeadlineEvent).where(DeadlineEvent.ticket_id == tid)).all()
        assert (event.kind, event.actor, event.old_due_at, event.new_due_at) == ("extended", "carol@example.com", first_due, t.due_at)
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "deadline_extended")).one()
        assert entry.actor == "carol@example.com" and entry.detail["days"] == 45
        assert audit.verify_chain(s).ok


def test_gdpr_allows_two_months_more_and_no_more(services: Services, frozen_clock: object) -> None:
    tid = open_ticket(services, legal_clock="gdpr")  # due 2 April, at most 2 June
    clock.fast_forward(days=5)
    with pytest.raises(deadlines.ExtensionRefused, match="2026-06-02"):
        extend(services, tid, 62)
    extend(services, tid, 30)
    extend(services, tid, 31)  # twice is fine while inside the first month and the limit
    assert ticket(services, tid).due_at == datetime(2026, 6, 2, 9, tzinfo=UTC)
    with pytest.raises(deadlines.ExtensionRefused, match=r"0 more days"):
        extend(services, tid, 1)


def test_an_extension_after_the_first_period_is_refused(services: Services, frozen_clock: object) -> None:
    tid = open_ticket(services, legal_clock="gdpr")
    clock.fast_forward(days=31)
    with pytest.raises(deadlines.ExtensionRefused, match="too late.*first period"):
        extend(services, tid, 10)
    assert not ticket(services, tid).extended
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Draft.id))) == 0


@pytest.mark.parametrize(("law", "allowed"), [("ccpa", 45), ("pdpa", 30), ("default", 30)])
def test_day_counted_laws_cap_the_extension(services: Services, frozen_clock: object, law: str, allowed: int) -> None:
    tid = open_ticket(services, legal_clock=law)
    with pytest.raises(deadlines.ExtensionRefused, match="too long"):
        extend(services, tid, allowed + 1)
    extend(services, tid, allowed)


def test_extension_needs_an_open_ticket_and_a_reason(services: Services, frozen_clock: object) -> None:
    tid = open_ticket(services, legal_clock="gdpr")
    with pytest.raises(deadlines.ExtensionRefused, match="reason"):
        extend(services, tid, 10, "  ")
    with services.db.transaction() as s:
        s.get(Ticket, tid).status = Status.CLOSED  # type: ignore[union-attr]
    with pytest.raises(deadlines.ExtensionRefused, match="only an open request"):
        extend(services, tid, 10)


def test_an_extended_deadline_earns_its_own_reminders(staffed: Services, frozen_clock: object) -> None:
    tid = open_ticket(staffed, legal_clock="gdpr")
    clock.fast_forward(days=25)
    run_sweeps(staffed)
    assert reminder_kinds(staffed, tid) == ["due-7d"]
    extend(staffed, tid, 14)
    clock.fast_forward(days=13, hours=1)  # past the first deadline, a week before the new one
    run_sweeps(staffed)
    assert reminder_kinds(staffed, tid) == ["due-7d", "due-7d"]
    with staffed.db.transaction() as s:
        dues = list(s.scalars(select(Reminder.due_at).where(Reminder.ticket_id == tid).order_by(Reminder.id)))
    assert dues[1] - dues[0] == timedelta(days=14)


def test_the_requesters_language_is_used_for_the_notice(services: Services, frozen_clock: object) -> None:
    tid = open_ticket(services, legal_clock="gdpr", language="de")
    draft = extend(services, tid, 10, "Umfangreiche Unterlagen")
    assert draft.language == "de" and "Umfangreiche Unterlagen" in draft.text and "Frist" in draft.text


def test_cli_extend_reports_the_new_deadline_or_why_not(services: Services, frozen_clock: object, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    s = services.settings
    monkeypatch.setenv("PRIVBOT_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("PRIVBOT_DATABASE_URL", s.db_url)
    tid = open_ticket(services, legal_clock="gdpr")
    ref = ticket(services, tid).ref
    clock.freeze(T0 + timedelta(days=3))
    assert main(["extend", ref, "--days", "20", "--reason", "Archive restore", "--as", "carol@example.com"]) == 0
    assert "2026-04-22" in capsys.readouterr().out
    clock.freeze(T0 + timedelta(days=40))
    assert main(["extend", ref, "--days", "5", "--reason", "More", "--as", "carol@example.com"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("privbot: ") and "too late" in err and err.count("\n") == 1


def test_cli_sweep_at_a_later_time_sends_the_reminders(staffed: Services, frozen_clock: object, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    s = staffed.settings
    for k, v in (("DATA_DIR", str(s.data_dir)), ("DATABASE_URL", s.db_url), ("STAFF_ADDRESS", STAFF)):
        monkeypatch.setenv(f"PRIVBOT_{k}", v)
    open_ticket(staffed)
    clock.unfreeze()
    assert main(["sweep", "--at", "2026-03-29T10:00:00"]) == 0
    out = capsys.readouterr().out
    assert "deadlines: 1 due-3d; 1 staff mail" in out and "outbox: 1 sent" in out
    assert len(staff_mail(staffed)) == 1


# ---------------------------------------------------------------------------- the UK clock stop


def set_status(services: Services, tid: int, status: Status) -> None:
    with services.db.transaction() as s:
        t = s.get(Ticket, tid)
        assert t is not None
        t.status = status


def test_uk_clock_stops_while_waiting_for_identity_and_the_deadline_moves(staffed: Services, frozen_clock: object) -> None:
    uk = open_ticket(staffed, legal_clock="uk")
    eu = open_ticket(staffed, legal_clock="gdpr")
    due_uk, due_eu = ticket(staffed, uk).due_at, ticket(staffed, eu).due_at
    clock.fast_forward(days=2)
    for tid in (uk, eu):
        set_status(staffed, tid, Status.AWAITING_VERIFICATION)
    clock.fast_forward(days=5, hours=6)
    for tid in (uk, eu):
        set_status(staffed, tid, Status.VERIFIED)
    assert ticket(staffed, uk).due_at == due_uk + timedelta(days=5, hours=6)
    assert ticket(staffed, eu).due_at == due_eu
    assert ticket(staffed, uk).clock_paused_at is None
    with staffed.db.transaction() as s:
        history = deadlines.history(s, uk)
    assert [h["kind"] for h in history] == ["resumed"] and history[0]["new_due_at"] == due_uk + timedelta(days=5, hours=6)
    # The first period moved too: an extension is still possible a day after the old end.
    clock.freeze(due_uk + timedelta(days=1))
    extend(staffed, uk, 10)


def test_a_paused_uk_ticket_gets_no_reminder_until_its_clock_runs_again(staffed: Services, frozen_clock: object) -> None:
    uk = open_ticket(staffed, legal_clock="uk")
    clock.fast_forward(days=20)
    set_status(staffed, uk, Status.AWAITING_CLARIFICATION)
    clock.fast_forward(days=6)  # 5 days before the original deadline
    run_sweeps(staffed)
    assert reminder_kinds(staffed, uk) == []
    set_status(staffed, uk, Status.RECEIVED)  # the requester clarified: 11 days left again
    clock.fast_forward(days=4, hours=1)
    run_sweeps(staffed)
    assert reminder_kinds(staffed, uk) == ["due-7d"]


# ---------------------------------------------------------------------------- retention


def test_retention_purges_personal_data_of_long_closed_tickets_and_keeps_the_record(services: Services, frozen_clock: object) -> None:
    services.settings.retention_days = 365
    old = open_ticket(services)
    recent = open_ticket(services)
    still_open = open_ticket(services)
    with services.db.transaction() as s:
        t = s.get(Ticket, old)
        draft = Draft(ticket_id=old, kind="answer", subject="Your data", text="Alice Liddell, 12 Rabbit Hole", created_at=clock.now())
        s.add(draft)
        s.flush()
        s.add(OutboxItem(ticket_id=old, draft_id=draft.id, channel="email", recipient="alice@example.org", payload=b"Alice's data",
                         status="sent", next_attempt_at=clock.now(), created_at=clock.now()))
        t.status, t.closed_at = Status.CLOSED, clock.now()  # type: ignore[union-attr]
    clock.fast_forward(days=200)
    with services.db.transaction() as s:
        r = s.get(Ticket, recent)
        r.status, r.closed_at = Status.CLOSED, clock.now()  # type: ignore[union-attr]
    clock.fast_forward(days=166)
    assert "retention: 1 tickets purged" in run_sweeps(services)
    assert "retention: nothing to purge" in run_sweeps(services)
    with services.db.transaction() as s:
        t = s.get(Ticket, old)
        assert t is not None and t.purged_at is not None and t.requester == "[purged]" and t.intent == "access"
        texts = [(m.body, m.new_text, m.subject, m.sender, m.raw) for m in s.scalars(select(Message).where(Message.ticket_id == old))]
        assert texts == [("[purged]", "[purged]", "[purged]", "[purged]", None)]
        assert s.scalars(select(Draft.text).where(Draft.ticket_id == old)).one() == "[purged]"
        assert s.scalars(select(OutboxItem.payload).where(OutboxItem.ticket_id == old)).one() == b""
        assert s.scalars(select(AuditEntry.action).where(AuditEntry.ticket_id == old)).all() == ["purged"]
        for kept in (recent, still_open):
            assert "Alice Liddell" in s.scalars(select(Message.body).where(Message.ticket_id == kept)).one()
        dump = " ".join(str(a.detail) for a in s.scalars(select(AuditEntry)))
        assert "Alice" not in dump and "alice@example.org" not in dump
        assert audit.verify_chain(s).ok


def test_the_words_that_decided_a_ticket_are_shown_to_staff_but_never_kept_in_the_audit_trail(services: Services, frozen_clock: object) -> None:
    # The classifier's cues quote the request ("close Alice Liddell account"); the
    # ticket shows them to staff until its data is purged, the never-purged audit trail
    # keeps only what kind of cue decided.
    from privbot.intake import receive_email

    services.settings.retention_days = 30
    body = "Please close Alice Liddell account and delete all the data you have on alice.liddell@example.org"
    result = receive_email(services, bytes(make_mail(body, sender="alice.liddell@example.org")))
    assert result is not None and result.ticket_ref is not None
    tid = int(result.ticket_ref[5:])
    cues = ticket(services, tid).cues
    assert any("Alice Liddell" in cue for cue in cues)  # staff see why
    with services.db.transaction() as s:
        opened = s.scalars(select(AuditEntry).where(AuditEntry.action == "ticket_opened")).one()
        assert opened.detail["cues"] and all('"' not in cue for cue in opened.detail["cues"])
        assert any(cue.startswith("cancellation:") for cue in opened.detail["cues"])
        t = s.get(Ticket, tid)
        assert t is not None
        t.status, t.closed_at = Status.CLOSED, clock.now()
    clock.fast_forward(days=31)
    assert "retention: 1 tickets purged" in " ".join(run_sweeps(services))
    assert ticket(services, tid).cues == []
    with services.db.transaction() as s:
        dump = " ".join(str(a.detail) for a in s.scalars(select(AuditEntry)))
    assert "Alice" not in dump and "Liddell" not in dump and "alice.liddell" not in dump


def test_retention_forgets_resolved_shunted_mail_and_idle_telegram_chats_but_keeps_what_still_waits(
    services: Services, frozen_clock: object
) -> None:
    services.settings.retention_days = 365
    resolved = shunt.keep(services, bytes(make_mail(body="Please delete my data. Bob Stone, 4 Elm Row")), "parser fault", source="smtp")
    assert shunt.reprocess(services, resolved) is not None  # a person re-ran it: it has its ticket now
    waiting = shunt.keep(services, b"\x00 unreadable bytes from carol@example.org", "cannot parse", source="smtp")
    now = clock.now()
    with services.db.transaction() as s:
        s.add(TelegramChat(chat_id=101, bound_email="ann@example.org", bound_at=now, state={"step": "await_code", "email": "ann@example.org"},
                           updated_at=now))
        s.add(TelegramChat(chat_id=102, bound_email="dan@example.org", bound_at=now, updated_at=now))
        s.add(Ticket(intent="access", intents=["access"], status=Status.RECEIVED, channel="telegram", requester="dan@example.org",
                     chat_id=102, language="en", received_at=now, due_at=now + timedelta(days=30), updated_at=now))
        s.add(TelegramUpdate(update_id=7, chat_id=101, outcome="opened", replies=[{"text": "Thank you, Ann: PRIV-000001"}],
                             replied=True, processed_at=now))
    clock.fast_forward(days=200)
    with services.db.transaction() as s:
        s.add(TelegramChat(chat_id=103, bound_email="eve@example.org", bound_at=clock.now(), updated_at=clock.now()))
    clock.fast_forward(days=166)

    said = " ".join(run_sweeps(services))
    assert "1 resolved shunted messages deleted, 1 idle Telegram chats forgotten" in said
    assert "1 shunted messages older than that still wait for a person" in said
    with services.db.transaction() as s:
        assert [r.id for r in s.scalars(select(Shunted))] == [waiting]  # an unanswered message is never dropped
        chats = {c.chat_id: c.bound_email for c in s.scalars(select(TelegramChat))}
        assert chats == {102: "dan@example.org", 103: "eve@example.org"}  # an open ticket, a recent chat
        update_row = s.get(TelegramUpdate, 7)
        assert update_row is not None and update_row.replies == [] and update_row.chat_id is None
        assert s.scalar(select(func.max(TelegramUpdate.update_id))) == 7  # the poll offset stays where it was
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "retention")).one()
        assert entry.detail == {"shunted_deleted": 1, "telegram_chats_forgotten": 1, "stray_auto_replies_purged": 0}
        dump = " ".join(str(a.detail) for a in s.scalars(select(AuditEntry)))
        assert "ann@example.org" not in dump and "Bob Stone" not in dump
        assert audit.verify_chain(s).ok
    again = " ".join(run_sweeps(services))
    assert "deleted" not in again and "1 shunted messages older than that still wait" in again
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "retention")) == 1


def test_a_staff_correction_kept_as_an_example_is_forgotten_when_its_ticket_is_purged(services: Services, frozen_clock: object) -> None:
    # The example is the requester's words copied out of the ticket: it must not outlive
    # the ticket's own copy.
    from privbot import learned
    from privbot.web import actions

    services.settings.retention_days = 30
    old, recent = open_ticket(services), open_ticket(services, requester="bob@example.org")
    with services.db.transaction() as s:
        for tid in (old, recent):
            t = s.get(Ticket, tid)
            assert t is not None
            actions.reclassify(s, services.settings, t, ["access", "withdrawal"], "agent@corp.example")
    path = learned.examples_path(services.settings)

    def legacy(text: str) -> None:  # written before examples named their ticket
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"text": text, "intent": "deletion", "at": clock.now().isoformat()}) + "\n")

    legacy("delete me, I am Carol")
    with path.open("a", encoding="utf-8") as fh:
        fh.write("a line someone typed by hand\n")

    def close(tid: int) -> None:
        with services.db.transaction() as s:
            t = s.get(Ticket, tid)
            assert t is not None
            t.status, t.closed_at = Status.CLOSED, clock.now()

    close(old)
    clock.fast_forward(days=20)
    close(recent)
    legacy("stop the mails, Dan")
    clock.fast_forward(days=15)  # the old ticket closed 35 days ago, the recent one 15

    said = " ".join(run_sweeps(services))
    assert "retention: 1 tickets purged" in said and "2 learned examples forgotten with their tickets" in said
    recent_ref = ticket(services, recent).ref
    kept = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(kept[0])["ticket"] == recent_ref
    assert kept[1:] == ["a line someone typed by hand", kept[2]] and "stop the mails, Dan" in kept[2]
    assert "delete me, I am Carol" not in path.read_text(encoding="utf-8")
    with services.db.transaction() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "learned_examples_forgotten")).one()
        assert entry.detail == {"count": 2}
    assert "learned examples" not in " ".join(run_sweeps(services))  # nothing more to forget


def test_examples_written_while_the_sweep_prunes_the_file_are_all_kept(services: Services) -> None:
    from privbot import learned

    ref = ticket(services, open_ticket(services)).ref  # open: its examples stay
    stop = threading.Event()

    def write(n: int) -> None:
        for i in range(50):
            learned.append(services.settings, {"text": f"example {n}-{i}", "intent": "access", "ticket": ref, "at": clock.now().isoformat()})

    def prune() -> None:
        while not stop.is_set():
            learned.append(services.settings, {"text": "gone", "intent": "access", "ticket": "PRIV-999999", "at": clock.now().isoformat()})
            learned.forget(services, clock.now() - timedelta(days=30))  # rewrites the file each time

    pruner = threading.Thread(target=prune)
    pruner.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    pruner.join()
    learned.forget(services, clock.now() - timedelta(days=30))
    texts = sorted(json.loads(line)["text"] for line in learned.examples_path(services.settings).read_text().splitlines())
    assert texts == sorted(f"example {n}-{i}" for n in range(4) for i in range(50))


def test_a_bounce_that_joined_no_ticket_is_purged_after_the_retention_period(services: Services, frozen_clock: object) -> None:
    from privbot.intake import receive_email

    services.settings.retention_days = 30
    bounce = make_mail("Delivery failed for alice.liddell@example.org: your code is 48291730, Alice Liddell.",
                       sender="MAILER-DAEMON@mx.example.net", subject="Undelivered Mail Returned to Sender",
                       headers={"Auto-Submitted": "auto-replied"})
    assert receive_email(services, bytes(bounce)).action == "auto_reply"  # type: ignore[union-attr]
    clock.fast_forward(days=20)
    later = make_mail("I am away until Monday. Bob Stone", sender="bob.stone@example.net", subject="Out of office",
                      headers={"Auto-Submitted": "auto-replied"})
    assert receive_email(services, bytes(later)).action == "auto_reply"  # type: ignore[union-attr]
    clock.fast_forward(days=15)  # the bounce is 35 days old, the out-of-office 15

    assert "1 auto-replies and bounces that joined no ticket purged" in " ".join(run_sweeps(services))
    with services.db.transaction() as s:
        rows = {m.subject: m for m in s.scalars(select(Message).where(Message.ticket_id.is_(None)))}
        assert set(rows) == {"[purged]", "Out of office"}
        gone = rows["[purged]"]
        assert (gone.body, gone.new_text, gone.sender, gone.raw) == ("[purged]", "[purged]", "[purged]", None)
        assert gone.dedupe_key  # a redelivery is still known as one
        assert "Bob Stone" in rows["Out of office"].body
    assert "auto-replies" not in " ".join(run_sweeps(services))  # purged once
    assert receive_email(services, bytes(bounce)).action == "duplicate"  # type: ignore[union-attr]


def test_retention_zero_keeps_everything(services: Services, frozen_clock: object) -> None:
    services.settings.retention_days = 0
    tid = open_ticket(services)
    set_status(services, tid, Status.CLOSED)
    clock.fast_forward(days=5000)
    assert "retention: off" in run_sweeps(services)
    assert ticket(services, tid).purged_at is None


def test_sweep_interval_setting_reaches_the_scheduler(tmp_path: Path) -> None:
    assert load_settings(environ={"PRIVBOT_SWEEP_INTERVAL": "0.5"}).sweep_interval == 0.5
    with pytest.raises(ConfigError, match="PRIVBOT_RETENTION_DAYS"):
        load_settings(environ={"PRIVBOT_RETENTION_DAYS": "-1"})


@pytest.mark.parametrize("lang", ["en", "zh", "es", "de", "fr", "pt", "ja"])
def test_the_extension_notice_exists_in_every_language_with_reason_and_both_dates(lang: str) -> None:
    from privbot.replies import Renderer

    out = Renderer(Settings().templates_dir).render(
        "extension", lang, ref="PRIV-000042", intent="access", intents=["access"], due_at=datetime(2026, 5, 17, tzinfo=UTC),
        old_due_at=datetime(2026, 4, 2, tzinfo=UTC), days=45, reason="{{ 7*7 }} archives", received_at=T0,
        requester_name="Ana", privacy_address="privacy@example.com", channel="email",
    )
    assert out.language == lang and "PRIV-000042" in out.subject and "PRIV-000042" in out.text
    assert "{{ 7*7 }} archives" in out.text and "49" not in out.text
    from privbot.replies import _format_date

    for day in (datetime(2026, 5, 17, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)):
        assert _format_date(day, lang) in out.text


def test_uk_request_through_the_mailbox_gets_the_days_spent_waiting_for_the_code_back(services: Services, frozen_clock: object) -> None:
    import re

    from privbot.intake import receive_email
    from tests.support import reply_to

    services.settings.legal_clock = "uk"
    request = make_mail("Please send me a copy of all the personal data you hold about me.")
    result = receive_email(services, request.as_bytes())
    assert result is not None and result.status == Status.AWAITING_VERIFICATION
    with services.db.transaction() as s:
        t = s.scalars(select(Ticket)).one()
        tid, first_due, paused_at = t.id, t.due_at, t.clock_paused_at
    assert paused_at == T0 and first_due == datetime(2026, 4, 2, 9, tzinfo=UTC)
    scheduler.outbox_sweep(services)
    (ack,) = outbox_messages(services.settings.data_dir)
    code = re.search(r"\b(\d{8})\b", ack.get_content()).group(1)  # type: ignore[union-attr]
    clock.fast_forward(days=2, hours=6)  # the code lives 72 hours
    answer = reply_to(ack, f"Here is the code: {code}")
    result = receive_email(services, answer.as_bytes())
    assert result is not None and result.action == "verified"
    t = ticket(services, tid)
    assert t.verified and t.clock_paused_at is None
    assert t.due_at == first_due + timedelta(days=2, hours=6)


def test_show_lists_the_deadline_history_and_the_reminders(staffed: Services, frozen_clock: object, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    s = staffed.settings
    monkeypatch.setenv("PRIVBOT_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("PRIVBOT_DATABASE_URL", s.db_url)
    tid = open_ticket(staffed, legal_clock="gdpr")
    clock.fast_forward(days=26)
    run_sweeps(staffed)
    extend(staffed, tid, 20, "Archive restore")
    ref = ticket(staffed, tid).ref
    assert main(["show", ref, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["legal_clock"] == "gdpr" and data["extended"] is True
    (event,) = data["deadline_history"]
    assert (event["kind"], event["actor"], event["reason"]) == ("extended", "carol@example.com", "Archive restore")
    assert event["new_due_at"] == data["due_at"] == "2026-04-22T09:00:00+00:00"
    assert [r["kind"] for r in data["reminders"]] == ["due-7d"]
    assert main(["show", ref]) == 0
    out = capsys.readouterr().out
    assert "extended 2026-04-02" in out and "staff reminded: due-7d" in out
