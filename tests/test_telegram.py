"""The Telegram bot, as a user sees it: the real python-telegram-bot Application run by
privbot against a Bot API server on loopback (tests/botapi.py), the real pipeline and
database behind it (SQLite and PostgreSQL), codes read from the mail privbot sends."""

from __future__ import annotations

import asyncio
import re
import time
from email import message_from_bytes
from email.policy import default
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from privbot import clock, outbox, replies
from privbot.app import Services, build_services
from privbot.channels.telegram import TelegramComponent, split_text
from privbot.config import Settings
from privbot.store.models import AuditEntry, Challenge, DeliveryAttempt, OutboxItem, TelegramChat, TelegramUpdate, Ticket
from tests.botapi import FakeBotAPI, User
from tests.support import outbox_messages

CODE_LINE = re.compile(r"^ {4}(\S+)\s*$", re.M)


@pytest.fixture
def api() -> Iterator[FakeBotAPI]:
    server = FakeBotAPI().start()
    yield server
    server.stop()


@pytest.fixture
def tg_settings(settings: Settings, api: FakeBotAPI) -> Settings:
    settings.telegram_token = api.token
    settings.telegram_api_url = api.url
    settings.telegram_poll_timeout = 1
    return settings


@pytest.fixture
async def bot(tg_settings: Settings, services: Services) -> AsyncIterator[TelegramComponent]:
    component = TelegramComponent(services)
    await component.start()
    yield component
    await component.stop()


async def deliver(services: Services) -> outbox.DeliveryReport:
    """One pass of the outbox worker, as ``privbot run``'s scheduler does it."""
    assert services.transports is not None
    return await asyncio.to_thread(outbox.deliver_due, services.db, services.transports)


