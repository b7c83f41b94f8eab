"""The staff console in a real browser: Debian's Chromium driven by Playwright, against
the console served by uvicorn on a free port, as staff would use it.

Also takes the README's screenshots (docs/screenshots/queue.png and ticket.png)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select

from privbot import clock, replies
from privbot.app import Services, build_services
from privbot.domain import Channel, Classification, Inbound, Intent, Status
from privbot.intake import intake
from privbot.store.models import Draft, OutboxItem, Ticket
from privbot.web import auth
from privbot.web.app import create_app
from tests.conftest import make_settings
from tests.support import free_port

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
PASSWORD = "correct horse battery"
# The README's pictures are refreshed only when asked (PRIVBOT_SCREENSHOTS=docs/screenshots),
# so an ordinary test run leaves the checkout clean; otherwise they go to a temp folder.
SCREENSHOTS = Path(os.environ.get("PRIVBOT_SCREENSHOTS") or tempfile.mkdtemp(prefix="privbot-shots-")).resolve()

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def open_ticket(services: Services, sender: str, name: str, body: str, intents: tuple[Intent, ...], *, days_ago: float,
                channel: Channel = Channel.EMAIL, confidence: float = 0.9, cues: tuple[str, ...] = ()) -> str:
    c = Classification(intents[0], intents, confidence, "en", cues)
    inbound = Inbound(
        channel=channel, sender=sender, sender_name=name, text=body, subject="Privacy request" if channel == Channel.EMAIL else "",
        message_id=f"<{sender}.{days_ago}@example.org>" if channel == Channel.EMAIL else "",
        chat_id=int(sender.split(":")[1]) if channel == Channel.TELEGRAM else None,
        received_at=clock.now() - timedelta(days=days_ago),
    )
    ref = intake(services, inbound, classification=c).ticket_ref
    assert ref
    return ref


def draft_answer(services: Services, ref: str) -> int:
    with services.db.transaction() as s:
        t = s.get(Ticket, int(ref[5:]))
        d = replies.create_draft(s, services.settings, services.renderer, t, "answer", template=f"answer_{t.intent}",
                                 account={"email": t.requester, "name": t.requester_name, "phone": "", "account_id": "WL-20931"})
        d.intent = t.intent
        t.status = str(Status.AWAITING_APPROVAL)
        return d.id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """One console on SQLite with a realistic queue, served by uvicorn in a thread."""
    data = tmp_path_factory.mktemp("console")
    services = build_services(make_settings(data / "var", f"sqlite:///{data / 'privbot.db'}"))
    with services.db.transaction() as s:
        auth.add_staff(s, "agent@corp.example", "agent", PASSWORD)
        auth.add_staff(s, "anna@corp.example", "approver", PASSWORD)
        auth.add_staff(s, "bob@corp.example", "approver", PASSWORD)
    refs = {
        "overdue": open_ticket(services, "li.wei@example.cn", "Li Wei", "Please send me a copy of all personal data you hold about me.",
                               (Intent.ACCESS,), days_ago=33, cues=("copy of", "personal data")),
        "access": open_ticket(services, "maria.silva@example.org", "Maria Silva",
                              "Hello,\nI would like to access my user information and know how it is used.\nThanks, Maria",
                              (Intent.ACCESS,), days_ago=12, cues=("access my user information",)),
        "deletion": open_ticket(services, "john.doe@example.com", "John Doe",
                                "Please delete all my personal information and cancel my WorksLink account.",
                                (Intent.DELETION, Intent.CANCELLATION), days_ago=27.5, confidence=0.87,
                                cues=("delete all my personal information", "cancel my account")),
        "script": open_ticket(services, "mallory@example.net", "", '<script>window.__pwned = 1; alert("pwned")</script> delete my data',
                              (Intent.DELETION,), days_ago=3, confidence=0.61),
        "telegram": open_ticket(services, "telegram:5551234", "Ken", "stop using my data for marketing", (Intent.WITHDRAWAL,),
                                days_ago=5, channel=Channel.TELEGRAM, cues=("stop using my data for marketing",)),
    }
    drafts = {key: draft_answer(services, refs[key]) for key in ("access", "deletion", "script")}
    app = create_app(services)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    yield {"url": f"http://127.0.0.1:{port}", "services": services, "refs": refs, "drafts": drafts}
    server.should_exit = True
    thread.join(10)
    services.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def log_in(page: object, site: dict[str, object], email: str) -> None:
    page.goto(f"{site['url']}/login")  # type: ignore[attr-defined]
    page.fill("input[name=email]", email)  # type: ignore[attr-defined]
    page.fill("input[name=password]", PASSWORD)  # type: ignore[attr-defined]
    page.click("button:has-text('Log in')")  # type: ignore[attr-defined]
    page.wait_for_selector("h1:has-text('Queue')")  # type: ignore[attr-defined]


def outbox(site: dict[str, object], draft_id: int) -> list[OutboxItem]:
    services: Services = site["services"]  # type: ignore[assignment]
    with services.db.transaction() as s:
        return list(s.scalars(select(OutboxItem).where(OutboxItem.draft_id == draft_id)))


def test_every_page_sends_a_stranger_to_the_login(page: object, site: dict[str, object]) -> None:
    refs: dict[str, str] = site["refs"]  # type: ignore[assignment]
    for path in ("/", f"/tickets/{refs['access']}", "/reports", "/audit", "/staff"):
        page.goto(f"{site['url']}{path}")  # type: ignore[attr-defined]
        assert page.url.startswith(f"{site['url']}/login"), path  # type: ignore[attr-defined]
        assert page.is_visible("input[name=password]")  # type: ignore[attr-defined]
        assert "maria.silva" not in page.content() and "Maria" not in page.content()  # type: ignore[attr-defined]


def test_log_in_open_a_ticket_edit_and_approve_and_the_reply_is_in_the_outbox(page: object, site: dict[str, object]) -> None:
    refs: dict[str, str] = site["refs"]  # type: ignore[assignment]
    draft_id = site["drafts"]["access"]  # type: ignore[index]
    log_in(page, site, "agent@corp.example")
    rows = page.locator("table.queue tbody tr")  # type: ignore[attr-defined]
    assert rows.count() == 5
    first = rows.nth(0)
    assert refs["overdue"] in first.inner_text() and "overdue" in first.locator(".badge").inner_text()
    assert first.locator(".badge").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(192, 57, 43)"  # red
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "queue.png"), full_page=True)  # type: ignore[attr-defined]

    page.click(f"a:has-text('{refs['access']}')")  # type: ignore[attr-defined]
    page.wait_for_selector(f"h1:has-text('{refs['access']}')")  # type: ignore[attr-defined]
    assert "I would like to access my user information" in page.inner_text(".msg.in .body")  # type: ignore[attr-defined]
    editor = page.locator(f"#draft-{draft_id} form.editor")  # type: ignore[attr-defined]
    editor.locator("textarea[name=text]").fill(
        "Hello Maria,\n\nattached is a copy of the personal data we hold for account WL-20931.\n\nPrivacy team"
    )
    editor.locator("button[value=preview]").click()
    page.wait_for_selector(".preview")  # type: ignore[attr-defined]
    assert "attached is a copy" in page.inner_text(".preview")  # type: ignore[attr-defined]
    page.screenshot(path=str(SCREENSHOTS / "ticket.png"), full_page=True)  # type: ignore[attr-defined]
    page.locator(f"#draft-{draft_id} form.editor button[value=save]").click()  # type: ignore[attr-defined]
    page.wait_for_selector(f"text=Draft #{draft_id} saved.")  # type: ignore[attr-defined]
    assert page.locator(f"#draft-{draft_id} button:has-text('Approve')").count() == 0  # an agent cannot approve  # type: ignore[attr-defined]
    page.click("button:has-text('Log out')")  # type: ignore[attr-defined]

    log_in(page, site, "bob@corp.example")
    page.goto(f"{site['url']}/tickets/{refs['access']}")  # type: ignore[attr-defined]
    page.click(f"button:has-text('Approve and send #{draft_id}')")  # type: ignore[attr-defined]
    page.wait_for_selector("text=it is in the outbox")  # type: ignore[attr-defined]
    [item] = outbox(site, draft_id)
    assert item.recipient == "maria.silva@example.org"
    assert b"attached is a copy of the personal data" in item.payload and f"[{refs['access']}]".encode() in item.payload


def test_a_deletion_cannot_be_approved_by_the_one_who_drafted_it(page: object, site: dict[str, object]) -> None:
    refs: dict[str, str] = site["refs"]  # type: ignore[assignment]
    draft_id = site["drafts"]["deletion"]  # type: ignore[index]
    log_in(page, site, "anna@corp.example")
    page.goto(f"{site['url']}/tickets/{refs['deletion']}")  # type: ignore[attr-defined]
    editor = page.locator(f"#draft-{draft_id} form.editor")  # type: ignore[attr-defined]
    editor.locator("textarea[name=text]").fill("Hello John,\n\nwe have deleted your data and closed your account.")
    editor.locator("button[value=save]").click()
    page.wait_for_selector(f"text=Draft #{draft_id} saved.")  # type: ignore[attr-defined]
    page.click(f"button:has-text('Approve and send #{draft_id}')")  # type: ignore[attr-defined]
    alert = page.locator(".flash.error")  # type: ignore[attr-defined]
    assert "needs a second person" in alert.inner_text()
    assert outbox(site, draft_id) == []
    services: Services = site["services"]  # type: ignore[assignment]
    with services.db.transaction() as s:
        assert s.get(Draft, draft_id).status == "pending"  # type: ignore[union-attr]


def test_a_message_holding_script_is_shown_as_text_and_never_runs(page: object, site: dict[str, object]) -> None:
    refs: dict[str, str] = site["refs"]  # type: ignore[assignment]
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    log_in(page, site, "agent@corp.example")
    page.goto(f"{site['url']}/tickets/{refs['script']}")  # type: ignore[attr-defined]
    assert '<script>window.__pwned = 1; alert("pwned")</script> delete my data' in page.inner_text(".msg.in .body")  # type: ignore[attr-defined]
    assert page.evaluate("() => window.__pwned === undefined")  # type: ignore[attr-defined]
    assert dialogs == []


def test_a_form_posted_without_its_csrf_token_is_refused(page: object, site: dict[str, object]) -> None:
    refs: dict[str, str] = site["refs"]  # type: ignore[assignment]
    draft_id = site["drafts"]["script"]  # type: ignore[index]
    log_in(page, site, "bob@corp.example")
    page.goto(f"{site['url']}/tickets/{refs['script']}")  # type: ignore[attr-defined]
    page.evaluate("() => document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")  # type: ignore[attr-defined]
    page.click(f"button:has-text('Approve and send #{draft_id}')")  # type: ignore[attr-defined]
    page.wait_for_selector("h1:has-text('Not allowed')")  # type: ignore[attr-defined]
    assert "did not come from the console" in page.inner_text(".flash.error")  # type: ignore[attr-defined]
    assert outbox(site, draft_id) == []


def test_reports_draw_their_charts(page: object, site: dict[str, object]) -> None:
    log_in(page, site, "agent@corp.example")
    page.click("nav a:has-text('Reports')")  # type: ignore[attr-defined]
    page.wait_for_selector("svg.chart")  # type: ignore[attr-defined]
    assert page.locator("svg.chart").count() == 2  # type: ignore[attr-defined]
    overdue_bar = page.locator("svg.chart").first.locator("rect[fill='#c0392b']")  # type: ignore[attr-defined]
    assert overdue_bar.count() == 1 and overdue_bar.bounding_box()["width"] > 10
    page.screenshot(path=str(SCREENSHOTS / "reports.png"), full_page=True)  # type: ignore[attr-defined]
