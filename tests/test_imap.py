"""The IMAP watcher against a real Dovecot: IDLE, backlog, restarts, failures, TLS,
and ``privbot run`` killed with SIGKILL while it drains 2,000 messages."""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from privbot import leases
from privbot.app import Services, build_services
from privbot.channels.imap import ImapWatcher
from privbot.config import Settings
from privbot.intake import receive_email
from privbot.store.db import Database, DatabaseUnavailable
from privbot.store.models import Message, OutboxItem, Shunted, Ticket
from tests.conftest import make_settings
from tests.dovecot import POOR_HOST, Account, Dovecot
from tests.support import break_classifier_on, make_mail

ROOT = Path(__file__).resolve().parents[1]

BODIES = [
    "Please delete all the personal information you hold about me.",
    "I would like a copy of all the data you have about me.",
    "Please close my account, I no longer use it.",
    "Unsubscribe me from your marketing emails and stop sharing my data.",
    "My address on file is outdated, please correct it.",
    "Bitte löschen Sie alle meine personenbezogenen Daten.",
    "Je souhaite recevoir une copie de mes données personnelles.",
    "Where is my invoice for last month?",
]


def request(i: int, *, sender: str | None = None) -> bytes:
    msg = make_mail(BODIES[i % len(BODIES)], sender=sender or f"user{i}@example.org", subject=f"Request {i}")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))  # as on the wire


def auto_reply(i: int) -> bytes:
    msg = make_mail("I am out of the office until Monday.", sender=f"away{i}@example.org", subject="Automatic reply: your message",
                    headers={"Auto-Submitted": "auto-replied"})
    return bytes(msg)


def configure(settings: Settings, account: Account, **overrides: object) -> Settings:
    settings.imap_host, settings.imap_port = account.host, account.port
    settings.imap_user, settings.imap_password = account.user, account.password
    settings.imap_ssl = "plain"
    settings.imap_idle_seconds = 600.0  # only IDLE itself can wake the watcher quickly
    settings.imap_auth_retry_seconds = 0.3
    settings.max_auto_replies_per_day = 10**6
    for k, v in overrides.items():
        setattr(settings, k, v)
    return settings


@contextmanager
def watching(services: Services) -> Iterator[ImapWatcher]:
    services.classifier  # loaded before mail is taken, as `privbot run` does
    watcher = ImapWatcher(services)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop()
        thread.join(15)
        assert not thread.is_alive(), "the watcher did not stop within 15 s"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def settled_inbox(account: Account, quiet: float = 0.3, timeout: float = 10) -> int:
    """INBOX's count once two readings `quiet` seconds apart agree."""
    deadline = time.monotonic() + timeout
    last = account.count("INBOX")
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = account.count("INBOX")
        if now == last:
            return now
        last = now
    raise AssertionError(f"INBOX still changing after {timeout} s")


def count(db: Database, model: type, *where: object) -> int:
    with db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def ticket_count(services: Services) -> int:
    return count(services.db, Ticket)


# ------------------------------------------------------------------------ behaviour


def test_backlog_is_drained_into_tickets_and_filed_in_created_folders(services: Services, imap_account: Account) -> None:
    configure(services.settings, imap_account, imap_batch=25)
    backlog = [request(i) for i in range(60)]
    imap_account.deliver_many(backlog)
    with imap_account.client() as c:
        assert not c.folder_exists("Processed") and not c.folder_exists("Failed")

    with watching(services) as watcher:
        assert watcher.idle_ready.wait(60), "backlog not drained"

    assert ticket_count(services) == 60
    assert count(services.db, OutboxItem) == 60 - sum(1 for i in range(60) if "invoice" in BODIES[i % len(BODIES)])
    assert imap_account.count("INBOX") == 0
    assert imap_account.count("Processed") == 60
    assert imap_account.count("Failed") == 0
    # The mail itself is untouched (\Seen not set by the watcher's BODY.PEEK).
    with imap_account.client() as c:
        c.select_folder("Processed", readonly=True)
        assert c.search("SEEN") == []