async def code_mailed_to(services: Services, address: str) -> str:
    """The code in the newest mail to ``address``, once the outbox has delivered it."""
    for _ in range(100):  # under ``privbot run`` the scheduler's own sweep may be sending it
        await deliver(services)
        with services.db.transaction() as s:
            items = s.scalars(
                select(OutboxItem).where(OutboxItem.channel == "email", OutboxItem.recipient == address).order_by(OutboxItem.id.desc())
            ).all()
        if items and items[0].status == "sent":
            break
        await asyncio.sleep(0.05)
    assert items and items[0].status == "sent", f"no mail delivered to {address}"
    mail = message_from_bytes(items[0].payload, policy=default)
    found = CODE_LINE.search(mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert found, "the mail carries no code"
    return found.group(1)


def tickets(services: Services) -> list[Ticket]:
    with services.db.transaction() as s:
        return list(s.scalars(select(Ticket).order_by(Ticket.id)))


async def open_by_chat(services: Services, user: User, text: str, address: str = "alice@example.org") -> str:
    """Free text → address → code → ticket; returns what the bot finally said."""
    user.say(text)
    await user.expect("email address")
    user.say(address)
    await user.expect("one-time code")
    user.say(await code_mailed_to(services, address))
    return (await user.expect("PRIV-")).text


async def test_free_text_then_address_then_code_opens_a_verified_ticket_with_its_reference_and_due_date(
    services: Services, api: FakeBotAPI, bot: TelegramComponent, frozen_clock: object
) -> None:
    alice = User(api, 5_123_456_789)  # real user ids no longer fit in 32 bits
    alice.say("Please delete all the personal data you hold about me.")
    await alice.expect("Which email address")
    alice.say("alice at example dot org")
    await alice.expect("does not look like an email address")
    alice.say("Alice@Example.org")
    sent = await alice.expect("one-time code to a***@example.org")
    code = await code_mailed_to(services, "alice@example.org")
    assert all(code not in m.text for m in alice.messages), "the code must only travel by mail"
    alice.say(code)
    done = await alice.expect("PRIV-000001")
    assert "deletion of your personal data" in done.text
    assert "01 April 2026" in done.text  # received 2 March 2026, 30 days
    [ticket] = tickets(services)
    assert (ticket.channel, ticket.intent, ticket.requester, ticket.chat_id) == ("telegram", "deletion", "alice@example.org", 5_123_456_789)
    # proven in the chat: no second code; the answer is drafted for staff at once
    assert ticket.verified and ticket.status == "awaiting_approval"
    assert sent.text and api.calls[0] == "getMe" and "deleteWebhook" in api.calls and "getUpdates" in api.calls
    assert api.calls.index("deleteWebhook") < api.calls.index("getUpdates")  # polling only once no webhook is set
    assert api.commands[""] == ["start", "status", "cancel", "forget", "help"] and "zh" in api.commands
    await deliver(services)  # the formal acknowledgement, in the chat and (verified) by mail
    ack = await alice.expect("We have registered your request")
    assert "one-time code" not in ack.text  # proven already: no second code
    assert any(m["To"] == "alice@example.org" and "PRIV-000001" in str(m["Subject"]) for m in outbox_messages(services.settings.data_dir))


async def test_start_greets_in_chinese_and_a_button_choice_is_the_request(
    services: Services, api: FakeBotAPI, bot: TelegramComponent
) -> None:
    li = User(api, 42, first_name="李雷", language_code="zh-hans")
    li.say("/start")
    greeting = await li.expect("您好，李雷")
    assert [label for label, _ in greeting.buttons] == ["查阅我的个人信息", "更正我的个人信息", "删除我的个人信息", "撤回我的同意", "注销我的账号", "其他问题"]
    li.press("注销我的账号")
    await li.expect("电子邮箱")
    assert greeting.edited and "注销您的账号" in greeting.text and not greeting.buttons  # the keyboard cannot be pressed twice
    assert len(api.answered) == 1  # the button stopped spinning
    li.say("li@example.org")
    await li.expect("验证码")
    li.say(await code_mailed_to(services, "li@example.org"))
    mail = [m for m in outbox_messages(services.settings.data_dir) if m["To"] == "li@example.org"]
    assert "验证码" in str(mail[0]["Subject"])
    done = await li.expect("PRIV-000001")
    assert "注销您的账号" in done.text and "年" in done.text
    [ticket] = tickets(services)
    assert ticket.intent == "cancellation" and ticket.language == "zh" and ticket.verified


async def test_five_wrong_codes_lock_the_code_and_the_right_one_then_opens_nothing(
    services: Services, api: FakeBotAPI, bot: TelegramComponent
) -> None:
    eve = User(api, 66)
    eve.say("I want a copy of all the data you have about me")
    await eve.expect("email address")
    eve.say("victim@example.org")
    await eve.expect("one-time code")
    code = await code_mailed_to(services, "victim@example.org")
    wrong = "000000" if code != "000000" else "111111"
    for left in (4, 3, 2, 1):
        eve.say(wrong)
        await eve.expect(f"{left} tr")
    eve.say(wrong)
    await eve.expect("wrong too many times")
    eve.say(code)
    await eve.quiet(0.5)
    assert tickets(services) == []
    with services.db.transaction() as s:
        assert s.scalars(select(Challenge.status)).all() == ["locked"]


async def test_status_lists_the_chats_tickets_with_state_and_due_date(
    services: Services, api: FakeBotAPI, bot: TelegramComponent, frozen_clock: object
) -> None:
    bob = User(api, 77)
    bob.say("/status")
    await bob.expect("no requests")
    await open_by_chat(services, bob, "Please correct my postal address, it is out of date", "bob@example.org")
    bob.say("/status")
    status = await bob.expect("Your requests:")
    assert "PRIV-000001: correction of your personal data — being handled, answer due by 01 April 2026" in status.text
    other = User(api, 78)
    other.say("/status")
    assert "PRIV-000001" not in (await other.expect("no requests")).text  # nobody sees another chat's tickets


async def test_a_bound_chat_skips_the_address_but_deletion_still_needs_a_fresh_code(
    services: Services, api: FakeBotAPI, bot: TelegramComponent
) -> None:
    carol = User(api, 88)
    await open_by_chat(services, carol, "Send me a copy of my personal data please", "carol@example.org")
    carol.say("/start")
    greeting = await carol.expect("Hello")
    carol.press("Withdraw my consent")
    done = await carol.expect("PRIV-000002")  # no address asked, no code: the chat is bound
    assert not any("email address" in m.text for m in carol.messages[3:])
    assert "withdrawal of your consent" in done.text
    with pytest.raises(AssertionError, match="no button"):
        carol.press("Withdraw my consent")  # the keyboard is gone: a second press is impossible
    assert greeting.edited
    carol.say("Delete my data, all of it, please.")
    await carol.expect("one-time code to c***@example.org")
    carol.say(await code_mailed_to(services, "carol@example.org"))
    await carol.expect("PRIV-000003")
    assert [(t.intent, t.verified, t.requester) for t in tickets(services)] == [
        ("access", True, "carol@example.org"),
        ("withdrawal", True, "carol@example.org"),
        ("deletion", True, "carol@example.org"),
    ]


async def test_forget_unlinks_the_chat_from_its_address_and_the_next_request_proves_it_again(
    services: Services, api: FakeBotAPI, bot: TelegramComponent
) -> None:
    fay = User(api, 121)
    await open_by_chat(services, fay, "Send me a copy of my personal data please", "fay@example.org")
    fay.say("/forget")
    await fay.expect("no longer linked to f***@example.org")
    fay.say("/forget")
    await fay.expect("nothing to forget")
    fay.say("I withdraw my consent to your marketing emails")
    await fay.expect("email address")  # the chat no longer acts for the address: asked again
    with services.db.transaction() as s:
        chat_row = s.get(TelegramChat, 121)
        assert chat_row is not None and chat_row.bound_email is None and chat_row.bound_at is None
        unbound = s.scalars(select(AuditEntry).where(AuditEntry.action == "telegram_chat_unbound")).one()
        assert unbound.detail == {} and unbound.ticket_id is None
    fay.say("/cancel")
    await fay.expect("stopped")
    fay.say("/status")
    await fay.expect("PRIV-000001")  # the request made in the chat is still the chat's
    assert [(t.intent, t.requester) for t in tickets(services)] == [("access", "fay@example.org")]


async def test_cancel_leaves_the_conversation_and_help_explains(services: Services, api: FakeBotAPI, bot: TelegramComponent) -> None:
    dan = User(api, 99)
    dan.say("please erase my data")
    await dan.expect("email address")
    dan.say("/cancel")
    await dan.expect("stopped")
    dan.say("/cancel")
    await dan.expect("nothing to cancel")
    dan.say("/help")
    help_text = (await dan.expect("/status")).text
    assert "privacy@example.com" in help_text
    dan.send_sticker()
    await dan.expect("only read text")
    assert tickets(services) == []


async def test_an_approved_reply_arrives_in_the_chat_and_by_mail_with_the_outboxs_retry_and_record(
    services: Services, api: FakeBotAPI, bot: TelegramComponent
) -> None:
    erin = User(api, 111)
    await open_by_chat(services, erin, "I would like to access my personal data", "erin@example.org")
    await deliver(services)  # the acknowledgement
    with services.db.transaction() as s:
        ticket = s.scalars(select(Ticket)).one()
        draft = replies.create_draft(s, services.settings, services.renderer, ticket, "answer", template="acknowledgement")
        draft.text = "Here is the export of your data: name Erin, plan Pro."
    with services.db.transaction() as s:
        replies.approve(s, services.settings, s.get(Ticket, ticket.id), "officer@example.com")
    api.fail_sends = 1  # Telegram has a bad moment
    report = await deliver(services)
    assert report.failed == 1 and report.sent == 1  # the mail went, the chat message waits
    assert not any("export of your data" in m.text for m in erin.messages)
    clock.freeze(clock.now() + timedelta(minutes=2))
    report = await deliver(services)
    assert report.sent == 1
    await erin.expect("Here is the export of your data")
    mails = [m for m in outbox_messages(services.settings.data_dir) if m["To"] == "erin@example.org"]
    assert any("export of your data" in m.get_body(("plain",)).get_content() for m in mails)  # type: ignore[union-attr]
    with services.db.transaction() as s:
        item = s.scalars(select(OutboxItem).where(OutboxItem.channel == "telegram", OutboxItem.draft_id == draft.id)).one()
        attempts = s.scalars(select(DeliveryAttempt.ok).where(DeliveryAttempt.outbox_id == item.id).order_by(DeliveryAttempt.id)).all()
    assert item.status == "sent" and attempts == [False, True]


async def test_stopped_just_after_an_answer_is_shown_privbot_does_not_show_it_again(
    tg_settings: Settings, services: Services, api: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privbot.channels.telegram import TelegramBot
    from privbot.chat import Conversation

    real = Conversation.mark_replied
    real_send = TelegramBot._send

    def slow(self: Conversation, update_id: int) -> None:  # the record of "shown" is still being written ...
        time.sleep(0.3)
        real(self, update_id)

    async def slow_send(self: TelegramBot, chat_id: int, reply: object) -> None:  # ... or the answer is
        await real_send(self, chat_id, reply)  # on the user's screen while privbot is still sending
        await asyncio.sleep(0.3)

    monkeypatch.setattr(Conversation, "mark_replied", slow)
    monkeypatch.setattr(TelegramBot, "_send", slow_send)
    gina = User(api, 333)
    first = build_services(tg_settings)
    bot = TelegramComponent(first)
    await bot.start()
    gina.say("Please close my account.")
    await gina.expect("email address")
    await bot.stop()  # ... when privbot is stopped
    second = build_services(tg_settings)
    bot = TelegramComponent(second)
    await bot.start()
    await gina.quiet(1.0)
    await bot.stop()
    assert sum("email address" in m.text for m in gina.messages) == 1
    for svc in (first, second):
        svc.db.dispose()


async def test_privbot_restarted_mid_conversation_loses_nothing_and_doubles_nothing(
    tg_settings: Settings, services: Services, api: FakeBotAPI
) -> None:
    async def run_privbot() -> tuple[Services, TelegramComponent]:
        fresh = build_services(tg_settings)  # a new process: nothing in memory survives
        component = TelegramComponent(fresh)
        await component.start()
        return fresh, component

    frank = User(api, 222)
    first, bot = await run_privbot()
    frank.say("Please close my account.")
    await frank.expect("email address")
    await bot.stop()

    frank.say("frank@example.org")  # written while privbot is down
    second, bot = await run_privbot()
    await frank.expect("one-time code")
    code = await code_mailed_to(second, "frank@example.org")

    # Killed after the ticket is committed but before the user saw the answer.
    api.hold_sends.set()
    code_update = frank.say(code)
    for _ in range(500):
        if api.held:
            break
        await asyncio.sleep(0.02)
    assert api.held, "the bot never tried to answer"
    await bot.stop()
    api.hold_sends.clear()
    assert len(tickets(second)) == 1
    assert code_update in api.pending_updates(), "the update was acknowledged before the user had the answer"

    third, bot = await run_privbot()
    await frank.expect("PRIV-000001")
    api.push({"message": {"message_id": 99, "date": 0, "chat": {"id": 222, "type": "private"}, "text": code}}, update_id=code_update)
    await frank.quiet(1.5)  # Telegram delivering the same update yet again
    await bot.stop()
    assert len(tickets(third)) == 1 and tickets(third)[0].verified
    assert sum("PRIV-000001" in m.text for m in frank.messages) == 1
    assert [m.text for m in frank.messages].count(frank.messages[0].text) == 1
    with third.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(TelegramUpdate)) == 3
    for svc in (first, second, third):
        svc.db.dispose()


async def test_a_failed_answer_is_retried_and_the_update_handled_once(services: Services, api: FakeBotAPI, bot: TelegramComponent) -> None:
    gina = User(api, 333)
    api.fail_sends = 1
    gina.say("/help")
    await gina.expect("/status", timeout=10)
    await gina.quiet(0.3)
    assert sum("/status" in m.text for m in gina.messages) == 1
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(TelegramUpdate)) == 1


