"""One process at a time: a lease is taken, renewed, refused to others, lapses, and is released."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from privbot import clock, leases
from privbot.app import Services
from privbot.cli import main


def test_a_lease_is_refused_to_others_until_its_holder_releases_it_or_it_lapses(services: Services, frozen_clock: object) -> None:
    db, name = services.db, "imap:mail.example.org:privacy:INBOX"
    assert leases.claim(db, name, "a", 60)
    assert not leases.claim(db, name, "b", 60)
    clock.fast_forward(seconds=50)
    assert leases.claim(db, name, "a", 60)  # renewed: good for another minute from now
    clock.fast_forward(seconds=50)
    assert not leases.claim(db, name, "b", 60)
    assert leases.held_by(db, name) is not None and leases.held_by(db, name)[0] == "a"
    clock.fast_forward(seconds=11)  # "a" died without a word: the lease lapses
    assert leases.held_by(db, name) is None
    assert leases.claim(db, name, "b", 60)
    assert not leases.claim(db, name, "a", 60)  # too late: "a" must stand by now
    leases.release(db, name, "a")  # not its lease any more: nothing happens
    assert leases.held_by(db, name)[0] == "b"
    leases.release(db, name, "b")
    assert leases.held_by(db, name) is None and leases.claim(db, name, "a", 60)


def test_leases_on_different_mailboxes_do_not_touch(services: Services) -> None:
    assert leases.claim(services.db, "imap:one", "a", 60)
    assert leases.claim(services.db, "imap:two", "b", 60)
    assert not leases.claim(services.db, "imap:one", "b", 60)


def test_privbot_leases_names_who_watches_each_mailbox_and_says_which_nobody_does(
    services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = services.settings
    monkeypatch.setenv("PRIVBOT_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("PRIVBOT_DATABASE_URL", s.db_url)
    assert main(["leases"]) == 0
    assert capsys.readouterr().out.startswith("no leases")

    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    clock.freeze(start)
    mailbox, bot = "imap:mail.example.org:993:privacy:INBOX", "telegram:4242"
    assert leases.claim(services.db, mailbox, "node1:/srv/privbot", 60)
    assert leases.claim(services.db, bot, "node2:/srv/privbot", 90)
    # node1 died without releasing its lease: 75 s later it has lapsed; node2's has not
    clock.freeze(datetime(2026, 3, 2, 9, 1, 15, tzinfo=UTC))  # (main() unfreezes the clock when it ends)
    assert main(["leases", "--json"]) == 0
    rows = {row["job"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows == {
        "imap": {"job": "imap", "name": mailbox, "holder": "node1:/srv/privbot", "expires_at": "2026-03-02T09:01:00+00:00", "held": False},
        "telegram": {"job": "telegram", "name": bot, "holder": "node2:/srv/privbot", "expires_at": "2026-03-02T09:01:30+00:00", "held": True},
    }
    clock.freeze(datetime(2026, 3, 2, 9, 1, 15, tzinfo=UTC))
    assert main(["leases"]) == 0
    imap_line, telegram_line = capsys.readouterr().out.splitlines()
    assert imap_line.startswith("imap") and "LAPSED 15 s ago: nobody holds it (last node1:/srv/privbot" in imap_line
    assert telegram_line.startswith("telegram") and "held by node2:/srv/privbot until 2026-03-02 09:01:30 UTC" in telegram_line
    assert "lapses in 15 s" in telegram_line
