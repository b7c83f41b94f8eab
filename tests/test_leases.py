"""One process at a time: a lease is taken, renewed, refused to others, lapses, and is released."""

from __future__ import annotations

from privbot import clock, leases
from privbot.app import Services


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