async def test_two_processes_with_one_bot_take_turns_polling_and_the_other_takes_over_when_the_first_stops(
    tg_settings: Settings, services: Services, api: FakeBotAPI,
) -> None:
    tg_settings.telegram_lease_seconds = 3.0
    first, second = TelegramComponent(services), TelegramComponent(services)
    second.holder += ":elsewhere"  # another host or data directory, as another process would be
    await first.start()
    await second.start()
    try:
        hana = User(api, 444)
        for i in range(3):
            hana.say("/help")
            await hana.expect("/status", timeout=10)
        await hana.quiet(2.5)  # past the lease's renewal: still one poller
        assert sum("/status" in m.text for m in hana.messages) == 3
        assert api.conflicts == 0 and second.standing_by == first.holder  # Telegram never saw two pollers
        await first.stop()  # gives the lease up: the other process takes over
        hana.say("/help")
        await hana.expect("/status", timeout=10)
        assert second.standing_by == ""
        with services.db.transaction() as s:
            assert s.scalar(select(func.count()).select_from(TelegramUpdate)) == 4  # each update handled once
    finally:
        await second.stop()


async def test_a_flooding_chat_gets_one_notice_then_silence_for_a_minute(
    tg_settings: Settings, services: Services, api: FakeBotAPI, frozen_clock: object
) -> None:
    tg_settings.telegram_flood_per_minute = 3
    component = TelegramComponent(services)
    await component.start()
    try:
        spammer = User(api, 444)
        for _ in range(8):
            spammer.say("/help")
        await spammer.expect("very fast")
        shown = await spammer.quiet(0.8)
        assert shown == [] and len(spammer.messages) == 4  # three answers and one notice
        calm = User(api, 445)
        calm.say("/help")
        await calm.expect("/status")  # other chats are not affected
        clock.fast_forward(minutes=1)
        spammer.say("/help")
        await spammer.expect("/status")
    finally:
        await component.stop()


