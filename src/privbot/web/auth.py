"""Who may use the console, and proof that a form came from it.

Why this module exists: the console decides what leaves the company, so every request
must come from a known, active member of staff with the right role, and every change
must come from a form the console itself served (CSRF).  Passwords are kept only as
Argon2id hashes; the session is a signed cookie (itsdangerous, via Starlette's
SessionMiddleware) that carries the staff id, a fingerprint of the password hash (a
password change ends every other session), the CSRF token, and a random token naming
the login's row in ``console_sessions`` (only its SHA-256 is stored): logging out ends
that row, so a copy of the cookie is worth nothing afterwards.

Roles are ranked: an approver may do what an agent does, an admin what an approver does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from privbot import audit, clock
from privbot.config import Settings
from privbot.store.models import ConsoleSession, LoginFailure, Staff

#: lowest to highest; each role may do everything the roles before it may
ROLES: tuple[str, ...] = ("agent", "approver", "admin")
_RANK = {role: n for n, role in enumerate(ROLES)}
MIN_PASSWORD = 10

_hasher = PasswordHasher()
#: verified against when the address is unknown, so a wrong address costs as long as a
#: wrong password and the login form does not reveal who has an account
_dummy: list[str] = []


def _dummy_hash() -> str:
    # Made on first need, not at import: one Argon2 hash takes 64 MiB for a moment, and
    # every `privbot run` imports this module, console or not (its start-up peak).
    if not _dummy:
        _dummy.append(_hasher.hash(secrets.token_urlsafe(16)))
    return _dummy[0]


class StaffError(Exception):
    """A staff account cannot be created or changed as asked."""


@dataclass(frozen=True)
class StaffUser:
    """The signed-in person, detached from any database session."""

    id: int
    email: str
    role: str

    def can(self, role: str) -> bool:
        return _RANK.get(self.role, -1) >= _RANK[role]


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    local, at, host = email.partition("@")
    if not (local and at and host) or "@" in host or any(c.isspace() for c in email) or len(email) > 320:
        raise StaffError(f"not an email address: {email!r}")
    return email


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def fingerprint(password_hash: str) -> str:
    """Stored in the session: changes when the password does, reveals nothing of it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def add_staff(session: Session, email: str, role: str, password: str, *, actor: str = "cli") -> Staff:
    email = normalise_email(email)
    if role not in ROLES:
        raise StaffError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise StaffError(f"the password must have at least {MIN_PASSWORD} characters")
    if session.scalar(select(Staff.id).where(func.lower(Staff.email) == email)) is not None:
        raise StaffError(f"staff {email} already exists")
    staff = Staff(email=email, password_hash=hash_password(password), role=role, active=True, created_at=clock.now())
    session.add(staff)
    session.flush()
    audit.record(session, "staff_added", actor=actor, staff=email, role=role)
    return staff


def set_staff(session: Session, staff: Staff, *, actor: str, role: str | None = None, active: bool | None = None) -> None:
    if role is not None:
        if role not in ROLES:
            raise StaffError(f"unknown role {role!r}")
        staff.role = role
    if active is not None:
        staff.active = active
    audit.record(session, "staff_changed", actor=actor, staff=staff.email, role=staff.role, active=staff.active)


def authenticate(session: Session, email: str, password: str) -> Staff | None:
    """The active staff member with this address and password, else None."""
    try:
        email = normalise_email(email)
    except StaffError:
        check_password(_dummy_hash(), password)
        return None
    staff = session.scalar(select(Staff).where(func.lower(Staff.email) == email))
    if staff is None or not staff.active:
        check_password(_dummy_hash(), password)
        return None
    return staff if check_password(staff.password_hash, password) else None


#: how long a login lasts (the cookie's lifetime, and its row's)
SESSION_HOURS = 12


def _digest(text: str) -> str:
    """What is kept of a login's token (random, so a plain SHA-256 gives nothing away)."""
    return hashlib.sha256(text.encode()).hexdigest()


