"""The ``privbot`` command (see INTERFACE.md for the contract).

Every user error — bad usage, bad configuration, an unknown reference — exits 2 with
one line that names the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import select

from privbot import clock
from privbot.config import ConfigError, Settings, load_settings
from privbot.domain import Status, parse_ref


class UsageError(Exception):
    """A command was given something it cannot act on (exit 2)."""


def _services(settings: Settings) -> Any:
    from privbot.app import build_services

    return build_services(settings)


# ---------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    settings.outbox_maildir.mkdir(parents=True, exist_ok=True)
    print(f"database ready: {_safe_url(services.db.url)}; data in {settings.data_dir}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.service import serve

    services = _services(settings)
    asyncio.run(serve(services))
    return 0


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.classify import Classifier

    rows = []
    source: Iterable[str] = open(args.file, encoding="utf-8") if args.file else sys.stdin
    for n, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise UsageError(f"line {n}: not a JSON object: {exc}") from None
        rows.append(row)
    classifier = Classifier.load(settings.intents_dir, settings.data_dir / "cache")
    items = [(str(r.get("body") or ""), str(r.get("subject") or ""), str(r.get("channel") or "email")) for r in rows]
    results = classifier.classify_many(items) if hasattr(classifier, "classify_many") else [classifier.classify(*i) for i in items]
    out = sys.stdout
    for row, c in zip(rows, results):
        out.write(json.dumps({"id": row.get("id"), **c.to_json()}, ensure_ascii=False) + "\n")
    return 0


def ticket_json(t: Any) -> dict[str, Any]:
    return {
        "ref": t.ref,
        "intent": t.intent,
        "intents": list(t.intents or [t.intent]),
        "status": t.status,
        "channel": t.channel,
        "requester": t.requester,
        "received_at": t.received_at.isoformat(),
        "due_at": t.due_at.isoformat(),
        "verified": bool(t.verified),
        "extended": bool(t.extended),
        "confidence": round(t.confidence or 0.0, 4),
        "language": t.language,
    }


def cmd_tickets(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.store.models import Ticket

    if args.status and args.status not in {s.value for s in Status}:
        raise UsageError(f"unknown status {args.status!r}; one of: {', '.join(s.value for s in Status)}")
    services = _services(settings)
    with services.db.transaction() as session:
        q = select(Ticket).order_by(Ticket.id)
        if args.status:
            q = q.where(Ticket.status == args.status)
        tickets = list(session.scalars(q))
        for t in tickets:
            if args.json:
                print(json.dumps(ticket_json(t), ensure_ascii=False))
            else:
                days = (t.due_at - clock.now()).total_seconds() / 86400
                print(f"{t.ref}  {t.status:<22} {t.intent:<12} {t.channel:<8} due {t.due_at:%Y-%m-%d} ({days:+.0f} d)  {t.requester}")
        if not args.json and not tickets:
            print("no tickets")
    return 0


def _load_ticket(session: Any, ref: str) -> Any:
    from privbot.store.models import Ticket

    ticket_id = parse_ref(ref) if ref.upper().startswith("PRIV-") or ref.startswith("[") else (int(ref) if ref.isdigit() else None)
    ticket = session.get(Ticket, ticket_id) if ticket_id is not None else None
    if ticket is None:
        raise UsageError(f"no ticket {ref}")
    return ticket


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.store.models import AuditEntry, Challenge, Draft, Message

    services = _services(settings)
    with services.db.transaction() as session:
        t = _load_ticket(session, args.ref)
        messages = list(session.scalars(select(Message).where(Message.ticket_id == t.id).order_by(Message.id)))
        drafts = list(session.scalars(select(Draft).where(Draft.ticket_id == t.id).order_by(Draft.id)))
        challenges = list(session.scalars(select(Challenge).where(Challenge.ticket_id == t.id).order_by(Challenge.id)))
        trail = list(session.scalars(select(AuditEntry).where(AuditEntry.ticket_id == t.id).order_by(AuditEntry.id)))
        data = {
            **ticket_json(t),
            "cues": list(t.cues or []),
            "verification": {
                "verified": bool(t.verified),
                "verified_at": t.verified_at.isoformat() if t.verified_at else None,
                "challenges": [
                    {"status": c.status, "attempts": c.attempts, "expires_at": c.expires_at.isoformat()} for c in challenges
                ],
            },
            "messages": [
                {
                    "direction": m.direction, "kind": m.kind, "channel": m.channel, "at": m.created_at.isoformat(),
                    "from": m.sender, "to": m.recipient, "subject": m.subject, "message_id": m.message_id,
                    "text": m.new_text if m.direction == "in" else m.body,
                }
                for m in messages
            ],
            "drafts": [
                {"id": d.id, "kind": d.kind, "status": d.status, "subject": d.subject, "text": d.text,
                 "edited_by": d.edited_by, "approved_by": d.approved_by}
                for d in drafts
            ],
            "audit": [{"at": a.at.isoformat(), "actor": a.actor, "action": a.action, "detail": a.detail} for a in trail],
            **_deadline_json(session, t),
        }
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    _print_ticket(data, sys.stdout)
    return 0


def _print_ticket(d: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w(f"{d['ref']}  {d['status']}  {d['intent']} {d['intents'][1:] or ''}  confidence {d['confidence']:.2f}\n")
    w(f"  requester {d['requester']} via {d['channel']}; received {d['received_at']}; due {d['due_at']}"
      f"{' (extended)' if d['extended'] else ''}\n")
    w(f"  verified: {'yes' if d['verified'] else 'no'}; cues: {', '.join(d['cues']) or '-'}\n\nmessages:\n")
    for m in d["messages"]:
        w(f"  [{m['at']}] {m['direction']} {m['kind']} {m['from']} -> {m['to'] or ''}: {m['subject']}\n")
        for line in (m["text"] or "").strip().splitlines()[:12]:
            w(f"      {line}\n")
    w("\ndrafts:\n")
    for dr in d["drafts"]:
        w(f"  #{dr['id']} {dr['kind']} {dr['status']}: {dr['subject']}\n")
    w(f"\ndeadline ({d['legal_clock']} clock):\n")
    for e in d["deadline_history"]:
        w(f"  {e['at']} {e['actor']}: {e['kind']} {e['old_due_at'] or ''} -> {e['new_due_at'] or ''} {e['reason']}\n")
    for r in d["reminders"]:
        w(f"  {r['sent_at']} staff reminded: {r['kind']} (due {r['due_at']})\n")
    w("\naudit:\n")
    for a in d["audit"]:
        w(f"  {a['at']} {a['actor']}: {a['action']}\n")


def _deadline_json(session: Any, t: Any) -> dict[str, Any]:
    """The ticket's law, every change of its deadline, and the staff reminders about it."""
    from privbot import deadlines, sweeps

    def iso(v: Any) -> Any:
        return v.isoformat() if isinstance(v, datetime) else v

    return {
        "legal_clock": t.legal_clock,
        "deadline_history": [{k: iso(v) for k, v in e.items()} for e in deadlines.history(session, t.id)],
        "reminders": [{k: iso(v) for k, v in r.items()} for r in sweeps.reminders_for(session, t.id)],
    }


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    from privbot import replies

    services = _services(settings)
    try:
        with services.db.transaction() as session:
            t = _load_ticket(session, args.ref)
            draft = replies.approve(session, settings, t, args.as_)
            ref, kind, waiting = t.ref, draft.kind, draft.status == "pending"
    except replies.ApprovalError as exc:
        raise UsageError(str(exc)) from None
    if waiting:
        print(f"{ref}: first approval of the {kind} recorded for {args.as_}; a second approver must approve it before it is sent")
    else:
        print(f"{ref}: {kind} approved by {args.as_}; queued for delivery")
    return 0