async def test_group_chats_are_never_read(services: Services, api: FakeBotAPI, bot: TelegramComponent) -> None:
    api.push({"message": {"message_id": 5, "date": 0, "chat": {"id": -100123, "type": "supergroup", "title": "t"},
                          "from": {"id": 9, "is_bot": False, "first_name": "X"}, "text": "delete my data, my email is x@example.org"}})
    await asyncio.sleep(1.0)
    assert api.chat(-100123) == [] and tickets(services) == []


def test_long_replies_are_cut_at_line_breaks_within_telegrams_limit() -> None:
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(120))
    parts = split_text(text)
    assert len(parts) > 1 and all(len(p) <= 4096 for p in parts)
    assert "\n".join(parts) == text


def test_webhook_mode_needs_https(tmp_path: Path) -> None:
    from privbot.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        load_settings(environ={"PRIVBOT_DATA_DIR": str(tmp_path), "PRIVBOT_TELEGRAM_WEBHOOK_URL": "http://bot.example.com/telegram"})


async def test_privbot_run_starts_the_bot_and_its_sweeps_deliver_approved_chat_replies(
    tg_settings: Settings, services: Services, api: FakeBotAPI
) -> None:
    from privbot.service import serve

    tg_settings.outbox_interval = 0.2
    stop = asyncio.Event()
    running = asyncio.create_task(serve(services, stop))
    try:
        hana = User(api, 555)
        await open_by_chat(services, hana, "I would like to access my personal data", "hana@example.org")
        await hana.expect("We have registered your request")  # the acknowledgement, by the outbox sweep
        with services.db.transaction() as s:
            ticket = s.scalars(select(Ticket)).one()
            draft = replies.create_draft(s, services.settings, services.renderer, ticket, "answer", template="acknowledgement")
            draft.text = "Your data: name Hana."
        with services.db.transaction() as s:
            replies.approve(s, services.settings, s.get(Ticket, ticket.id), "officer@example.com")
        await hana.expect("Your data: name Hana.")
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)


