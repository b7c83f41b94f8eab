"""The Telegram channel: python-telegram-bot in front of the chat conversation.

This module only translates: Telegram updates into :class:`privbot.chat.ChatEvent`
values (PTB's real ``Application`` parses and dispatches them to small handlers), and
the conversation's :class:`privbot.chat.Reply` values into Bot API calls.  Everything
that decides anything is in ``privbot.chat``; everything that records anything goes
through the database and ``intake()``.

Why a polling loop of our own instead of PTB's ``Updater``: the Updater acknowledges
an update (by asking for ``offset = id + 1``) on its next fetch whether or not the
handler committed.  Here an update is acknowledged only after its effects are committed
and its replies sent; the offset comes from the ``telegram_updates`` table, so a restart
resumes exactly there and an update delivered twice is recognised, never acted on twice.

Webhook mode (``PRIVBOT_TELEGRAM_WEBHOOK_URL``) serves the same handling on a small
Starlette app; Telegram retries a webhook call until it gets a 200, which privbot sends
only after the commit.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING, Any

import httpx
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import MessageLimit
from telegram.error import BadRequest, Forbidden, InvalidToken, TelegramError
from telegram.ext import Application, CallbackQueryHandler, ContextTypes, MessageHandler, filters

from privbot import leases
from privbot.chat import ChatEvent, Conversation, Handled, Reply
from privbot.store.db import DatabaseUnavailable

if TYPE_CHECKING:
    from privbot.app import Services
    from privbot.config import Settings

log = logging.getLogger(__name__)

TELEGRAM_API = "https://api.telegram.org"
#: what privbot asks Telegram for; everything else (channel posts, edits...) is not a request
ALLOWED_UPDATES = ["message", "callback_query"]
COMMANDS = ("start", "status", "cancel", "forget", "help")
#: longest a standing-by process waits before asking for the polling lease again
STANDBY_POLL_SECONDS = 10.0


def api_base(settings: Settings) -> str:
    """``PRIVBOT_TELEGRAM_API_URL`` as PTB's base URL (``.../bot``, the token appended).

    Accepts a bare server root (``http://127.0.0.1:8081``) or one already ending in
    ``/bot``, since self-hosted Bot API servers are documented both ways."""
    root = (settings.telegram_api_url or TELEGRAM_API).rstrip("/")
    return root if root.endswith("/bot") else root + "/bot"


def file_base(settings: Settings) -> str:
    return api_base(settings)[: -len("/bot")] + "/file/bot"


def split_text(text: str, limit: int = MessageLimit.MAX_TEXT_LENGTH) -> list[str]:
    """Telegram refuses messages over 4096 characters: cut long replies at line breaks."""
    parts: list[str] = []
    rest = text or " "
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        cut = cut if cut > limit // 2 else limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    parts.append(rest)
    return parts


class TelegramTransport:
    """The outbox's transport for channel ``telegram``: one sendMessage per chunk.

    Synchronous (the outbox worker runs in a thread) and independent of the bot's event
    loop, so a reply is delivered with the outbox's retry and record even while the
    poller is busy.  Any refusal raises, and the outbox retries with backoff."""

    def __init__(self, settings: Settings, *, timeout: float = 20.0) -> None:
        self.url = f"{api_base(settings)}{settings.telegram_token}/sendMessage"
        self.timeout = timeout

    def send(self, recipient: str, payload: bytes) -> None:
        for chunk in split_text(payload.decode("utf-8")):
            response = httpx.post(self.url, json={"chat_id": int(recipient), "text": chunk}, timeout=self.timeout)
            try:
                data = response.json()
            except ValueError:
                data = {}
            if response.status_code != 200 or not data.get("ok"):
                # never include the URL: it carries the bot token
                raise RuntimeError(f"Telegram refused the message: HTTP {response.status_code} {str(data.get('description', ''))[:200]}")


def to_event(update: Update) -> ChatEvent | None:
    """The update as the conversation sees it; None for anything not from a private chat."""
    chat = update.effective_chat
    user = update.effective_user
    if chat is None or chat.type != chat.PRIVATE:
        return None  # privacy requests are not made in groups: nothing is read there
    lang = (user.language_code or "") if user else ""
    name = (user.first_name or "") if user else ""
    if update.callback_query is not None:
        query = update.callback_query
        message_id = query.message.message_id if query.message else 0
        return ChatEvent(update.update_id, chat.id, message_id, "button", button=query.data or "", language_code=lang, name=name)
    message = update.message
    if message is None:
        return None
    text = message.text or ""
    if text.startswith("/"):
        command = text[1:].split(maxsplit=1)[0].split("@", 1)[0].lower() if len(text) > 1 else ""
        return ChatEvent(update.update_id, chat.id, message.message_id, "command", text=text, command=command, language_code=lang, name=name)
    kind = "text" if message.text else "other"
    return ChatEvent(update.update_id, chat.id, message.message_id, kind, text=text, language_code=lang, name=name)


class TelegramBot:
    """The PTB Application and the handling of one update, start to acknowledgement."""

    def __init__(self, services: Services, application: Application | None = None) -> None:
        settings = services.settings
        self.services = services
        self.conversation = Conversation(services)
        #: the record that the user saw an update's answer, while it is being written
        self.marking: asyncio.Future[None] | None = None
        self.app = application or (
            Application.builder()
            .token(settings.telegram_token)
            .base_url(api_base(settings))
            .base_file_url(file_base(settings))
            .updater(None)  # we poll ourselves, acknowledging only committed updates
            .build()
        )
        self.app.add_handler(MessageHandler(filters.ChatType.PRIVATE, self._on_update))
        self.app.add_handler(CallbackQueryHandler(self._on_update))
        self.app.add_error_handler(self._on_error)
        self._failures: dict[int, BaseException] = {}

    async def handle(self, update: Update) -> None:
        """Dispatch through PTB; raise if the handler failed, so the caller does not
        acknowledge the update (it will be fetched and handled again)."""
        self._failures.pop(update.update_id, None)
        await self.app.process_update(update)
        failure = self._failures.pop(update.update_id, None)
        if failure is not None:
            raise failure

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        event = to_event(update)
        if update.callback_query is not None:
            try:  # stop the button's spinner; an old query may no longer be answerable
                await update.callback_query.answer()
            except BadRequest:
                pass
        if event is None:
            return
        handled = await asyncio.to_thread(self.conversation.handle, event)
        if not handled.replied and handled.replies:
            # Showing the answer and recording that it was shown go together, even when
            # privbot is being stopped this instant (stop() waits for them): stopped between
            # the two — or in the middle of sending, when the user may already have the
            # answer — the restart would show the same answer a second time.
            self.marking = asyncio.ensure_future(self._show_and_record(event.chat_id, handled))
            await asyncio.shield(self.marking)

    async def _show_and_record(self, chat_id: int, handled: Handled) -> None:
        await self._show(chat_id, handled)
        await asyncio.to_thread(self.conversation.mark_replied, handled.update_id)

    async def _show(self, chat_id: int, handled: Handled) -> None:
        for reply in handled.replies:
            await self._send(chat_id, reply)

    async def _send(self, chat_id: int, reply: Reply) -> None:
        markup = None
        if reply.buttons:
            markup = InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=data)] for label, data in reply.buttons])
        try:
            if reply.edit_message_id:
                try:  # replace the keyboard with what was chosen, so it cannot be pressed again
                    await self.app.bot.edit_message_text(reply.text, chat_id=chat_id, message_id=reply.edit_message_id)
                    return
                except BadRequest:  # "message is not modified" on a repeat, or too old to edit
                    return
            chunks = split_text(reply.text)
            for i, chunk in enumerate(chunks):
                await self.app.bot.send_message(chat_id, chunk, reply_markup=markup if i == len(chunks) - 1 else None)
        except Forbidden:
            log.info("telegram chat %s blocked the bot; reply dropped", chat_id)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if isinstance(update, Update) and context.error is not None:
            self._failures[update.update_id] = context.error
        else:
            log.error("telegram handler failed", exc_info=context.error)


class TelegramComponent:
    """``privbot run``'s Telegram part: long polling (default) or a webhook server."""

    name = "telegram"

    def __init__(self, services: Services, application: Application | None = None) -> None:
        self.services = services
        self.bot = TelegramBot(services, application)
        self._task: asyncio.Task[None] | None = None
        self._server: Any = None
        self.offset: int | None = None
        #: long polling is one process's job (two getUpdates callers make Telegram refuse
        #: both): this process's name in the bot's lease (the turn is made when polling starts)
        self.holder = leases.holder_name(str(services.settings.data_dir))
        self._turn: leases.Turn | None = None

    async def start(self) -> None:
        settings = self.services.settings
        await self.bot.app.initialize()  # getMe: a wrong token fails here, at start-up
        if self.services.transports is None:
            from privbot import scheduler

            scheduler.transports_for(self.services)
        assert self.services.transports is not None
        self.services.transports["telegram"] = TelegramTransport(settings)
        await self._set_commands()
        if settings.telegram_webhook_url:
            await self._start_webhook()
        else:
            await self.bot.app.bot.delete_webhook()  # getUpdates is refused while a webhook is set
            self.offset = await asyncio.to_thread(self.bot.conversation.next_offset)
            self._task = asyncio.create_task(self._poll(), name="telegram-poll")
        log.info("Telegram bot @%s running (%s)", self.bot.app.bot.username, "webhook" if settings.telegram_webhook_url else "long polling")

    async def _set_commands(self) -> None:
        """The command menu, in every language the bot speaks (a nicety: never fatal)."""
        from telegram import BotCommand

        from privbot.chat import Strings, available_languages

        for lang in available_languages(self.services.settings.templates_dir):
            described = Strings(self.services, lang).section("commands")
            commands = [BotCommand(c, described[c]) for c in COMMANDS if described.get(c)]
            try:
                await self.bot.app.bot.set_my_commands(commands, language_code=None if lang == "en" else lang)
            except TelegramError as exc:
                log.warning("could not set the bot's command menu (%s)", type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            if self._turn is not None:  # another process standing by takes the polling over at once
                await asyncio.to_thread(self._turn.give_up)
        if self.bot.marking is not None:  # an answer being shown at the stop: finish and record it
            try:
                await self.bot.marking
            except Exception:
                log.warning("could not record that a Telegram answer was shown; it may be shown again after a restart")
        if self._server is not None:
            self._server.should_exit = True
            await self._serving
        if self.services.transports is not None:
            self.services.transports.pop("telegram", None)
        await self.bot.app.shutdown()

    @property
    def turn(self) -> leases.Turn:
        if self._turn is None:  # named after the bot's id (the token's public half): known once started
            self._turn = leases.Turn(self.services.db, f"telegram:{self.bot.app.bot.id}", self.holder,
                                     self.services.settings.telegram_lease_seconds, "Telegram: polling this bot")
        return self._turn

    @property
    def standing_by(self) -> str:
        """Who polls the bot while this process stands by ("" while it is ours)."""
        return self._turn.standing_by if self._turn is not None else ""

    def _hold(self) -> bool:
        """Take the polling lease, or renew it once a third of it has gone.  Taking it
        over from another process, start from what that process committed."""
        was_standing_by = bool(self.turn.standing_by)
        if not self.turn.keep():
            return False
        if was_standing_by:
            self.offset = self.bot.conversation.next_offset()
        return True

    async def _poll(self) -> None:
        timeout = max(0, int(self.services.settings.telegram_poll_timeout))
        delay = 1.0
        while True:
            try:
                held = await asyncio.to_thread(self._hold)
            except DatabaseUnavailable as exc:
                log.warning("Telegram: database unavailable (%s); polling paused", str(exc)[:120])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            if not held:
                await asyncio.sleep(min(self.services.settings.telegram_lease_seconds / 3, STANDBY_POLL_SECONDS))
                continue
            try:
                updates = await self.bot.app.bot.get_updates(
                    offset=self.offset, timeout=timeout, allowed_updates=ALLOWED_UPDATES, read_timeout=timeout + 10
                )
            except InvalidToken:
                log.error("Telegram refused the bot token; polling stopped")
                return
            except TelegramError as exc:
                log.warning("getUpdates failed (%s); retrying in %.0f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            # One update at a time, in order: an update is acknowledged (the offset moves
            # past it) only once it is committed and answered, and the restart offset is
            # derived from what is committed, so nothing later can overtake a failure.
            for update in updates:
                try:
                    await self.bot.handle(update)
                except Exception as exc:
                    log.warning("telegram update %s failed (%s); retrying in %.0f s", update.update_id, type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                    break
                self.offset = update.update_id + 1
                delay = 1.0

    # -- webhook --------------------------------------------------------------------

    async def _start_webhook(self) -> None:
        import uvicorn

        from privbot.config import _host_port

        settings = self.services.settings
        host, port = _host_port("telegram_webhook_listen", settings.telegram_webhook_listen)
        config = uvicorn.Config(webhook_app(self), host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve(), name="telegram-webhook")
        while not self._server.started and not self._serving.done():
            await asyncio.sleep(0.02)
        await self.bot.app.bot.set_webhook(
            settings.telegram_webhook_url, allowed_updates=ALLOWED_UPDATES, secret_token=settings.telegram_webhook_secret or None
        )


def webhook_app(component: TelegramComponent) -> Any:
    """POST /telegram: one update; 200 only after it is committed (Telegram retries otherwise)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    secret = component.services.settings.telegram_webhook_secret

    async def receive(request: Request) -> Response:
        if secret and not hmac.compare_digest(request.headers.get("x-telegram-bot-api-secret-token", ""), secret):
            return Response(status_code=403)
        try:
            update = Update.de_json(await request.json(), component.bot.app.bot)
        except Exception:
            return Response(status_code=400)
        if update is None:
            return Response(status_code=400)
        try:
            await component.bot.handle(update)
        except Exception:
            log.warning("telegram update %s failed; Telegram will deliver it again", update.update_id)
            return Response(status_code=500)
        return Response(status_code=200)

    return Starlette(routes=[Route("/telegram", receive, methods=["POST"])])


def telegram_component(services: Services) -> TelegramComponent:
    return TelegramComponent(services)