def cmd_extend(args: argparse.Namespace, settings: Settings) -> int:
    from privbot import deadlines

    services = _services(settings)
    try:
        with services.db.transaction() as session:
            t = _load_ticket(session, args.ref)
            deadlines.extend(session, settings, t, args.days, args.reason, args.as_)
            ref, due = t.ref, t.due_at
    except deadlines.ExtensionRefused as exc:
        raise UsageError(str(exc)) from None
    print(f"{ref}: deadline extended by {args.days} days to {due.isoformat()}; notice queued to the requester")
    return 0


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from privbot import scheduler

    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise UsageError(f"--at: not an ISO 8601 time: {args.at!r}") from None
        clock.freeze(clock.ensure_aware(at))
    services = _services(settings)
    for line in scheduler.run_once(services):
        print(line)
    return 0


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    from privbot import shunt

    services = _services(settings)
    rows = shunt.pending(services)
    if args.list or not rows:
        for r in rows:
            print(f"#{r.id}  {r.created_at:%Y-%m-%d %H:%M}  {r.channel} {r.source}  {r.error[:100]}")
        if not rows:
            print("nothing kept for re-run")
        return 0
    wanted = set(args.ids) if args.ids else {r.id for r in rows}
    failed = 0
    for r in rows:
        if r.id not in wanted:
            continue
        result = shunt.reprocess(services, r.id)
        if result is None:
            failed += 1
            print(f"#{r.id}: still fails; kept")
        else:
            print(f"#{r.id}: {result.action} {result.ticket_ref or ''}".rstrip())
    return 1 if failed else 0