def start_session(session: Session, staff: Staff) -> str:
    """A new login for ``staff``: its row, and the token the cookie carries to name it.
    The member's logins older than a cookie can live are cleared on the way."""
    now = clock.now()
    session.execute(
        delete(ConsoleSession).where(ConsoleSession.staff_id == staff.id, ConsoleSession.created_at < now - timedelta(hours=SESSION_HOURS))
    )
    token = new_token()
    session.add(ConsoleSession(staff_id=staff.id, token_hash=_digest(token), created_at=now))
    return token


def end_session(session: Session, data: dict[str, object]) -> None:
    """Logout: the login the cookie names counts no more, wherever the cookie is copied."""
    token = data.get("st")
    if isinstance(token, str):
        session.execute(
            update(ConsoleSession).where(ConsoleSession.token_hash == _digest(token), ConsoleSession.ended_at.is_(None)).values(ended_at=clock.now())
        )


def session_user(session: Session, data: dict[str, object]) -> StaffUser | None:
    """The staff member a session cookie names, if still active with the same password,
    and the login it names neither ended nor older than a cookie can live."""
    staff_id, token = data.get("sid"), data.get("st")
    if not isinstance(staff_id, int) or not isinstance(token, str):
        return None
    staff = session.scalar(
        select(Staff)
        .join(ConsoleSession, ConsoleSession.staff_id == Staff.id)
        .where(
            Staff.id == staff_id,
            ConsoleSession.token_hash == _digest(token),
            ConsoleSession.ended_at.is_(None),
            ConsoleSession.created_at >= clock.now() - timedelta(hours=SESSION_HOURS),
        )
    )
    if staff is None or not staff.active or not hmac.compare_digest(str(data.get("fp", "")), fingerprint(staff.password_hash)):
        return None
    return StaffUser(staff.id, staff.email, staff.role)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: object, given: object) -> bool:
    return isinstance(expected, str) and isinstance(given, str) and bool(expected) and hmac.compare_digest(expected, given)


def load_secret(settings: Settings) -> str:
    """``PRIVBOT_WEB_SECRET``, else a random one kept in ``<data dir>/web_secret`` (0600)
    so sessions survive a restart and every process on this data dir shares it."""
    if settings.web_secret:
        return settings.web_secret
    path = Path(settings.data_dir) / "web_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


class Throttle:
    """At most ``limit`` failed logins per key (address, client) in ``window``; then the
    key is refused until its oldest failure leaves the window.  Counted in the database
    (``login_failures``), so every node behind a load balancer sees the same guesses and
    a restart forgives nothing.  A key is kept only as an HMAC under the console's secret
    (an address or an IP address hashed plainly could be found again by trying them all);
    nodes that share sessions share the secret, and so the keys."""

    def __init__(self, secret: str, limit: int = 5, window: timedelta = timedelta(minutes=15)) -> None:
        self._secret = secret.encode()
        self.limit, self.window = limit, window

    def _keyed(self, keys: tuple[str, ...]) -> list[str]:
        return [hmac.new(self._secret, k.encode(), hashlib.sha256).hexdigest() for k in keys]

    def blocked(self, session: Session, *keys: str) -> bool:
        counts = session.execute(
            select(LoginFailure.key_hash, func.count())
            .where(LoginFailure.key_hash.in_(self._keyed(keys)), LoginFailure.at >= clock.now() - self.window)
            .group_by(LoginFailure.key_hash)
        )
        return any(n >= self.limit for _key, n in counts)

    def failed(self, session: Session, *keys: str) -> None:
        now = clock.now()
        session.execute(delete(LoginFailure).where(LoginFailure.at < now - self.window))
        session.add_all([LoginFailure(key_hash=k, at=now) for k in self._keyed(keys)])

    def succeeded(self, session: Session, *keys: str) -> None:
        session.execute(delete(LoginFailure).where(LoginFailure.key_hash.in_(self._keyed(keys))))


def read_password() -> str:
    """``PRIVBOT_STAFF_PASSWORD``, else asked twice on the terminal (never echoed)."""
    import getpass
    import sys

    from privbot.cli import UsageError

    password = os.environ.get("PRIVBOT_STAFF_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise UsageError("no password: set PRIVBOT_STAFF_PASSWORD or run on a terminal to be asked")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise UsageError("the two passwords differ")
    return password