def test_two_processes_watching_one_mailbox_read_it_once_and_the_other_takes_over_when_the_first_stops(
    services: Services, imap_account: Account,
) -> None:
    configure(services.settings, imap_account, imap_lease_seconds=3.0)
    imap_account.deliver_many([request(i) for i in range(40)])
    services.classifier  # loaded before mail is taken, as `privbot run` does
    watchers = [ImapWatcher(services), ImapWatcher(services)]
    watchers[1].holder += ":elsewhere"  # another host or data directory, as another process would be
    threads = [threading.Thread(target=w.run, daemon=True) for w in watchers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: ticket_count(services) == 40 and imap_account.count("INBOX") == 0, 60, "the backlog")
        active, standby = sorted(watchers, key=lambda w: -w.totals.processed)
        # One of them read the mailbox; the other never fetched a message and says who has it.
        assert active.totals.processed == 40 and active.totals.duplicates == 0
        assert standby.totals.processed == 0 and standby.standing_by == active.holder
        time.sleep(2.0)  # past a third of the lease: renewed, so the standby still waits
        imap_account.deliver_many([request(i) for i in range(40, 45)])
        wait_for(lambda: ticket_count(services) == 45, 20, "new mail, through the active watcher")
        assert standby.totals.processed == 0
        # The active watcher stops (and gives the lease up): the other takes over.
        active.stop()
        threads[watchers.index(active)].join(15)
        imap_account.deliver_many([request(i) for i in range(45, 50)])
        wait_for(lambda: ticket_count(services) == 50 and imap_account.count("INBOX") == 0, 30, "the standby to take over")
        assert standby.totals.processed == 5 and standby.standing_by == ""
    finally:
        for w in watchers:
            w.stop()
        for t in threads:
            t.join(15)
    assert imap_account.count("Processed") == 50


def test_a_mailbox_whose_watcher_died_without_a_word_is_taken_over_once_its_lease_lapses(
    services: Services, imap_account: Account,
) -> None:
    configure(services.settings, imap_account, imap_lease_seconds=3.0)
    imap_account.deliver_many([request(i) for i in range(5)])
    dead = "crashed-host:/var/lib/privbot"
    assert leases.claim(services.db, ImapWatcher(services).lease_name, dead, 3.0)
    t0 = time.monotonic()
    with watching(services) as watcher:
        wait_for(lambda: watcher.standing_by == dead, 5, "the watcher to stand by")
        wait_for(lambda: ticket_count(services) == 5, 30, "the mail, after the lease lapsed")
        assert time.monotonic() - t0 >= 2.0 and watcher.standing_by == ""
    # The same process restarted (the same name) takes its own lease back at once.
    with watching(services) as again:
        assert again.idle_ready.wait(5) and again.standing_by == ""


def test_new_mail_is_picked_up_through_idle_within_two_seconds(services: Services, imap_account: Account) -> None:
    configure(services.settings, imap_account, imap_poll_seconds=600.0)
    with watching(services) as watcher:
        assert watcher.idle_ready.wait(20)
        for i in range(3):
            t0 = time.monotonic()
            imap_account.append(request(i))
            wait_for(lambda: ticket_count(services) == i + 1, 10, "the ticket")
            assert time.monotonic() - t0 < 2.0, "IDLE did not wake the watcher promptly"
        wait_for(lambda: imap_account.count("INBOX") == 0, 10, "the message to leave INBOX")
    assert imap_account.count("Processed") == 3


