"""The staff console's routes through Starlette's TestClient, on SQLite and PostgreSQL:
who may do what, CSRF on every form, four eyes, escaping, and what each action leaves
behind (outbox, audit trail, learned examples)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import event, func, select
from starlette.routing import Route
from starlette.testclient import TestClient

from privbot import clock, learned, replies
from privbot.app import Services
from privbot.domain import Channel, Classification, Inbound, Intent, Status
from privbot.intake import intake
from privbot.store.models import AuditEntry, ConsoleSession, Draft, LoginFailure, OutboxItem, Staff, Ticket
from privbot.web import actions, auth, views
from privbot.web.app import SESSION_COOKIE, create_app

PASSWORD = "correct horse battery"
STAFF = {"agent@corp.example": "agent", "anna@corp.example": "approver", "bob@corp.example": "approver", "root@corp.example": "admin"}


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Still Argon2id, with the smallest cost: production's ~0.25 s per hash would make
    # these tests slow without testing anything more (test_staff_add_cli uses the real one).
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def app(services: Services) -> object:
    with services.db.transaction() as s:
        for email, role in STAFF.items():
            auth.add_staff(s, email, role, PASSWORD)
    return create_app(services)


@pytest.fixture
def clients(app: object) -> Iterator[dict[str, TestClient]]:
    out = {role: logged_in(app, email) for email, role in STAFF.items() if role != "approver"}
    out["anna"] = logged_in(app, "anna@corp.example")
    out["bob"] = logged_in(app, "bob@corp.example")
    out["anonymous"] = TestClient(app, follow_redirects=False)
    yield out
    for c in out.values():
        c.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def logged_in(app: object, email: str, password: str = PASSWORD) -> TestClient:
    c = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"email": email, "password": password, "csrf": token, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return c


def post(c: TestClient, url: str, data: dict[str, object] | None = None, *, page: str | None = None) -> object:
    """Post a form the way a browser does: with the token from the page it came from."""
    token = csrf_of(c.get(page or "/").text)  # one token per session, on every page
    return c.post(url, data={**(data or {}), "csrf": token})


def open_ticket(services: Services, body: str = "Please delete all my personal data.", *, intent: str = "deletion",
                sender: str = "alice@example.org", subject: str = "Privacy request") -> str:
    c = Classification(Intent(intent), (Intent(intent),), 0.92, "en", ("delete", "all my personal data"))
    result = intake(services, Inbound(channel=Channel.EMAIL, sender=sender, text=body, subject=subject,
                                      message_id=f"<{abs(hash((body, sender, clock.now())))}@example.org>"), classification=c)
    assert result.ticket_ref
    return result.ticket_ref


def draft_answer(services: Services, ref: str) -> int:
    """The substantive answer, as verification drafts it: pending, waiting for a person."""
    with services.db.transaction() as s:
        t = s.get(Ticket, int(ref.split("-")[1]))
        d = replies.create_draft(s, services.settings, services.renderer, t, "answer", template=f"answer_{t.intent}",
                                 account={"email": t.requester, "name": "Alice", "phone": "", "account_id": "A-1"})
        d.intent = t.intent
        t.status = str(Status.AWAITING_APPROVAL)
        return d.id


def draft(services: Services, draft_id: int) -> Draft:
    with services.db.transaction() as s:
        d = s.get(Draft, draft_id)
        assert d is not None
        return d


def ticket(services: Services, ref: str) -> Ticket:
    with services.db.transaction() as s:
        t = s.get(Ticket, int(ref.split("-")[1]))
        assert t is not None
        return t


def outbox_for(services: Services, draft_id: int) -> list[OutboxItem]:
    with services.db.transaction() as s:
        return list(s.scalars(select(OutboxItem).where(OutboxItem.draft_id == draft_id)))


def concrete(path: str, ref: str, draft_id: int, staff_id: int) -> str:
    return path.replace("{ref}", ref).replace("{draft_id:int}", str(draft_id)).replace("{staff_id:int}", str(staff_id))


# ---------------------------------------------------------------------------- sessions and forms


# Public by design: the login form, the ops endpoints, and the requester's confirmation
# page behind the code link (it shows nothing about the ticket; tests/test_verify_link.py).
def test_every_page_redirects_to_login_without_a_session(app: object, services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    anonymous = clients["anonymous"]
    pages = [r for r in app.routes if isinstance(r, Route) and "GET" in (r.methods or ()) and r.path not in ("/login", "/healthz", "/metrics", "/verify/{ref}")]  # type: ignore[attr-defined]
    assert {"/", "/tickets/{ref}", "/reports", "/audit", "/staff"} <= {r.path for r in pages}
    for route in pages:
        url = concrete(route.path, ref, draft_id, 1)
        r = anonymous.get(url)
        assert r.status_code == 303, url
        assert r.headers["location"].startswith("/login"), url
        assert ref not in r.text and "alice" not in r.text
    # and nothing is changed by a form posted without a session either
    r = anonymous.post(f"/tickets/{ref}/drafts/{draft_id}/approve", data={"csrf": "x"})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert draft(services, draft_id).status == "pending"


def test_every_form_posted_without_its_csrf_token_is_refused(app: object, services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    root = clients["admin"]
    with services.db.transaction() as s:
        agent_id = s.scalar(select(Staff.id).where(Staff.email == "agent@corp.example"))
    forms = [r for r in app.routes if isinstance(r, Route) and "POST" in (r.methods or ())]  # type: ignore[attr-defined]
    assert len(forms) >= 10
    data = {"subject": "x", "text": "y", "reason": "r", "days": "5", "primary": "access", "email": "new@corp.example",
            "role": "admin", "password": "long enough password", "active": "0", "op": "save"}
    for route in forms:
        url = concrete(route.path, ref, draft_id, agent_id)
        assert root.post(url, data=data).status_code == 403, f"{url} accepted a form without a token"
        assert root.post(url, data={**data, "csrf": "forged-token"}).status_code == 403, f"{url} accepted a forged token"
    # nothing happened: the draft waits, the ticket is open, nobody was added or demoted
    assert draft(services, draft_id).status == "pending" and draft(services, draft_id).edited_by is None
    assert ticket(services, ref).status == Status.AWAITING_APPROVAL and ticket(services, ref).intent == "deletion"
    with services.db.transaction() as s:
        assert s.scalar(select(Staff).where(Staff.email == "new@corp.example")) is None
        assert s.get(Staff, agent_id).active  # type: ignore[union-attr]
    assert root.get("/").status_code == 200  # the session itself still works


def test_a_form_posted_from_another_site_is_refused_even_with_the_token(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    anna = clients["anna"]
    token = csrf_of(anna.get(f"/tickets/{ref}").text)
    r = anna.post(f"/tickets/{ref}/drafts/{draft_id}/approve", data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert draft(services, draft_id).status == "pending"


def test_login_refuses_a_wrong_password_and_throttles_guessing(app: object) -> None:
    c = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        r = c.post("/login", data={"email": "anna@corp.example", "password": "guess", "csrf": token})
        assert r.status_code == 401 and "Wrong address or password" in r.text
    r = c.post("/login", data={"email": "anna@corp.example", "password": PASSWORD, "csrf": token})
    assert r.status_code == 429, "the right password must wait once the address is being guessed"
    assert c.get("/").status_code == 303
    # without the login form's token nobody logs in at all
    fresh = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    assert fresh.post("/login", data={"email": "bob@corp.example", "password": PASSWORD}).status_code == 403


def test_guessing_is_counted_by_every_node_and_survives_a_restart(app: object, services: Services, frozen_clock: object) -> None:
    guesser = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    token = csrf_of(guesser.get("/login").text)
    for _ in range(5):
        assert guesser.post("/login", data={"email": "anna@corp.example", "password": "guess", "csrf": token}).status_code == 401
    other_node = TestClient(create_app(services), follow_redirects=False)  # another process on the same database
    token = csrf_of(other_node.get("/login").text)
    right = {"email": "anna@corp.example", "password": PASSWORD, "csrf": token}
    assert other_node.post("/login", data=right).status_code == 429
    with services.db.transaction() as s:
        kept = [f.key_hash for f in s.scalars(select(LoginFailure))]
    secret = auth.load_secret(services.settings).encode()
    keyed = hmac.new(secret, b"addr:anna@corp.example", hashlib.sha256).hexdigest()
    assert len(kept) == 10 and kept.count(keyed) == 5  # the address only as an HMAC under the console's secret
    assert hashlib.sha256(b"addr:anna@corp.example").hexdigest() not in kept and not any("anna" in k for k in kept)
    clock.fast_forward(minutes=16)  # the window has passed
    assert other_node.post("/login", data=right).status_code == 303
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(LoginFailure)) == 0  # a success forgets that key's failures


def test_login_goes_back_only_to_a_page_of_the_console(app: object) -> None:
    c = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    assert c.get("/reports").headers["location"] == "/login?next=/reports"
    token = csrf_of(c.get("/login?next=/reports").text)
    r = c.post("/login", data={"email": "bob@corp.example", "password": PASSWORD, "csrf": token, "next": "//evil.example/x"})
    assert r.headers["location"] == "/"


def test_session_cookie_is_httponly_samesite_and_pages_are_not_cached(app: object, services: Services) -> None:
    c = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"email": "bob@corp.example", "password": PASSWORD, "csrf": token})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    ref = open_ticket(services)
    page = c.get(f"/tickets/{ref}")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]


def test_logging_out_ends_the_session_on_the_server_so_a_copied_cookie_is_refused(app: object, services: Services) -> None:
    laptop = logged_in(app, "agent@corp.example")
    phone = logged_in(app, "agent@corp.example")
    cookie = laptop.cookies[SESSION_COOKIE]
    stolen = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    stolen.cookies.set(SESSION_COOKIE, cookie)
    assert stolen.get("/").status_code == 200  # a copy works while the login lasts
    assert post(laptop, "/logout").status_code == 303  # type: ignore[attr-defined]
    assert stolen.get("/").status_code == 303 and stolen.get("/").headers["location"].startswith("/login")
    assert phone.get("/").status_code == 200  # the member's other login goes on
    with services.db.transaction() as s:
        rows = list(s.scalars(select(ConsoleSession)))
    assert len(rows) == 2 and sum(r.ended_at is not None for r in rows) == 1
    assert all(len(r.token_hash) == 64 and r.token_hash not in cookie for r in rows)  # only a hash is kept


def test_a_login_lasts_no_longer_than_its_cookie_would(app: object, services: Services, frozen_clock: object) -> None:
    agent = logged_in(app, "agent@corp.example")
    clock.fast_forward(hours=11)
    assert agent.get("/").status_code == 200
    clock.fast_forward(hours=2)  # even a cookie replayed with a forged date would find its login expired
    assert agent.get("/").status_code == 303


def test_a_deactivated_member_of_staff_is_logged_out_at_once(services: Services, clients: dict[str, TestClient]) -> None:
    agent = clients["agent"]
    assert agent.get("/").status_code == 200
    with services.db.transaction() as s:
        staff_id = s.scalar(select(Staff.id).where(Staff.email == "agent@corp.example"))
    r = post(clients["admin"], f"/staff/{staff_id}", {"role": "agent", "active": "0"}, page="/staff")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert agent.get("/").status_code == 303


# ---------------------------------------------------------------------------- roles and four eyes


def test_an_agent_edits_but_cannot_approve_and_an_approver_sends(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services, intent="access", body="Send me a copy of my data.")
    draft_id = draft_answer(services, ref)
    agent, bob = clients["agent"], clients["bob"]
    r = post(agent, f"/tickets/{ref}/drafts/{draft_id}", {"subject": "Your data", "text": "Dear Alice,\nhere it is.", "op": "save"})
    assert r.status_code == 303  # type: ignore[attr-defined]
    d = draft(services, draft_id)
    assert d.edited_by == "agent@corp.example" and d.text == "Dear Alice,\nhere it is." and d.subject == f"[{ref}] Your data"
    r = post(agent, f"/tickets/{ref}/drafts/{draft_id}/approve")
    assert r.status_code == 403 and "approver" in r.text  # type: ignore[attr-defined]
    assert outbox_for(services, draft_id) == []
    r = post(bob, f"/tickets/{ref}/drafts/{draft_id}/approve")
    assert r.status_code == 303  # type: ignore[attr-defined]
    items = outbox_for(services, draft_id)
    assert [i.recipient for i in items] == ["alice@example.org"]
    assert b"here it is." in items[0].payload and ref.encode() in items[0].payload
    assert ticket(services, ref).status == Status.ANSWERED
    assert "approved; it is in the outbox" in bob.get(f"/tickets/{ref}").text


def test_a_deletion_cannot_be_approved_by_the_one_who_drafted_it(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    anna, bob = clients["anna"], clients["bob"]
    post(anna, f"/tickets/{ref}/drafts/{draft_id}", {"subject": "Deleted", "text": "We deleted your data.", "op": "save"})
    r = post(anna, f"/tickets/{ref}/drafts/{draft_id}/approve")
    assert r.status_code == 303  # type: ignore[attr-defined]
    page = anna.get(f"/tickets/{ref}").text
    assert "needs a second person" in page
    assert draft(services, draft_id).status == "pending" and outbox_for(services, draft_id) == []
    post(bob, f"/tickets/{ref}/drafts/{draft_id}/approve")
    assert draft(services, draft_id).approved_by == "bob@corp.example"
    assert len(outbox_for(services, draft_id)) == 1


def test_a_message_body_holding_script_is_shown_as_text(services: Services, clients: dict[str, TestClient]) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)> please delete my data'
    ref = open_ticket(services, body=evil, subject="<b>bold</b> request", sender="mallory@example.org")
    page = clients["agent"].get(f"/tickets/{ref}").text
    assert '<script>alert("x")</script>' not in page and "<img src=x" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; request" in page
    assert "<script" not in page  # the console itself runs no script at all


# ---------------------------------------------------------------------------- ticket actions


def test_preview_shows_the_edit_without_saving_it(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    before = draft(services, draft_id)
    r = post(clients["agent"], f"/tickets/{ref}/drafts/{draft_id}", {"subject": "New words", "text": "Preview <me>", "op": "preview"})
    assert r.status_code == 200  # type: ignore[attr-defined]
    assert "Preview — not saved yet" in r.text and "Preview &lt;me&gt;" in r.text  # type: ignore[attr-defined]
    after = draft(services, draft_id)
    assert (after.text, after.subject, after.edited_by) == (before.text, before.subject, None)


def test_denying_needs_a_reason_which_the_requester_receives(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    bob = clients["bob"]
    post(bob, f"/tickets/{ref}/deny", {"reason": "   "})
    assert ticket(services, ref).status == Status.AWAITING_APPROVAL
    assert "needs a reason" in bob.get(f"/tickets/{ref}").text
    post(bob, f"/tickets/{ref}/deny", {"reason": "We must keep invoices for 7 years (tax law)."})
    assert ticket(services, ref).status == Status.REJECTED
    assert draft(services, draft_id).status == "denied" and outbox_for(services, draft_id) == []
    with services.db.transaction() as s:
        notice = s.scalar(select(Draft).where(Draft.ticket_id == int(ref[5:]), Draft.kind == "denial"))
        assert notice is not None and notice.approved_by == "bob@corp.example"
        trail = [a.action for a in s.scalars(select(AuditEntry).where(AuditEntry.ticket_id == int(ref[5:])))]
    [item] = outbox_for(services, notice.id)
    assert item.recipient == "alice@example.org" and b"tax law" in item.payload
    assert "denied" in trail
    assert post(clients["agent"], f"/tickets/{ref}/deny", {"reason": "x"}).status_code == 403  # type: ignore[attr-defined]


def test_reclassifying_keeps_the_correction_as_a_training_example(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services, body="Stop sending me your newsletter and close my account.", intent="withdrawal")
    post(clients["agent"], f"/tickets/{ref}/reclassify", {"primary": "cancellation", "also": ["withdrawal", "cancellation"]})
    t = ticket(services, ref)
    assert (t.intent, t.intents) == ("cancellation", ["cancellation", "withdrawal"])
    rows = [json.loads(line) for line in learned.examples_path(services.settings).read_text().splitlines()]
    assert rows == [{
        "text": "Stop sending me your newsletter and close my account.", "subject": "Privacy request", "intent": "cancellation",
        "intents": ["cancellation", "withdrawal"], "lang": "en", "ticket": ref, "by": "agent@corp.example", "at": rows[0]["at"],
    }]
    with services.db.transaction() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "reclassified"))
        assert entry is not None and entry.actor == "agent@corp.example" and entry.detail["old"] == ["withdrawal"]


def test_closing_takes_the_ticket_out_of_the_queue(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    bob = clients["bob"]
    link = f'href="/tickets/{ref}"'
    assert link in bob.get("/").text
    post(bob, f"/tickets/{ref}/close", {"note": "duplicate of an earlier request"})
    assert ticket(services, ref).status == Status.CLOSED
    assert draft(services, draft_id).status == "superseded"
    assert link not in bob.get("/").text
    assert link in bob.get("/?state=closed").text


@pytest.mark.skipif(not actions.extension_available(), reason="deadlines.extend is not in this build")
def test_extending_moves_the_deadline_and_tells_the_requester(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    before = ticket(services, ref).due_at
    bob = clients["bob"]
    post(bob, f"/tickets/{ref}/extend", {"days": "14", "reason": "Your data is spread over three systems."})
    t = ticket(services, ref)
    assert t.extended and t.due_at == before + timedelta(days=14)
    page = bob.get(f"/tickets/{ref}").text
    assert "Your data is spread over three systems." in page and "extended" in page
    with services.db.transaction() as s:
        notice = s.scalar(select(Draft).where(Draft.ticket_id == t.id, Draft.kind == "extension"))
    assert notice is not None and len(outbox_for(services, notice.id)) == 1


# ---------------------------------------------------------------------------- queue and reports


def test_a_queue_filtered_by_right_is_cut_at_the_limit_by_the_database_and_misses_no_secondary_right(
    services: Services, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(views, "QUEUE_LIMIT", 3)
    for i in range(4):
        open_ticket(services, f"copy of my data please {i}", intent="access", sender=f"a{i}@example.org")
    both = intake(services, Inbound(channel=Channel.EMAIL, sender="both@example.org", text="close my account and delete it all",
                                    message_id="<both@example.org>"),
                  classification=Classification(Intent.CANCELLATION, (Intent.CANCELLATION, Intent.DELETION), 0.9, "en")).ticket_ref
    deletions = [open_ticket(services, f"delete me {i}", sender=f"d{i}@example.org") for i in range(3)]
    loaded: list[Ticket] = []
    counting = lambda target, context: loaded.append(target)  # noqa: E731
    event.listen(Ticket, "load", counting)
    try:
        with services.db.transaction() as s:
            rows, cut = views.queue(s, views.QueueFilter(state="all", right="deletion"))
    finally:
        event.remove(Ticket, "load", counting)
    assert [r.ref for r in rows] == [both, *deletions[:2]] and cut  # by deadline; four match, three shown
    assert len(loaded) == 4  # the limit and one more: not every ticket, to be filtered in Python
    with services.db.transaction() as s:
        rows, cut = views.queue(s, views.QueueFilter(state="all", right="cancellation"))
        assert [r.ref for r in rows] == [both] and not cut
        assert views.queue(s, views.QueueFilter(state="all", right="correction")) == ([], False)


def test_queue_puts_overdue_first_and_filters(services: Services, clients: dict[str, TestClient], frozen_clock: object) -> None:
    old = open_ticket(services, sender="old@example.org", intent="access", body="copy of my data please")
    clock.fast_forward(days=35)
    new = open_ticket(services, sender="new@example.org", body="delete me")
    tg = intake(services, Inbound(channel=Channel.TELEGRAM, sender="telegram:4242", chat_id=4242, text="close my account"),
                classification=Classification(Intent.CANCELLATION, (Intent.CANCELLATION, Intent.DELETION), 0.9, "en")).ticket_ref
    agent = clients["agent"]
    page = agent.get("/").text
    assert page.index(old) < page.index(new)
    assert "5 d overdue" in page and "badge overdue" in page and "30 d left" in page
    assert old not in agent.get("/?right=deletion").text and tg in agent.get("/?right=deletion").text  # secondary right counts
    only_tg = agent.get("/?channel=telegram").text
    assert tg in only_tg and new not in only_tg
    found = agent.get("/?q=NEW@example").text
    assert new in found and old not in found
    assert old in agent.get(f"/?q={old}").text


def test_reports_count_rights_channels_and_on_time_answers(services: Services, clients: dict[str, TestClient], frozen_clock: object) -> None:
    for n in range(3):
        ref = open_ticket(services, sender=f"p{n}@example.org", intent="access", body=f"my data {n}")
        draft_id = draft_answer(services, ref)
        clock.fast_forward(days=20 * (n + 1))  # answered after 20, 40 and 60 days; 30 are allowed
        with services.db.transaction() as s:
            replies.approve(s, services.settings, s.get(Ticket, int(ref[5:])), "bob@corp.example", draft_id=draft_id)
    open_ticket(services, sender="late@example.org")
    page = clients["agent"].get("/reports").text
    assert "<svg" in page and "Open tickets by days left" in page
    assert "33%" in page and "answered on time (1 of 3)" in page
    assert re.search(r'<span class="big">40\.0</span><span>median days to answer', page)
    assert re.search(r"<tr><td>access</td><td>3</td><td>0</td><td>3</td></tr>", page)


def test_audit_page_says_the_chain_is_intact(services: Services, clients: dict[str, TestClient]) -> None:
    open_ticket(services)
    page = clients["bob"].get("/audit").text
    assert "The chain is intact" in page and "ticket opened" in page
    assert clients["agent"].get("/audit").status_code == 403


def test_an_admin_adds_staff_who_can_then_log_in(app: object, clients: dict[str, TestClient]) -> None:
    r = post(clients["admin"], "/staff", {"email": "Carol@Corp.example", "role": "agent", "password": "a long password"}, page="/staff")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert "carol@corp.example added as agent" in clients["admin"].get("/staff").text
    assert logged_in(app, "carol@corp.example", "a long password").get("/staff").status_code == 403
    assert post(clients["bob"], "/staff", {"email": "x@corp.example", "role": "admin", "password": "a long password"}).status_code == 403  # type: ignore[attr-defined]


def test_staff_never_see_the_one_time_code_sent_to_the_requester(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    with services.db.transaction() as s:
        ack = s.scalar(select(OutboxItem).where(OutboxItem.ticket_id == int(ref[5:])))
        assert ack is not None
        payload = ack.payload.decode("utf-8", "replace")
    code = re.search(r"^\s+(\d{6,10})\s*$", payload, re.M)
    assert code, "the acknowledgement carries a code"
    page = clients["agent"].get(f"/tickets/{ref}").text
    assert "We have received your privacy request" in page
    assert code.group(1) not in page
    # the store keeps a placeholder (intake), and the console hides any code left in older rows
    assert "[one-time code]" in page or "••••••" in page


# ---------------------------------------------------------------------------- command-line parity


def _cli_env(monkeypatch: pytest.MonkeyPatch, services: Services) -> None:
    monkeypatch.setenv("PRIVBOT_DATA_DIR", str(services.settings.data_dir))
    monkeypatch.setenv("PRIVBOT_DATABASE_URL", services.settings.db_url)
    monkeypatch.setenv("PRIVBOT_SMTP_LISTEN", "")


def test_staff_add_from_the_command_line_creates_a_login(monkeypatch: pytest.MonkeyPatch, services: Services,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from privbot import cli

    monkeypatch.undo()  # the real Argon2 cost, as in production
    _cli_env(monkeypatch, services)
    monkeypatch.setenv("PRIVBOT_STAFF_PASSWORD", "s3cret enough pass")
    assert cli.main(["staff", "add", "Dana@Corp.example", "--role", "approver"]) == 0
    assert "staff dana@corp.example added as approver" in capsys.readouterr().out
    assert cli.main(["staff", "add", "dana@corp.example", "--role", "admin"]) == 2
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setenv("PRIVBOT_STAFF_PASSWORD", "short")
    assert cli.main(["staff", "add", "eve@corp.example", "--role", "agent"]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    with services.db.transaction() as s:
        person = s.scalar(select(Staff).where(Staff.email == "dana@corp.example"))
        assert person is not None and person.password_hash.startswith("$argon2id$") and "s3cret" not in person.password_hash
    c = logged_in(create_app(services), "dana@corp.example", "s3cret enough pass")
    assert c.get("/audit").status_code == 200


def test_audit_verify_names_the_first_altered_entry(monkeypatch: pytest.MonkeyPatch, services: Services,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import delete, update

    from privbot import cli

    _cli_env(monkeypatch, services)
    for n in range(3):
        open_ticket(services, sender=f"p{n}@example.org", body=f"delete my data {n}")
    assert cli.main(["audit", "verify"]) == 0
    assert "audit trail intact" in capsys.readouterr().out
    with services.db.transaction() as s:
        ids = list(s.scalars(select(AuditEntry.id).order_by(AuditEntry.id)))
        victim, removed = ids[3], ids[6]
        s.execute(update(AuditEntry).where(AuditEntry.id == victim).values(actor="someone-else"))
    assert cli.main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"ALTERED at entry #{victim}:" in out and "altered" in out
    with services.db.transaction() as s:  # put it back, then remove a later entry instead
        s.execute(update(AuditEntry).where(AuditEntry.id == victim).values(actor="privbot"))
        s.execute(delete(AuditEntry).where(AuditEntry.id == removed))
    assert cli.main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"ALTERED at entry #{ids[7]}:" in out and "removed" in out


async def test_privbot_run_serves_the_console_and_stops_it(services: Services) -> None:
    import httpx

    from privbot.service import FACTORIES
    from privbot.web.server import web_component
    from tests.support import free_port

    port = free_port()
    services.settings.web_listen = f"127.0.0.1:{port}"
    assert any(getattr(f, "__name__", "") == "_web" for f in FACTORIES)
    component = web_component(services)
    assert component is not None and component.name == "web"
    await component.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            login = await http.get("/login")
            assert login.status_code == 200 and 'name="password"' in login.text
            assert (await http.get("/")).headers["location"] == "/login?next=/"
            assert (await http.get("/healthz")).status_code == 200  # the ops routes ride along, no login
    finally:
        await component.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/login")
    services.settings.web_listen = ""
    assert web_component(services) is None


def test_sessions_survive_a_restart_because_the_secret_is_kept_private(app: object, services: Services) -> None:
    import stat

    c = logged_in(app, "bob@corp.example")
    secret = services.settings.data_dir / "web_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text()) >= 40
    restarted = TestClient(create_app(services), follow_redirects=False, cookies=dict(c.cookies))
    assert restarted.get("/").status_code == 200
    services.settings.web_secret = "a different configured secret"
    assert TestClient(create_app(services), follow_redirects=False, cookies=dict(c.cookies)).get("/").status_code == 303


def test_codes_left_in_older_thread_copies_are_hidden_but_answers_keep_their_numbers() -> None:
    from privbot.web.app import hide_codes

    assert hide_codes("Your code:\n\n    48213907\n", "acknowledgement") == "Your code:\n\n    ••••••\n"
    assert hide_codes("Ticket PRIV-000042, account 12345678", "answer") == "Ticket PRIV-000042, account 12345678"
    assert "000042" in hide_codes("[PRIV-000042] reminder", "verification_reminder")


def test_an_unedited_deletion_answer_needs_two_different_approvers(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services)
    draft_id = draft_answer(services, ref)
    url = f"/tickets/{ref}/drafts/{draft_id}/approve"
    r = post(clients["anna"], url, page=f"/tickets/{ref}")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert "second approver" in clients["anna"].get(f"/tickets/{ref}").text
    assert draft(services, draft_id).status == "pending" and outbox_for(services, draft_id) == []
    post(clients["anna"], url, page=f"/tickets/{ref}")  # the same person again changes nothing
    assert draft(services, draft_id).status == "pending" and outbox_for(services, draft_id) == []
    post(clients["bob"], url, page=f"/tickets/{ref}")
    assert draft(services, draft_id).status == "sent" and len(outbox_for(services, draft_id)) == 1
    assert draft(services, draft_id).reviewed_by == "anna@corp.example"
    assert draft(services, draft_id).approved_by == "bob@corp.example"


def test_an_access_answer_goes_out_on_one_approval(services: Services, clients: dict[str, TestClient]) -> None:
    ref = open_ticket(services, "Send me a copy of my data.", intent="access")
    draft_id = draft_answer(services, ref)
    post(clients["anna"], f"/tickets/{ref}/drafts/{draft_id}/approve", page=f"/tickets/{ref}")
    assert draft(services, draft_id).status == "sent"


def test_the_verification_policy_decides_which_answers_need_two_people(services: Services, clients: dict[str, TestClient]) -> None:
    services.settings.verify_policy = "deletion=code,access=code+second_approval"
    deletion = open_ticket(services)
    deletion_draft = draft_answer(services, deletion)
    post(clients["anna"], f"/tickets/{deletion}/drafts/{deletion_draft}/approve", page=f"/tickets/{deletion}")
    assert draft(services, deletion_draft).status == "sent"
    access = open_ticket(services, "Send me a copy of my data.", intent="access", sender="bea@example.org")
    access_draft = draft_answer(services, access)
    post(clients["anna"], f"/tickets/{access}/drafts/{access_draft}/approve", page=f"/tickets/{access}")
    assert draft(services, access_draft).status == "pending"
