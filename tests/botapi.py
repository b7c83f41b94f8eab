"""A Telegram Bot API server on loopback, for tests: Telegram's cloud is the one thing
privbot's tests do not run for real.

It speaks the handful of methods the bot uses (getMe, deleteWebhook, setWebhook,
getUpdates with offsets and long polling, sendMessage, editMessageText,
answerCallbackQuery) the way Telegram does: form-encoded or JSON parameters, updates
kept until a getUpdates call confirms them with a higher offset.  Tests act as users
through :class:`User` (type a message, press a button) and read what the bot showed.
It runs uvicorn in a thread of its own, so the bot under test, on the test's event
loop, talks to it over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support import free_port

BOT_USER = {"id": 777000111, "is_bot": True, "first_name": "Privacy bot", "username": "privbot_test_bot"}
_INT_PARAMS = {"chat_id", "message_id", "offset", "timeout", "limit"}
_JSON_PARAMS = {"reply_markup", "allowed_updates"}


@dataclass
class Shown:
    """One message the bot put in a chat, as the user sees it now (edits applied)."""

    message_id: int
    chat_id: int
    text: str
    buttons: list[tuple[str, str]] = field(default_factory=list)
    edited: bool = False


class FakeBotAPI:
    def __init__(self, token: str = "123456:TEST-token") -> None:
        self.token = token
        self.port = free_port()
        self._lock = threading.Lock()
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 5000
        self._next_message_id = 100
        self.shown: list[Shown] = []
        self.calls: list[str] = []
        self.answered: list[str] = []
        self.webhook: dict[str, Any] | None = None
        #: the command menu by language ("" for the default)
        self.commands: dict[str, list[str]] = {}
        #: the next N sendMessage calls fail with HTTP 500 (Telegram having a bad moment)
        self.fail_sends = 0
        #: while set, sendMessage calls wait (a slow network the bot may be killed during)
        self.hold_sends = threading.Event()
        self.held = 0
        #: getUpdates calls ended by a newer one, as Telegram ends them ("409 Conflict:
        #: terminated by other getUpdates request") when two processes poll one bot
        self.conflicts = 0
        self._poll_generation = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeBotAPI:
        app = Starlette(routes=[Route("/bot{token}/{method}", self._endpoint, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Bot API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.hold_sends.clear()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- what tests do ----------------------------------------------------------------
    def push(self, update: dict[str, Any], update_id: int | None = None) -> int:
        """Queue an update (a user action); returns its update_id."""
        with self._lock:
            if update_id is None:
                self._next_update_id += 1
                update_id = self._next_update_id
            self._updates.append({"update_id": update_id, **update})
            self._updates.sort(key=lambda u: u["update_id"])
            return update_id

    def pending_updates(self) -> list[int]:
        with self._lock:
            return [u["update_id"] for u in self._updates]

    def chat(self, chat_id: int) -> list[Shown]:
        with self._lock:
            return [m for m in self.shown if m.chat_id == chat_id]

    # -- the Bot API ----------------------------------------------------------------
    async def _endpoint(self, request: Request) -> JSONResponse:
        if request.path_params["token"] != self.token:
            return JSONResponse({"ok": False, "error_code": 401, "description": "Unauthorized"}, status_code=401)
        method = request.path_params["method"]
        params = await self._params(request)
        with self._lock:
            self.calls.append(method)
        handler = getattr(self, "_m_" + method, None)
        if handler is None:
            return JSONResponse({"ok": False, "error_code": 404, "description": f"Not Found: method {method}"}, status_code=404)
        return await handler(params)

    @staticmethod
    async def _params(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.body()
            return json.loads(body) if body else {}
        form = await request.form()
        out: dict[str, Any] = {}
        for key, value in form.items():
            value = str(value)
            if key in _INT_PARAMS:
                out[key] = int(value)
            elif key in _JSON_PARAMS:
                out[key] = json.loads(value)
            else:
                out[key] = value
        return out

    @staticmethod
    def _ok(result: Any) -> JSONResponse:
        return JSONResponse({"ok": True, "result": result})

    async def _m_getMe(self, p: dict[str, Any]) -> JSONResponse:
        return self._ok(BOT_USER)

    async def _m_deleteWebhook(self, p: dict[str, Any]) -> JSONResponse:
        self.webhook = None
        return self._ok(True)

    async def _m_setWebhook(self, p: dict[str, Any]) -> JSONResponse:
        self.webhook = p
        return self._ok(True)

    async def _m_getUpdates(self, p: dict[str, Any]) -> JSONResponse:
        offset = int(p.get("offset") or 0)
        timeout = float(p.get("timeout") or 0)
        limit = int(p.get("limit") or 100)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._poll_generation += 1
            mine = self._poll_generation
        while True:
            with self._lock:
                if self._poll_generation != mine:
                    self.conflicts += 1
                    return JSONResponse({"ok": False, "error_code": 409, "description": "Conflict: terminated by other getUpdates "
                                         "request; make sure that only one bot instance is running"}, status_code=409)
                if offset:
                    # Telegram forgets every update below the offset: they are confirmed.
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                batch = self._updates[:limit]
            if batch or time.monotonic() >= deadline or (self._server is not None and self._server.should_exit):
                return self._ok(batch)
            await asyncio.sleep(0.02)

    async def _m_sendMessage(self, p: dict[str, Any]) -> JSONResponse:
        with self._lock:
            fail = self.fail_sends > 0
            if fail:
                self.fail_sends -= 1
        if fail:
            return JSONResponse({"ok": False, "error_code": 500, "description": "Internal Server Error"}, status_code=500)
        if self.hold_sends.is_set():
            with self._lock:
                self.held += 1
            while self.hold_sends.is_set():
                await asyncio.sleep(0.02)
            # the caller has gone away by now (killed): Telegram would still have shown
            # it, but a client that never got the answer cannot know; show nothing
            return JSONResponse({"ok": False, "error_code": 502, "description": "Bad Gateway"}, status_code=502)
        buttons = []
        markup = p.get("reply_markup") or {}
        for row in markup.get("inline_keyboard", []):
            for b in row:
                buttons.append((b["text"], b.get("callback_data", "")))
        with self._lock:
            self._next_message_id += 1
            shown = Shown(self._next_message_id, int(p["chat_id"]), str(p["text"]), buttons)
            self.shown.append(shown)
        return self._ok(self._message(shown))

    async def _m_editMessageText(self, p: dict[str, Any]) -> JSONResponse:
        with self._lock:
            for m in self.shown:
                if m.chat_id == int(p["chat_id"]) and m.message_id == int(p["message_id"]):
                    if m.text == p["text"] and not m.buttons:
                        return JSONResponse({"ok": False, "error_code": 400, "description": "Bad Request: message is not modified"}, status_code=400)
                    m.text, m.buttons, m.edited = str(p["text"]), [], True
                    return self._ok(self._message(m))
        return JSONResponse({"ok": False, "error_code": 400, "description": "Bad Request: message to edit not found"}, status_code=400)

    async def _m_answerCallbackQuery(self, p: dict[str, Any]) -> JSONResponse:
        with self._lock:
            self.answered.append(str(p["callback_query_id"]))
        return self._ok(True)

    async def _m_setMyCommands(self, p: dict[str, Any]) -> JSONResponse:
        commands = p["commands"] if isinstance(p["commands"], list) else json.loads(p["commands"])
        with self._lock:
            self.commands[str(p.get("language_code", ""))] = [c["command"] for c in commands]
        return self._ok(True)

    @staticmethod
    def _message(m: Shown) -> dict[str, Any]:
        return {
            "message_id": m.message_id,
            "date": int(time.time()),
            "chat": {"id": m.chat_id, "type": "private"},
            "from": BOT_USER,
            "text": m.text,
        }


class User:
    """A person in a private chat with the bot."""

    def __init__(self, api: FakeBotAPI, chat_id: int, *, first_name: str = "Alice", language_code: str = "en") -> None:
        self.api, self.chat_id = api, chat_id
        self.first_name, self.language_code = first_name, language_code
        self._message_id = 1
        self._seen = 0

    def _from(self) -> dict[str, Any]:
        return {"id": self.chat_id, "is_bot": False, "first_name": self.first_name, "language_code": self.language_code}

    def say(self, text: str) -> int:
        """Type a message (``/start`` and friends are commands); returns the update_id."""
        self._message_id += 1
        message: dict[str, Any] = {
            "message_id": self._message_id,
            "date": int(time.time()),
            "chat": {"id": self.chat_id, "type": "private", "first_name": self.first_name},
            "from": self._from(),
            "text": text,
        }
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return self.api.push({"message": message})

    def send_sticker(self) -> int:
        self._message_id += 1
        message = {
            "message_id": self._message_id,
            "date": int(time.time()),
            "chat": {"id": self.chat_id, "type": "private"},
            "from": self._from(),
            "sticker": {"file_id": "s1", "file_unique_id": "u1", "width": 1, "height": 1, "is_animated": False, "is_video": False, "type": "regular"},
        }
        return self.api.push({"message": message})

    def press(self, label: str) -> int:
        """Press the button labelled ``label`` on the newest message that shows it."""
        for shown in reversed(self.api.chat(self.chat_id)):
            for text, data in shown.buttons:
                if text == label:
                    return self.api.push(
                        {
                            "callback_query": {
                                "id": f"cq{time.monotonic_ns()}",
                                "from": self._from(),
                                "chat_instance": f"ci{self.chat_id}",
                                "data": data,
                                "message": FakeBotAPI._message(shown),
                            }
                        }
                    )
        raise AssertionError(f"no button {label!r} in the chat; it shows: {[m.text for m in self.api.chat(self.chat_id)]}")

    @property
    def messages(self) -> list[Shown]:
        return self.api.chat(self.chat_id)

    async def expect(self, *needles: str, timeout: float = 15.0) -> Shown:
        """Wait for a new bot message containing every needle (later than the last expected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.messages
            for i in range(self._seen, len(shown)):
                if all(n in shown[i].text for n in needles):
                    self._seen = i + 1
                    return shown[i]
            await asyncio.sleep(0.02)
        raise AssertionError(f"the bot never said {needles!r}; the chat shows: {[m.text for m in self.messages]}")

    async def quiet(self, seconds: float = 0.5) -> list[Shown]:
        """Wait, then return any bot messages shown since the last expect()."""
        await asyncio.sleep(seconds)
        return self.messages[self._seen :]