def test_server_without_idle_or_move_is_polled_and_mail_filed_by_copy_and_expunge(
    services: Services, imap_account: Account, dovecot: Dovecot
) -> None:
    configure(services.settings, imap_account, imap_host=POOR_HOST, imap_port=dovecot.poor_port, imap_poll_seconds=0.3)
    imap_account.deliver_many([request(i) for i in range(20)])
    with watching(services) as watcher:
        assert watcher.idle_ready.wait(30)
        imap_account.append(request(20))
        wait_for(lambda: ticket_count(services) == 21, 10, "the polled message")
        wait_for(lambda: imap_account.count("INBOX") == 0, 10, "INBOX to be expunged")
    assert imap_account.count("Processed") == 21
    with imap_account.client() as c:
        c.select_folder("Processed", readonly=True)
        assert c.search("DELETED") == []  # the copies are clean; only the originals were flagged


def test_malformed_message_ends_in_failed_folder_and_is_kept_for_reprocess(services: Services, imap_account: Account) -> None:
    configure(services.settings, imap_account)
    garbage = b"this is not mail at all, no headers, nothing\r\n"
    imap_account.deliver_many([garbage, request(1)])
    with watching(services) as watcher:
        assert watcher.idle_ready.wait(30)
    assert imap_account.fetch_all("Failed") == [garbage]
    assert imap_account.count("Processed") == 1
    assert imap_account.count("INBOX") == 0
    with services.db.transaction() as s:
        [kept] = s.scalars(select(Shunted)).all()
        assert kept.raw == garbage and kept.status == "pending" and kept.source.startswith("imap:INBOX/")


def test_message_committed_before_a_crash_is_filed_without_a_second_ticket(services: Services, imap_account: Account) -> None:
    """The crash window: the pipeline committed, the MOVE never happened."""
    configure(services.settings, imap_account)
    raw = request(3)
    imap_account.deliver_many([raw])
    assert receive_email(services, raw, source="imap:INBOX/1").action == "opened"  # the run that "died"
    with watching(services) as watcher:
        assert watcher.idle_ready.wait(30)
        assert watcher.totals.duplicates == 1
    assert ticket_count(services) == 1
    assert count(services.db, OutboxItem) == 1
    assert imap_account.count("INBOX") == 0 and imap_account.count("Processed") == 1


def test_server_restart_mid_run_loses_nothing(services: Services, imap_account: Account, dovecot: Dovecot) -> None:
    configure(services.settings, imap_account, imap_batch=10)
    imap_account.deliver_many([request(i) for i in range(100)])
    with watching(services) as watcher:
        wait_for(lambda: watcher.totals.processed >= 15, 30, "the drain to start")
        dovecot.restart(down_for=0.5)
        imap_account.append(request(100))  # arrives while privbot is reconnecting
        wait_for(lambda: ticket_count(services) == 101 and imap_account.count("INBOX") == 0, 60, "the drain to finish")
        assert watcher.idle_ready.wait(10)
        imap_account.append(request(101))  # and IDLE works on the new connection
        wait_for(lambda: ticket_count(services) == 102, 10, "mail after the restart")
    with services.db.transaction() as s:
        dupes = s.execute(select(Message.message_id).where(Message.direction == "in").group_by(Message.message_id).having(func.count() > 1)).all()
    assert dupes == []
    assert imap_account.count("Processed") == 102