def _span(seconds: float) -> str:
    """A duration as people read it in a listing: 52 s, 12 min, 3 h, 2 d."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def cmd_leases(args: argparse.Namespace, settings: Settings) -> int:
    """Which process watches each IMAP mailbox and long-polls each Telegram bot — the
    jobs only one process does at a time (privbot.leases) — and any nobody holds."""
    from privbot import leases

    services = _services(settings)
    now = clock.now()
    states = leases.every(services.db)
    for lease in states:
        held = lease.held(now)
        if args.json:
            print(json.dumps({"job": lease.job, "name": lease.name, "holder": lease.holder,
                              "expires_at": lease.expires_at.isoformat(), "held": held}, ensure_ascii=False))
        elif held:
            print(f"{lease.job:<9} held by {lease.holder} until {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC "
                  f"(renewed while it works; lapses in {_span((lease.expires_at - now).total_seconds())})  {lease.name}")
        else:
            print(f"{lease.job:<9} LAPSED {_span((now - lease.expires_at).total_seconds())} ago: nobody holds it "
                  f"(last {lease.holder}, which stopped without releasing it)  {lease.name}")
    if not states and not args.json:
        print("no leases: no process has watched an IMAP mailbox or long-polled a Telegram bot with this database")
    return 0


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.audit import verify_chain

    services = _services(settings)
    with services.db.transaction() as session:
        report = verify_chain(session)
    if report.ok:
        print(f"audit trail intact: {report.entries} entries")
        return 0
    print(f"audit trail ALTERED at entry #{report.first_bad_id}: {report.reason}")
    return 1


def cmd_learned(args: argparse.Namespace, settings: Settings) -> int:
    """The staff corrections waiting for review: id, when, ticket, right(s), language, who, words."""
    from privbot import learned

    rows = learned.waiting(settings)
    if args.json:
        for w in rows:
            print(json.dumps({"id": w.id, **{k: w.row.get(k) for k in ("ticket", "intent", "intents", "lang", "by", "at", "subject", "text")}},
                             ensure_ascii=False))
        return 0
    if not rows:
        print("no staff corrections waiting for review")
        return 0
    for w in rows:
        rights = "+".join(str(i) for i in (w.row.get("intents") or [w.intent]))
        words = " ".join(w.text.split())
        print(f"{w.id}  {str(w.row.get('at', ''))[:16]}  {w.row.get('ticket') or '-'}  {rights}  {w.lang}  {w.row.get('by') or '-'}  "
              f"{words[:100]}{'…' if len(words) > 100 else ''}")
    print(f"{len(rows)} waiting: 'privbot learned accept ID --as EMAIL' adds one to intents/, 'privbot learned reject ID --as EMAIL' drops it")
    return 0


def cmd_learned_accept(args: argparse.Namespace, settings: Settings) -> int:
    from privbot import learned

    try:
        example, path, words = learned.accept(_services(settings), args.id, actor=args.as_, text=args.text)
    except learned.ReviewError as exc:
        raise UsageError(str(exc)) from None
    print(f"{example.id}: added to {path} ({example.lang}): {json.dumps(words, ensure_ascii=False)}")
    print("read it for names or other personal details before you commit the file; privbot retrains when it next starts")
    return 0


def cmd_learned_reject(args: argparse.Namespace, settings: Settings) -> int:
    from privbot import learned

    try:
        example = learned.reject(_services(settings), args.id, actor=args.as_)
    except learned.ReviewError as exc:
        raise UsageError(str(exc)) from None
    print(f"{example.id}: dropped; intents/ unchanged")
    return 0


def cmd_accounts_import(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.accounts import cmd_accounts_import as run

    return run(args, settings)


def cmd_staff_add(args: argparse.Namespace, settings: Settings) -> int:
    from privbot.web.auth import StaffError, add_staff, read_password

    password = read_password()
    services = _services(settings)
    try:
        with services.db.transaction() as session:
            staff = add_staff(session, args.email, args.role, password, actor="cli")
            email, role = staff.email, staff.role
    except StaffError as exc:
        raise UsageError(str(exc)) from None
    print(f"staff {email} added as {role}")
    return 0


# ---------------------------------------------------------------------------- wiring


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(message)


Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="privbot", description="Privacy-request intake assistant.")
    p.add_argument("--config", help="TOML configuration file (or PRIVBOT_CONFIG)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    add("run", cmd_run, "run every configured part until SIGINT/SIGTERM")
    add("init", cmd_init, "create or migrate the database and the data folder")
    sp = add("classify", cmd_classify, "classify JSON lines (id, channel, subject, body)")
    sp.add_argument("file", nargs="?")
    sp = add("tickets", cmd_tickets, "list tickets")
    sp.add_argument("--status")
    sp.add_argument("--json", action="store_true")
    sp = add("show", cmd_show, "show one ticket with its thread, drafts and audit trail")
    sp.add_argument("ref")
    sp.add_argument("--json", action="store_true")
    sp = add("approve", cmd_approve, "approve a ticket's pending draft")
    sp.add_argument("ref")
    sp.add_argument("--as", dest="as_", required=True, metavar="STAFF_EMAIL")
    sp = add("extend", cmd_extend, "extend a ticket's deadline where the law allows, and notify the requester")
    sp.add_argument("ref")
    sp.add_argument("--days", type=int, required=True)
    sp.add_argument("--reason", required=True)
    sp.add_argument("--as", dest="as_", required=True, metavar="STAFF_EMAIL")
    sp = add("sweep", cmd_sweep, "run the deadline sweep and the outbox once")
    sp.add_argument("--at", help="as though it were this time (ISO 8601; no offset means UTC)")
    sp = add("reprocess", cmd_reprocess, "re-run messages kept in the shunt")
    sp.add_argument("ids", nargs="*", type=int)
    sp.add_argument("--list", action="store_true")
    sp = add("leases", cmd_leases, "which process watches each IMAP mailbox and polls each Telegram bot")
    sp.add_argument("--json", action="store_true")
    sp = add("audit", lambda a, s: (_ for _ in ()).throw(UsageError("audit: say 'audit verify'")), "audit trail tools")
    audit_sub = sp.add_subparsers(dest="audit_command", parser_class=_Parser)
    av = audit_sub.add_parser("verify", help="prove the audit trail is intact")
    av.set_defaults(func=cmd_audit_verify)
    sp = add("learned", cmd_learned, "staff corrections waiting for review (accept one into intents/, or reject it)")
    sp.add_argument("--json", action="store_true")
    learned_sub = sp.add_subparsers(dest="learned_command", parser_class=_Parser)
    la = learned_sub.add_parser("accept", help="add a waiting correction to its right's examples in intents/ (addresses and numbers masked)")
    la.add_argument("id")
    la.add_argument("--as", dest="as_", required=True, metavar="STAFF_EMAIL")
    la.add_argument("--text", help="the words to add instead of the requester's own (masked) words")
    la.set_defaults(func=cmd_learned_accept)
    lr = learned_sub.add_parser("reject", help="drop a waiting correction without using it")
    lr.add_argument("id")
    lr.add_argument("--as", dest="as_", required=True, metavar="STAFF_EMAIL")
    lr.set_defaults(func=cmd_learned_reject)
    sp = add("accounts", lambda a, s: (_ for _ in ()).throw(UsageError("accounts: say 'accounts import FILE.csv'")), "customer account directory")
    accounts_sub = sp.add_subparsers(dest="accounts_command", parser_class=_Parser)
    ai = accounts_sub.add_parser("import", help="load known accounts from a CSV file (email, name, phone, account_id)")
    ai.add_argument("file", metavar="FILE.csv")
    ai.set_defaults(func=cmd_accounts_import)
    sp = add("staff", lambda a, s: (_ for _ in ()).throw(UsageError("staff: say 'staff add EMAIL --role ROLE'")), "staff console accounts")
    staff_sub = sp.add_subparsers(dest="staff_command", parser_class=_Parser)
    sa = staff_sub.add_parser("add", help="create a staff user (password from a prompt or PRIVBOT_STAFF_PASSWORD)")
    sa.add_argument("email")
    sa.add_argument("--role", required=True, choices=["agent", "approver", "admin"])
    sa.set_defaults(func=cmd_staff_add)
    for extend in EXTENSIONS:
        extend(sub)
    return p


#: other modules add subcommands here: each is called with the subparsers object
EXTENSIONS: list[Callable[[Any], None]] = []


def main(argv: list[str] | None = None) -> int:
    from privbot.logs import setup_logging
    from privbot.store.db import DatabaseUnavailable

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("no command given; try 'privbot --help'")
        settings = load_settings(args.config)
        setup_logging(settings.log_level, settings.log_format)
        return args.func(args, settings)
    except (UsageError, ConfigError) as exc:
        print(f"privbot: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"privbot: database unavailable: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        clock.unfreeze()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
