"""The staff console: a Starlette application of server-rendered pages.

Why this module exists: staff decide what leaves the company, and this is where they do
it — the queue by deadline, each ticket's whole story, the draft editor, approval, and
the reports.  It is built to be safe by construction:

* every route is declared through :meth:`Console.page` / :meth:`Console.action`, which
  load the signed-in staff member from the database on every request (a deactivated
  account or a changed password ends its sessions), check the role, and, for every
  POST, the per-session CSRF token and the Origin header — no route can forget them;
* templates are autoescaped, so a message holding ``<script>`` is shown as text; the
  Content-Security-Policy allows no inline script at all, as a second wall;
* handlers change tickets only through ``replies`` and ``web.actions``, each in one
  transaction; a refused action (four-eyes rule, wrong state) rolls back and is shown.

``create_app(services)`` builds it; ``web.server`` runs it inside ``privbot run``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from privbot import clock, replies, strings
from privbot.audit import verify_chain
from privbot.domain import Channel, Intent, Status
from privbot.logs import mask
from privbot.store.models import AuditEntry, Draft, Staff, Ticket
from privbot.web import actions, auth, charts, views

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "privbot_session"

#: refusals a person can act on: shown on the page they came from, nothing changed
REFUSALS: tuple[type[Exception], ...] = (
    replies.ApprovalError,
    replies.DraftError,
    actions.ActionError,
    auth.StaffError,
)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Headers on every response: no framing, no sniffing, no inline script, and no
    caching of anything but static files (ticket pages hold personal data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass
class Ctx:
    """One request as a handler sees it: who, what was posted, and the open transaction."""

    console: Console
    request: Request
    staff: auth.StaffUser
    form: FormData | None
    db: Session

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value if isinstance(value, str) else default

    def render(self, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        return self.console.render(self.request, template, status_code=status_code, staff=self.staff, **values)

    def back(self, url: str, message: str = "", level: str = "ok") -> RedirectResponse:
        if message:
            flash(self.request, message, level)
        return RedirectResponse(url, status_code=303)


Handler = Callable[[Ctx], Response]


def flash(request: Request, message: str, level: str = "ok") -> None:
    request.session.setdefault("flash", []).append([level, message[:500]])


#: messages privbot writes itself that may carry a one-time code (acknowledgements,
#: reminders, chat codes): everything but the answers and notices staff approve
_CODE_FREE_KINDS = frozenset({"answer", "denial", "extension"})
_CODE = re.compile(r"(?<![\w-])\d{6,10}(?![\w-])")


def hide_codes(text: str, kind: str = "") -> str:
    """Staff never see a requester's one-time code: whoever reads it could prove an
    identity that is not theirs."""
    if kind in _CODE_FREE_KINDS:
        return text
    return _CODE.sub("••••••", text or "")


def _local_path(url: str) -> str:
    """Only a path on this site may be a redirect target (no open redirect)."""
    parts = urlsplit(url or "")
    if parts.scheme or parts.netloc or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url


class Console:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.settings = services.settings
        self.throttle = auth.Throttle(auth.load_secret(services.settings))
        self.env = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            intents=[str(i) for i in Intent],
            channels=[str(c) for c in Channel],
            statuses=[str(s) for s in Status],
            roles=auth.ROLES,
            mask=mask,
        )
        self.env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M") if d else ""
        self.env.filters["day"] = lambda d: d.strftime("%Y-%m-%d") if d else ""
        self.env.filters["hide_codes"] = hide_codes

    # ------------------------------------------------------------------ plumbing

    def render(self, request: Request, template: str, *, status_code: int = 200, **values: Any) -> HTMLResponse:
        session = request.session
        if "csrf" not in session:
            session["csrf"] = auth.new_token()
        messages = session.pop("flash", [])
        html = self.env.get_template(template).render(
            request=request, csrf=session["csrf"], flashes=messages, now=clock.now(), path=request.url.path, **values
        )
        return HTMLResponse(html, status_code=status_code)

    def _current(self, request: Request) -> auth.StaffUser | None:
        with self.services.db.transaction() as s:
            return auth.session_user(s, request.session)

    def _refuse(self, request: Request, staff: auth.StaffUser | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status_code=status, staff=staff, message=message)

    def _origin_ok(self, request: Request) -> bool:
        """A browser names the page that posted; it must be this site."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def _run(self, handler: Handler, role: str, request: Request, form: FormData | None) -> Response:
        staff = self._current(request)
        if staff is None:
            if form is None:
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            return RedirectResponse("/login", status_code=303)
        if form is not None and not (self._origin_ok(request) and auth.tokens_match(request.session.get("csrf"), form.get("csrf"))):
            log.warning("refused a form without a valid CSRF token: %s %s", request.method, request.url.path)
            return self._refuse(request, staff, 403, "This form has expired or did not come from the console. Reload the page and try again.")
        if not staff.can(role):
            return self._refuse(request, staff, 403, f"This needs the {role} role; you are {staff.role}.")
        try:
            with self.services.db.transaction() as db:
                return handler(Ctx(self, request, staff, form, db))
        except REFUSALS as exc:  # rolled back: nothing changed
            flash(request, str(exc), "error")
            ref = request.path_params.get("ref")
            return RedirectResponse(f"/tickets/{ref}" if ref else _local_path(request.url.path), status_code=303)

    def page(self, path: str, handler: Handler, role: str = "agent") -> Route:
        async def endpoint(request: Request) -> Response:
            return await run_in_threadpool(self._run, handler, role, request, None)

        endpoint.__name__ = handler.__name__
        return Route(path, endpoint, methods=["GET", "HEAD"], name=handler.__name__)

    def action(self, path: str, handler: Handler, role: str = "agent") -> Route:
        async def endpoint(request: Request) -> Response:
            form = await request.form(max_files=0, max_fields=200)
            return await run_in_threadpool(self._run, handler, role, request, form)

        endpoint.__name__ = handler.__name__
        return Route(path, endpoint, methods=["POST"], name=handler.__name__)

    # ------------------------------------------------------------------ the requester's link

    def _page_language(self, request: Request, chosen: str | None) -> tuple[str, dict[str, Any]]:
        """The requester's language for the confirmation page: the one the link names
        (the acknowledgement's, so a person who wrote in Chinese reads Chinese), else
        what the browser asks for; its words from ``templates/confirm_page/``."""
        tdir = self.services.settings.templates_dir
        lang = strings.pick(tdir, "confirm_page", chosen, *strings.accepted(request.headers.get("accept-language")))
        return lang, strings.load(tdir, "confirm_page", lang)

    async def verify_page(self, request: Request) -> Response:
        """The link next to a mailed code: a page with a button, never an action on GET,
        because mail scanners open links by themselves."""
        code = "".join(ch for ch in request.query_params.get("code", "") if ch.isdigit())[:12]
        ref = request.path_params["ref"]
        lang, t = self._page_language(request, request.query_params.get("lang"))
        return self.render(request, "verify.html", staff=None, ref=ref, code=code, result=None, page_lang=lang, t=t)

    async def verify_submit(self, request: Request) -> Response:
        from privbot import verify
        from privbot.domain import parse_ref

        form = await request.form(max_files=0, max_fields=20)
        lang, t = self._page_language(request, str(form.get("lang") or "")[:10])
        if not (self._origin_ok(request) and auth.tokens_match(request.session.get("csrf"), form.get("csrf"))):
            return self.render(request, "verify.html", status_code=403, staff=None, ref="", code="", result="form_expired",
                               message=t["results"]["form_expired"], page_lang=lang, t=t)
        ref = request.path_params["ref"]
        code = str(form.get("code") or "")[:20]

        def run() -> str:
            ticket_id = parse_ref(ref)
            with self.services.db.transaction() as s:
                ticket = s.get(Ticket, ticket_id) if ticket_id is not None else None
                if ticket is None:
                    return "no_challenge"
                return verify.submit_code(self.services, s, ticket, code, via="link")

        result = await run_in_threadpool(run)
        status = 200 if result == "verified" else 400
        # A link that matches no open challenge reads the same whether or not the reference exists.
        message = t["results"].get(result) or t["results"]["no_challenge"]
        return self.render(request, "verify.html", status_code=status, staff=None, ref=ref, code="", result=result,
                           message=message, page_lang=lang, t=t)

    # ------------------------------------------------------------------ login

    async def login_page(self, request: Request) -> Response:
        if await run_in_threadpool(self._current, request) is not None:
            return RedirectResponse(_local_path(request.query_params.get("next", "/")), status_code=303)
        return self.render(request, "login.html", staff=None, next=_local_path(request.query_params.get("next", "/")))

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=20)
        email = str(form.get("email") or "").strip().lower()
        password = str(form.get("password") or "")
        target = _local_path(str(form.get("next") or "/"))
        if not (self._origin_ok(request) and auth.tokens_match(request.session.get("csrf"), form.get("csrf"))):
            return self._refuse(request, None, 403, "This form has expired or did not come from the console. Reload the page and try again.")
        client = request.client.host if request.client else "?"
        keys = (f"addr:{email}", f"client:{client}")

        def check() -> tuple[str, Staff | None, str]:
            with self.services.db.transaction() as s:
                if self.throttle.blocked(s, *keys):  # before the password hash: guessing costs us nothing
                    return "throttled", None, ""
                staff = auth.authenticate(s, email, password)
                if staff is None:
                    self.throttle.failed(s, *keys)
                    return "failed", None, ""
                self.throttle.succeeded(s, *keys)
                return "ok", staff, auth.start_session(s, staff)

        outcome, staff, login = await run_in_threadpool(check)
        if outcome == "throttled":
            log.warning("login throttled for %s", mask(email))
            return self.render(request, "login.html", status_code=429, staff=None, next=target, email=email,
                               error="Too many failed attempts. Wait a few minutes and try again.")
        if staff is None:
            log.info("failed console login for %s", mask(email))
            return self.render(request, "login.html", status_code=401, staff=None, next=target, email=email,
                               error="Wrong address or password.")
        request.session.clear()  # a fresh session: no fixation, a new CSRF token
        request.session.update({"sid": staff.id, "fp": auth.fingerprint(staff.password_hash), "csrf": auth.new_token(), "st": login})
        log.info("console login: %s (%s)", mask(staff.email), staff.role)
        return RedirectResponse(target, status_code=303)

    # ------------------------------------------------------------------ pages

    def queue(self, ctx: Ctx) -> Response:
        f = views.QueueFilter.from_query(ctx.request.query_params)
        rows, cut = views.queue(ctx.db, f)
        return ctx.render("queue.html", rows=rows, cut=cut, f=f, limit=views.QUEUE_LIMIT)

    def _ticket(self, ctx: Ctx) -> Ticket:
        ticket = views.find_ticket(ctx.db, ctx.request.path_params["ref"])
        if ticket is None:
            raise _NotFound()
        return ticket

    def ticket(self, ctx: Ctx, *, preview: dict[str, Any] | None = None) -> Response:
        ticket = self._ticket(ctx)
        view = views.ticket_view(ctx.db, ticket)
        return ctx.render(
            "ticket.html", t=ticket, v=view, preview=preview, can_extend=actions.extension_available(),
            four_eyes=replies.four_eyes_rights(self.settings),
        )

    def reports(self, ctx: Ctx) -> Response:
        r = views.report(ctx.db)
        rights = [i for i in r.per_right if sum(r.per_right[i].values()) or i != "other"]
        chart_rights = charts.stacked_bars(
            [(i, [r.per_right[i].get(c, 0) for c in r.channels]) for i in rights], r.channels, title="Requests per right and channel"
        )
        chart_open = charts.bars(
            r.open_by_days_left, title="Open tickets by days left",
            colours=("#c0392b", "#e08a1e", "#d4b106", "#2f6db5", "#3a9a5b", "#7a7a7a"),
        )
        return ctx.render("reports.html", r=r, rights=rights, chart_rights=chart_rights, chart_open=chart_open)

    def audit_page(self, ctx: Ctx) -> Response:
        report = verify_chain(ctx.db)
        entries = list(ctx.db.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(200)))
        total = ctx.db.scalar(select(func.count(AuditEntry.id))) or 0
        return ctx.render("audit.html", report=report, entries=entries, total=total)

    def staff_page(self, ctx: Ctx) -> Response:
        people = list(ctx.db.scalars(select(Staff).order_by(Staff.email)))
        return ctx.render("staff.html", people=people)

    # ------------------------------------------------------------------ actions

    def _draft(self, ctx: Ctx, ticket: Ticket) -> Draft:
        try:
            draft_id = int(ctx.request.path_params["draft_id"])
        except (KeyError, ValueError):
            raise _NotFound() from None
        draft = ctx.db.get(Draft, draft_id)
        if draft is None or draft.ticket_id != ticket.id:
            raise _NotFound()
        return draft

    def edit_draft(self, ctx: Ctx) -> Response:
        ticket = self._ticket(ctx)
        draft = self._draft(ctx, ticket)
        subject, text = ctx.field("subject"), ctx.field("text")
        if ctx.field("op") == "preview":
            # nothing saved: the page shows the words as the requester will read them
            return self.ticket(ctx, preview={"draft_id": draft.id, "subject": replies.with_ref(subject, ticket.ref), "text": text})
        replies.edit_draft(ctx.db, draft, ctx.staff.email, subject, text)
        return ctx.back(f"/tickets/{ticket.ref}", f"Draft #{draft.id} saved.")

    def approve(self, ctx: Ctx) -> Response:
        ticket = self._ticket(ctx)
        draft = self._draft(ctx, ticket)
        replies.approve(ctx.db, self.settings, ticket, ctx.staff.email, draft_id=draft.id)
        if draft.status == "pending":
            return ctx.back(f"/tickets/{ticket.ref}", f"First approval of draft #{draft.id} recorded; a second approver must approve it before it is sent.")
        return ctx.back(f"/tickets/{ticket.ref}", f"Draft #{draft.id} approved; it is in the outbox.")

    def deny(self, ctx: Ctx) -> Response:
        ticket = self._ticket(ctx)
        replies.deny(ctx.db, self.settings, self.services.renderer, ticket, ctx.staff.email, ctx.field("reason"))
        return ctx.back(f"/tickets/{ticket.ref}", "Request denied; the requester is told the reason.")

    def reclassify(self, ctx: Ctx) -> Response:
        ticket = self._ticket(ctx)
        assert ctx.form is not None
        primary = ctx.field("primary")
        chosen = [primary] + [str(v) for v in ctx.form.getlist("also") if v != primary]
        actions.reclassify(ctx.db, self.settings, ticket, [c for c in chosen if c], ctx.staff.email)
        return ctx.back(f"/tickets/{ticket.ref}", f"Rights set to {', '.join(ticket.intents)}.")

    def extend(self, ctx: Ctx) -> Response:
        ticket = self._ticket(ctx)
        try:
            days = int(ctx.field("days"))
        except ValueError:
            raise actions.ActionError("days: a whole number") from None
        actions.extend(ctx.db, self.settings, ticket, days, ctx.field("reason"), ctx.staff.email)
        return ctx.back(f"/tickets/{ticket.ref}", f"Deadline extended to {ticket.due_at:%Y-%m-%d}; the notice is drafted.")

    def close(self, ctx: Ctx) -> Response:
        ticket = self._ticket(ctx)
        actions.close(ctx.db, ticket, ctx.staff.email, ctx.field("note"))
        return ctx.back(f"/tickets/{ticket.ref}", f"{ticket.ref} closed.")

    def add_staff(self, ctx: Ctx) -> Response:
        person = auth.add_staff(ctx.db, ctx.field("email"), ctx.field("role"), ctx.field("password"), actor=ctx.staff.email)
        return ctx.back("/staff", f"{person.email} added as {person.role}.")

    def change_staff(self, ctx: Ctx) -> Response:
        person = ctx.db.get(Staff, int(ctx.request.path_params["staff_id"]))
        if person is None:
            raise _NotFound()
        if person.id == ctx.staff.id:
            raise auth.StaffError("you cannot change your own account here (ask another admin)")
        role = ctx.field("role") or None
        active = {"1": True, "0": False}.get(ctx.field("active"))
        auth.set_staff(ctx.db, person, actor=ctx.staff.email, role=role, active=active)
        return ctx.back("/staff", f"{person.email}: {person.role}, {'active' if person.active else 'deactivated'}.")

    def logout(self, ctx: Ctx) -> Response:
        auth.end_session(ctx.db, ctx.request.session)  # ended on the server: a copy of the cookie is worth nothing now
        ctx.request.session.clear()
        return RedirectResponse("/login", status_code=303)