def test_wrong_password_is_logged_once_and_mail_flows_once_it_is_fixed(
    sqlite_url: str, tmp_path: Path, imap_account: Account, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    # One backend is enough: this is about the server refusing us, not the store.
    wrong = "s3cret-" + os.urandom(4).hex()
    services = build_services(configure(make_settings(tmp_path / "var", sqlite_url), imap_account, imap_password=wrong))
    imap_account.deliver_many([request(7)])
    caplog.set_level(logging.DEBUG, logger="privbot.channels.imap")
    try:
        with watching(services) as watcher:
            wait_for(lambda: "login refused" in caplog.text, 10, "the refusal")
            time.sleep(1.0)  # more refused attempts (Dovecot slows repeated failures)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            assert imap_account.user not in caplog.text and wrong not in caplog.text
            assert ticket_count(services) == 0 and imap_account.count("INBOX") == 1
            dovecot.set_password(imap_account.user, wrong)  # a person fixes it on the server
            wait_for(lambda: ticket_count(services) == 1, 20, "mail once the login works")
            assert watcher.idle_ready.wait(10)
    finally:
        services.db.dispose()


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_encrypted_connection_takes_mail_and_untrusted_certificate_is_refused(
    sqlite_url: str, tmp_path: Path, imap_account: Account, dovecot: Dovecot, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = dovecot.tls_port if mode == "tls" else dovecot.port
    services = build_services(configure(make_settings(tmp_path / "var", sqlite_url), imap_account, imap_ssl=mode, imap_port=port))
    imap_account.deliver_many([request(1)])
    try:
        with watching(services) as watcher:  # the system's CAs do not know our server
            time.sleep(0.5)
            assert not watcher.idle_ready.is_set()
            assert "not trusted" in caplog.text
        assert ticket_count(services) == 0 and imap_account.count("INBOX") == 1
        services.settings.imap_ca_file = str(dovecot.cert)
        with watching(services) as watcher:
            assert watcher.idle_ready.wait(20)
        assert ticket_count(services) == 1 and imap_account.count("INBOX") == 0
    finally:
        services.db.dispose()


# -------------------------------------------------------------- privbot run, killed


def _mixed_messages(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 50 == 7:
            out.append(auto_reply(i))
        elif i % 10 == 3:
            msg = EmailMessage()
            msg["From"] = f"Ünïcode User <user{i}@example.org>"
            msg["To"] = "privacy@example.com"
            msg["Subject"] = f"Datenauskunft {i}"
            msg["Message-ID"] = f"<mixed-{i}@example.org>"
            msg.set_content(BODIES[i % len(BODIES)])
            msg.add_alternative(f"<p>{BODIES[i % len(BODIES)]}</p>", subtype="html")
            out.append(bytes(msg))
        else:
            out.append(request(i))
    return out


def _run_privbot(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "privbot.cli", "run"], env=env, stdout=fh, stderr=fh, cwd=ROOT)


@pytest.mark.slow
def test_sigkill_three_times_while_draining_2000_leaves_each_message_recorded_exactly_once(
    tmp_path: Path, imap_account: Account
) -> None:
    n = 2000
    imap_account.deliver_many(_mixed_messages(n))
    db_url = f"sqlite:///{tmp_path / 'privbot.db'}"
    env = {
        **os.environ,
        "PRIVBOT_DATA_DIR": str(tmp_path / "var"),
        "PRIVBOT_DATABASE_URL": db_url,
        "PRIVBOT_PRIVACY_ADDRESS": "privacy@example.com",
        "PRIVBOT_SMTP_LISTEN": "",
        "PRIVBOT_WEB_LISTEN": "",
        "PRIVBOT_OUTBOX_INTERVAL": "3600",
        "PRIVBOT_MAX_AUTO_REPLIES_PER_DAY": "1000000",
        "PRIVBOT_IMAP_HOST": imap_account.host,
        "PRIVBOT_IMAP_PORT": str(imap_account.port),
        "PRIVBOT_IMAP_USER": imap_account.user,
        "PRIVBOT_IMAP_PASSWORD": imap_account.password,
        "PRIVBOT_IMAP_SSL": "plain",
        "PRIVBOT_IMAP_BATCH": "100",
        # Proof of the mailbox only (no one-time code): what is tested is the channel's
        # exactly-once, and argon2-hashing 1,800 codes would take most of the budget.
        "PRIVBOT_VERIFY_POLICY": ",".join(f"{i}=mailbox" for i in ("access", "correction", "deletion", "withdrawal", "cancellation")),
    }
    db = Database(db_url)
    db.migrate()  # so the test can watch progress from the first second

    def recorded() -> int:
        # A plain reader: Database.transaction() would queue for SQLite's write lock,
        # get it only between batches, and so time every kill to a batch boundary.
        with sqlite3.connect(tmp_path / "privbot.db", timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM messages WHERE direction = 'in'").fetchone()[0])

    log = tmp_path / "privbot.log"
    kills = in_the_window = 0
    try:
        # At least three kills, and on until one has fallen between a commit and the MOVE
        # that follows it (what the restart must answer as duplicates): where a kill lands
        # is chance, and the faster a batch commits the narrower that window is.
        for threshold in (150, 700, 1250, 1450, 1650, 1800):
            proc = _run_privbot(env, log)
            wait_for(lambda: recorded() >= threshold or proc.poll() is not None, 60, f"{threshold} messages recorded")
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            # Committed and still in INBOX at once: this kill fell in the window. Dovecot
            # finishes a MOVE the killed process had already sent, so count only once the
            # mailbox has stopped changing; counting at once found a window that the MOVE
            # then closed, and the restart had no duplicates to answer.
            in_the_window += recorded() + settled_inbox(imap_account) > n
            if kills >= 3 and in_the_window:
                break
        proc = _run_privbot(env, log)
        wait_for(lambda: imap_account.count("INBOX") == 0, 90, "INBOX to be drained")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "privbot did not stop cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert kills >= 3 and in_the_window, f"none of {kills} kills fell between a commit and its MOVE"
    # A restart found committed mail still in INBOX, and answered it as duplicates.
    assert re.search(r"duplicate [1-9]", log.read_text()), "no restart found committed mail still in INBOX"
    with db.transaction() as s:
        tickets = s.scalar(select(func.count(Ticket.id)))
        autos = s.scalar(select(func.count(Message.id)).where(Message.kind == "auto_reply"))
        inbound = s.scalars(select(Message.message_id).where(Message.direction == "in")).all()
        per_ticket = s.execute(select(Message.ticket_id, func.count()).where(Message.direction == "in", Message.ticket_id.is_not(None)).group_by(Message.ticket_id).having(func.count() > 1)).all()
        acks = s.execute(select(OutboxItem.ticket_id, func.count()).group_by(OutboxItem.ticket_id).having(func.count() > 1)).all()
        shunted = s.scalar(select(func.count(Shunted.id)))
    db.dispose()
    assert (tickets or 0) + (autos or 0) == n
    assert autos == sum(1 for i in range(n) if i % 50 == 7)
    assert len(inbound) == len(set(inbound)) == n
    assert per_ticket == [] and acks == [] and shunted == 0
    assert imap_account.count("INBOX") == 0
    assert imap_account.count("Processed") == n


def test_folder_recreated_under_the_watcher_is_taken_afresh_without_double_tickets(
    sqlite_url: str, tmp_path: Path, imap_account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting and re-creating the watched folder gives it a new UIDVALIDITY: the old
    UIDs mean nothing, and the same message delivered again is still one ticket."""
    services = build_services(configure(make_settings(tmp_path / "var", sqlite_url), imap_account, imap_folder="Privacy"))
    first = request(1)
    try:
        with watching(services) as watcher:
            assert watcher.idle_ready.wait(20)  # "Privacy" did not exist: created
            imap_account.append(first, "Privacy")
            wait_for(lambda: ticket_count(services) == 1, 10, "the first ticket")
            old = watcher.uidvalidity
            with imap_account.client() as c:
                c.delete_folder("Privacy")
                c.create_folder("Privacy")
                c.append("Privacy", first)  # the same message again, and a new one
                c.append("Privacy", request(2))
            wait_for(lambda: ticket_count(services) == 2 and imap_account.count("Privacy") == 0, 20, "the new folder drained")
            assert watcher.uidvalidity != old
        assert "UIDVALIDITY" in caplog.text
        assert imap_account.count("Processed") == 3
    finally:
        services.db.dispose()


def test_message_stays_on_the_server_while_the_database_is_down(sqlite_url: str, tmp_path: Path, imap_account: Account) -> None:
    services = build_services(configure(make_settings(tmp_path / "var", sqlite_url), imap_account))
    outage = {"left": 2}

    def flaky_database(services: Services, raw: bytes, *, source: str) -> object:
        if outage["left"]:
            outage["left"] -= 1
            raise DatabaseUnavailable("connection refused")
        return receive_email(services, raw, source=source)

    imap_account.deliver_many([request(1)])
    try:
        watcher = ImapWatcher(services, receive=flaky_database)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            time.sleep(0.3)
            assert imap_account.count("INBOX") == 1 and ticket_count(services) == 0
            assert watcher.idle_ready.wait(30), "not taken once the database was back"
        finally:
            watcher.stop()
            thread.join(10)
        assert ticket_count(services) == 1
        assert imap_account.count("INBOX") == 0 and imap_account.count("Processed") == 1
    finally:
        services.db.dispose()


def test_message_that_crashes_even_the_shunt_goes_to_failed_after_three_tries_and_the_rest_flow(
    sqlite_url: str, tmp_path: Path, imap_account: Account
) -> None:
    services = build_services(configure(make_settings(tmp_path / "var", sqlite_url), imap_account))
    poison = request(66, sender="poison@example.org")

    def pipeline(services: Services, raw: bytes, *, source: str) -> object:
        if b"poison@example.org" in raw:
            raise RuntimeError("disk full while keeping the message")
        return receive_email(services, raw, source=source)

    imap_account.deliver_many([poison, request(1), request(2)])
    try:
        watcher = ImapWatcher(services, receive=pipeline)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            assert watcher.idle_ready.wait(30)
        finally:
            watcher.stop()
            thread.join(10)
        assert ticket_count(services) == 2
        assert imap_account.fetch_all("Failed") == [poison]
        assert imap_account.count("INBOX") == 0
    finally:
        services.db.dispose()


async def test_privbot_run_keeps_smtp_intake_working_while_the_imap_login_is_refused(
    sqlite_url: str, tmp_path: Path, imap_account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from privbot.service import serve
    from tests.support import free_port, send

    caplog.set_level(logging.INFO)
    port = free_port()
    settings = configure(make_settings(tmp_path / "var", sqlite_url), imap_account, imap_password="not-the-password",
                         smtp_listen=f"127.0.0.1:{port}", imap_auth_retry_seconds=300.0)
    services = build_services(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(services, stop))
    try:
        for _ in range(400):
            await asyncio.sleep(0.05)
            if "login refused" in caplog.text and "privbot running" in caplog.text:
                break
        assert "login refused" in caplog.text and "privbot running: smtp, imap" in caplog.text
        await asyncio.to_thread(send, port, make_mail(sender="carol@example.org"))
        assert ticket_count(services) == 1
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        services.db.dispose()
        imap_account.client().logout()  # a good login clears Dovecot's penalty for 127.0.0.1


def test_a_message_that_breaks_the_pipeline_inside_a_backlog_is_shunted_alone_and_the_rest_are_filed(
    services: Services, imap_account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog goes in groups, one transaction each; a group that fails is retried one
    message at a time, so only the bad message ends in Failed and nothing is doubled."""
    configure(services.settings, imap_account)
    break_classifier_on(services, monkeypatch)
    bad = make_mail("Please explode my account.", sender="bad@example.org", subject="Request bad")
    imap_account.deliver_many([request(i) for i in range(1, 4)] + [bytes(bad)] + [request(i) for i in range(4, 7)])
    with watching(services) as watcher:
        assert watcher.idle_ready.wait(30)
        assert watcher.totals.processed == 7 and watcher.totals.failed == 1
    assert ticket_count(services) == 6
    assert count(services.db, Shunted) == 1
    assert imap_account.count("Failed") == 1 and imap_account.count("Processed") == 6 and imap_account.count("INBOX") == 0