async def test_webhook_mode_answers_only_telegrams_signed_calls_after_commit(
    tg_settings: Settings, services: Services, api: FakeBotAPI
) -> None:
    import httpx

    from tests.support import free_port

    port = free_port()
    tg_settings.telegram_webhook_url = "https://bot.example.com/telegram"
    tg_settings.telegram_webhook_listen = f"127.0.0.1:{port}"
    tg_settings.telegram_webhook_secret = "s3cret-token"
    component = TelegramComponent(services)
    await component.start()
    try:
        assert api.webhook and api.webhook["url"] == "https://bot.example.com/telegram" and api.webhook["secret_token"] == "s3cret-token"
        ivan = User(api, 666)
        update = {"update_id": 9001, "message": {"message_id": 3, "date": 0, "chat": {"id": 666, "type": "private"},
                                                 "from": {"id": 666, "is_bot": False, "first_name": "Ivan"}, "text": "/help",
                                                 "entities": [{"type": "bot_command", "offset": 0, "length": 5}]}}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            forged = await client.post("/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "guess"})
            assert forged.status_code == 403
            assert ivan.messages == []
            ok = await client.post("/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"})
            assert ok.status_code == 200
            assert "/status" in ivan.messages[-1].text  # answered before the 200
            again = await client.post("/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"})
            assert again.status_code == 200 and len(ivan.messages) == 1  # Telegram's retry changes nothing
        assert "getUpdates" not in api.calls
    finally:
        await component.stop()