class _NotFound(Exception):
    pass


def create_app(services: Any) -> Starlette:
    console = Console(services)
    c = console
    routes: list[BaseRoute] = [
        Route("/login", c.login_page, methods=["GET", "HEAD"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/verify/{ref}", c.verify_page, methods=["GET", "HEAD"]),
        Route("/verify/{ref}", c.verify_submit, methods=["POST"]),
        c.action("/logout", c.logout),
        c.page("/", c.queue),
        c.page("/tickets/{ref}", c.ticket),
        c.action("/tickets/{ref}/drafts/{draft_id:int}", c.edit_draft, "agent"),
        c.action("/tickets/{ref}/drafts/{draft_id:int}/approve", c.approve, "approver"),
        c.action("/tickets/{ref}/deny", c.deny, "approver"),
        c.action("/tickets/{ref}/reclassify", c.reclassify, "agent"),
        c.action("/tickets/{ref}/extend", c.extend, "approver"),
        c.action("/tickets/{ref}/close", c.close, "approver"),
        c.page("/reports", c.reports),
        c.page("/audit", c.audit_page, "approver"),
        c.page("/staff", c.staff_page, "admin"),
        c.action("/staff", c.add_staff, "admin"),
        c.action("/staff/{staff_id:int}", c.change_staff, "admin"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    try:  # /healthz and /metrics (ops), no login; absent in a build without them
        from privbot.web import ops

        routes[:0] = ops.routes(services)
    except ImportError:
        pass

    async def not_found(request: Request, exc: Exception) -> Response:
        return HTMLResponse("<!doctype html><title>Not found</title><p>Not found. <a href=\"/\">Back to the queue</a></p>", 404)

    https = services.settings.public_url.lower().startswith("https://")
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware, secret_key=auth.load_secret(services.settings), session_cookie=SESSION_COOKIE,
                max_age=auth.SESSION_HOURS * 3600, same_site="lax", https_only=https,
            ),
        ],
        exception_handlers={404: not_found, _NotFound: not_found},
    )
    app.state.console = console
    return app
