"""Settings: a TOML file, overridden by ``PRIVBOT_*`` environment variables.

The defaults give a working service on a bare machine (SQLite under ``./var``, SMTP
intake on 127.0.0.1:2525, replies into a local Maildir).  A bad value is a
:class:`ConfigError` whose message names the setting; the CLI turns it into exit 2.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from email_validator import EmailNotValidError, validate_email


class ConfigError(Exception):
    """A setting is missing, malformed or contradictory (exit status 2)."""


def _project_dir(name: str) -> Path:
    """``intents/`` and ``templates/`` sit at the top of the checkout, where a privacy
    officer edits them; an installed wheel carries a copy inside the package."""
    here = Path(__file__).resolve()
    checkout = here.parents[2] / name
    if checkout.is_dir():
        return checkout
    return here.parent / "_data" / name


@dataclass
class Settings:
    data_dir: Path = Path("./var")
    database_url: str = ""
    privacy_address: str = "privacy@localhost"
    smtp_listen: str = "127.0.0.1:2525"
    smtp_max_size: int = 10 * 1024 * 1024
    imap_host: str = ""
    imap_port: int = 0
    imap_user: str = ""
    imap_password: str = ""
    imap_ssl: str = "tls"  # tls | starttls | plain
    imap_folder: str = "INBOX"
    imap_processed_folder: str = "Processed"
    imap_failed_folder: str = "Failed"
    #: a PEM file of CA certificates for the IMAP server (a private CA); empty: the system's
    imap_ca_file: str = ""
    #: IDLE is re-issued this often (servers drop an IDLE after 30 min; RFC 2177 says 29)
    imap_idle_seconds: float = 600.0
    #: where the server has no IDLE, look for new mail this often
    imap_poll_seconds: float = 30.0
    #: messages fetched per round trip (memory is also bounded to ~8 MB of mail per batch)
    imap_batch: int = 100
    #: after the server refuses the login, try again this often (a person must fix it)
    imap_auth_retry_seconds: float = 300.0
    #: a watcher's hold on its mailbox: renewed every third of it, taken over by another
    #: process this long after the holder died without giving it up
    imap_lease_seconds: float = 60.0
    smtp_relay: str = ""
    smtp_relay_user: str = ""
    smtp_relay_password: str = ""
    smtp_relay_starttls: bool = False
    telegram_token: str = ""
    telegram_api_url: str = ""
    #: long-poll wait per getUpdates call, seconds
    telegram_poll_timeout: float = 30.0
    #: one process at a time long-polls the bot; another takes over this long after it died
    telegram_lease_seconds: float = 90.0
    #: messages one chat may send per minute; beyond that one notice, then silence
    telegram_flood_per_minute: int = 20
    #: webhook instead of long polling: the public https URL Telegram posts to ...
    telegram_webhook_url: str = ""
    #: ... and the local HOST:PORT privbot listens on for it
    telegram_webhook_listen: str = "127.0.0.1:8443"
    #: shared secret Telegram echoes in X-Telegram-Bot-Api-Secret-Token (webhook mode)
    telegram_webhook_secret: str = ""
    web_listen: str = "127.0.0.1:8080"
    web_secret: str = ""
    public_url: str = ""
    staff_address: str = ""
    #: the language of what privbot writes to staff (reminders, escalations, lock notices)
    staff_language: str = "en"
    deadline_days: int = 30
    legal_clock: str = "default"
    #: public holidays business days skip (CCPA's confirmation), "YYYY-MM-DD,YYYY-MM-DD"
    holidays: str = ""
    #: days before the deadline on which staff are reminded, largest first ("7,3,1")
    reminder_days: str = "7,3,1"
    #: seconds between runs of each sweep other than the outbox; 0: each sweep's own default
    sweep_interval: float = 0.0
    #: days after a ticket is closed before its personal data is purged; 0: never
    retention_days: int = 365
    check_deliverability: bool = False
    #: one-time verification codes: hours valid, wrong tries before the challenge locks
    verification_code_hours: int = 72
    verification_max_attempts: int = 5
    #: days without verification before a reminder (with a fresh code), and before closing
    verification_reminder_days: int = 3
    verification_close_days: int = 14
    #: what each right needs, "intent=need+need,..." (needs: mailbox, code, second_approval);
    #: rights not named keep their defaults (see privbot.verify.DEFAULT_POLICY)
    verify_policy: str = ""
    #: the company's own account database (any SQLAlchemy URL) and a query with :email
    #: returning email, name, phone, account_id; consulted after the imported directory
    accounts_sql_url: str = ""
    accounts_sql_query: str = ""
    #: key for hashing one-time codes; empty: a random key kept in <data dir>/verify.key
    #: (processes on several hosts sharing one database must all set the same value)
    verify_secret: str = ""
    #: authserv-ids of the mail servers whose Authentication-Results headers we trust
    #: (comma-separated); empty: IMAP trusts its server's topmost header, SMTP trusts none
    trusted_authserv_ids: str = ""
    intents_dir: Path = field(default_factory=lambda: _project_dir("intents"))
    templates_dir: Path = field(default_factory=lambda: _project_dir("templates"))
    #: below this classifier confidence the requester is asked what they want
    clarify_below: float = 0.45
    #: automatic answers one address may receive per day (a burst gets no more)
    max_auto_replies_per_day: int = 5
    outbox_interval: float = 2.0
    log_level: str = "INFO"
    #: text (a line for a terminal) | json (one object per line, for log shippers)
    log_format: str = "text"

    # ---- derived -------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'privbot.db'}"

    @property
    def outbox_maildir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def smtp_endpoint(self) -> tuple[str, int] | None:
        return _host_port("smtp_listen", self.smtp_listen) if self.smtp_listen else None

    @property
    def web_endpoint(self) -> tuple[str, int] | None:
        return _host_port("web_listen", self.web_listen) if self.web_listen else None

    @property
    def relay_endpoint(self) -> tuple[str, int] | None:
        return _host_port("smtp_relay", self.smtp_relay) if self.smtp_relay else None


def _host_port(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False, "": False}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    try:
        if kind in (bool, "bool"):
            if isinstance(value, bool):
                return value
            return _BOOL[str(value).strip().lower()]
        if kind in (int, "int"):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind in (float, "float"):
            return float(value)
        if kind in (Path, "Path"):
            return Path(str(value))
        return str(value)
    except (KeyError, ValueError, TypeError):
        raise ConfigError(f"{name}: not a valid {getattr(kind, '__name__', kind)}: {value!r}") from None


def load_settings(config_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then ``PRIVBOT_<NAME>`` variables."""
    env = os.environ if environ is None else environ
    config_file = config_file or env.get("PRIVBOT_CONFIG") or None
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings)}
    if config_file:
        path = Path(config_file)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = value
    for name in known:
        var = f"PRIVBOT_{name.upper()}"
        if var in env:
            values[name] = env[var]
    settings = Settings()
    for name, value in values.items():
        setattr(settings, name, _coerce(f"PRIVBOT_{name.upper()}", known[name].type, value))
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    try:
        validate_email(s.privacy_address, check_deliverability=False, test_environment=True)
    except EmailNotValidError:
        # "privacy@localhost" has no dot; accept any local@host with one @ and no spaces.
        local, at, host = s.privacy_address.partition("@")
        if not (local and at and host) or any(c.isspace() for c in s.privacy_address):
            raise ConfigError(f"PRIVBOT_PRIVACY_ADDRESS: not an email address: {s.privacy_address!r}") from None
    s.privacy_address = s.privacy_address.strip().lower()
    for name in ("smtp_endpoint", "web_endpoint", "relay_endpoint"):
        getattr(s, name)  # raises ConfigError on a malformed HOST:PORT
    # (a templates folder of the officer's own without staff templates is not refused
    # here: it only matters once a staff mail is written)
    staff_languages = sorted(p.stem for p in (s.templates_dir / "staff_reminder").glob("*.txt"))
    if staff_languages and s.staff_language not in staff_languages:
        raise ConfigError(
            f"PRIVBOT_STAFF_LANGUAGE: the staff templates are written in {', '.join(staff_languages)}, got {s.staff_language!r}"
        )
    if s.deadline_days < 1 or s.deadline_days > 366:
        raise ConfigError(f"PRIVBOT_DEADLINE_DAYS: must be between 1 and 366, got {s.deadline_days}")
    if s.verification_code_hours < 1 or s.verification_max_attempts < 1:
        raise ConfigError("PRIVBOT_VERIFICATION_CODE_HOURS and _MAX_ATTEMPTS: must be at least 1")
    if s.accounts_sql_url and ":email" not in s.accounts_sql_query:
        raise ConfigError("PRIVBOT_ACCOUNTS_SQL_QUERY: required with PRIVBOT_ACCOUNTS_SQL_URL, and must use the :email parameter")
    if s.verify_policy:
        from privbot.verify import parse_policy  # late: verify imports the store

        parse_policy(s.verify_policy)  # raises ConfigError naming the bad entry
    if s.smtp_max_size < 1024:
        raise ConfigError(f"PRIVBOT_SMTP_MAX_SIZE: too small: {s.smtp_max_size}")
    if s.imap_ssl not in ("tls", "starttls", "plain"):
        raise ConfigError(f"PRIVBOT_IMAP_SSL: expected tls, starttls or plain, got {s.imap_ssl!r}")
    if s.imap_host and not s.imap_user:
        raise ConfigError("PRIVBOT_IMAP_USER: required when PRIVBOT_IMAP_HOST is set")
    if s.imap_lease_seconds < 3:
        raise ConfigError(f"PRIVBOT_IMAP_LEASE_SECONDS: must be at least 3, got {s.imap_lease_seconds:g}")
    if s.imap_batch < 1 or s.imap_idle_seconds <= 0 or s.imap_poll_seconds <= 0:
        raise ConfigError("PRIVBOT_IMAP_BATCH, _IDLE_SECONDS and _POLL_SECONDS: must be positive")
    if s.imap_ca_file and not Path(s.imap_ca_file).is_file():
        raise ConfigError(f"PRIVBOT_IMAP_CA_FILE: no such file: {s.imap_ca_file}")
    if not s.imap_port:
        s.imap_port = 993 if s.imap_ssl == "tls" else 143
    from privbot.deadlines import parse_holidays, parse_reminder_days  # late: deadlines imports config

    # each raises ConfigError naming the bad entry
    parse_reminder_days(s.reminder_days)
    parse_holidays(s.holidays)
    if s.retention_days < 0 or s.sweep_interval < 0:
        raise ConfigError("PRIVBOT_RETENTION_DAYS and PRIVBOT_SWEEP_INTERVAL: must not be negative")
    if s.legal_clock not in ("default", "gdpr", "uk", "ccpa", "pdpa"):
        raise ConfigError(f"PRIVBOT_LEGAL_CLOCK: expected default, gdpr, uk, ccpa or pdpa, got {s.legal_clock!r}")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"PRIVBOT_LOG_FORMAT: expected text or json, got {s.log_format!r}")
    if s.telegram_lease_seconds < 3 * max(s.telegram_poll_timeout, 1):
        raise ConfigError(
            f"PRIVBOT_TELEGRAM_LEASE_SECONDS: must be at least three poll timeouts ({3 * max(s.telegram_poll_timeout, 1):g}), "
            f"got {s.telegram_lease_seconds:g}"
        )
    if s.telegram_flood_per_minute < 1:
        raise ConfigError(f"PRIVBOT_TELEGRAM_FLOOD_PER_MINUTE: must be at least 1, got {s.telegram_flood_per_minute}")
    if s.telegram_webhook_url:
        _host_port("telegram_webhook_listen", s.telegram_webhook_listen)
        if not s.telegram_webhook_url.startswith("https://"):
            raise ConfigError(f"PRIVBOT_TELEGRAM_WEBHOOK_URL: Telegram only posts to https URLs, got {s.telegram_webhook_url!r}")
    if not 0.0 <= s.clarify_below <= 1.0:
        raise ConfigError(f"PRIVBOT_CLARIFY_BELOW: must be between 0 and 1, got {s.clarify_below}")