async def test_old_updates_are_forgotten_but_polling_resumes_where_it_was(
    services: Services, api: FakeBotAPI, bot: TelegramComponent, frozen_clock: object
) -> None:
    from privbot import chat

    jo = User(api, 777)
    jo.say("/help")
    await jo.expect("/status")
    jo.say("please erase my data")
    await jo.expect("email address")
    for _ in range(200):  # the answer is shown a moment before it is recorded as shown
        if bot.offset == jo_last_update(services) + 1:
            break
        await asyncio.sleep(0.02)
    clock.fast_forward(days=31)
    assert chat.prune(services) == "telegram: 1 old updates forgotten, 1 abandoned conversations reset"
    assert chat.Conversation(services).next_offset() == jo_last_update(services) + 1
    jo.say("jo@example.org")  # the abandoned question is no longer pending: read afresh
    shown = await jo.quiet(1.0)
    assert shown and not any("I have sent" in m.text for m in shown)
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Challenge)) == 0


def jo_last_update(services: Services) -> int:
    with services.db.transaction() as s:
        return int(s.scalar(select(func.max(TelegramUpdate.update_id))))


@pytest.mark.parametrize("lang", sorted(p.stem for p in (Path(__file__).parents[1] / "templates" / "telegram").glob("*.toml")))
def test_every_bot_sentence_exists_and_renders_in_each_language_and_user_text_stays_text(lang: str) -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from privbot.chat import BUTTON_INTENTS, Strings, available_languages
    from privbot.replies import Renderer

    settings = Settings()
    fake = SimpleNamespace(settings=settings, renderer=Renderer(settings.templates_dir))
    assert lang in available_languages(settings.templates_dir)
    english, s = Strings(fake, "en"), Strings(fake, lang)  # type: ignore[arg-type]
    values = dict(intent="x", ref="PRIV-000042", due="d", email="a***@example.org", masked="a***@example.org",
                  minutes=4320, left=2, privacy_address="privacy@example.com", state="s")
    own = tomllib_load(settings.templates_dir / "telegram" / f"{lang}.toml")
    for section in ("text", "buttons", "intents", "states", "commands"):
        assert set(own[section]) == set(english.section(section)), f"{lang}.toml [{section}] lacks keys"
    for key in own["text"]:
        assert s.say(key, **values).strip()
    assert [label for label, _ in s.buttons()] == [own["buttons"][str(i)] for i in BUTTON_INTENTS]
    assert "{{ 7*7 }}" in s.greeting("{{ 7*7 }}") and "49" not in s.greeting("{{ 7*7 }}")
    assert s.date(datetime(2026, 4, 1, tzinfo=UTC)) in ("01 April 2026", "2026年4月1日", "2026-04-01")


def tomllib_load(path: Path) -> dict[str, dict[str, str]]:
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))
