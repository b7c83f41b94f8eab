"""Operations: /healthz and /metrics as an orchestrator and Prometheus see them, and logs
that an operator may ship anywhere because they carry no bodies, codes or addresses."""

from __future__ import annotations

import io
import json
import logging
import smtplib
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import IntegrityError
from starlette.testclient import TestClient

from privbot import clock, outbox
from privbot.app import Services, build_services
from privbot.domain import OPEN_STATUSES
from privbot.intake import receive_email
from privbot.logs import JSONFormatter, install_redaction, setup_logging
from privbot.scheduler import transports_for
from privbot.store.db import Database
from privbot.store.models import Staff
from privbot.web.ops import ops_app
from tests.support import make_mail, send


def scrape(services: Services) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with TestClient(ops_app(services)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_healthz_is_ok_while_the_database_answers(services: Services) -> None:
    with TestClient(ops_app(services)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_unreachable(services: Services) -> None:
    services.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    with TestClient(ops_app(services)) as client:
        health = client.get("/healthz")
        metrics = client.get("/metrics")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert "nobody" not in health.text  # no connection details to an unauthenticated caller
    assert metrics.status_code == 503


def test_metrics_show_messages_tickets_backlog_and_nearest_deadline(services: Services, frozen_clock: object) -> None:
    before = scrape(services)
    assert before[("privbot_outbox_backlog", ())] == 0
    assert ("privbot_next_deadline_seconds", ()) not in before  # no open ticket, no invented deadline

    receive_email(services, make_mail("Please delete all the personal information you hold about me.").as_bytes())
    receive_email(services, make_mail("I would like a copy of all the data you hold about me.", sender="bob@example.org").as_bytes())
    receive_email(services, make_mail("Where is my invoice?", sender="carol@example.org", subject="Invoice").as_bytes())
    receive_email(services, make_mail("I am out of the office.", sender="dave@example.org", headers={"Auto-Submitted": "auto-replied"}).as_bytes())
    clock.fast_forward(seconds=90)

    m = scrape(services)
    assert m[("privbot_messages_received_total", (("channel", "email"),))] == 4
    assert m[("privbot_messages_received_by_kind_total", (("kind", "auto_reply"),))] == 1
    # The two requests are open (received, or awaiting verification under the default policy).
    assert sum(m[("privbot_tickets", (("status", str(st)),))] for st in OPEN_STATUSES) == 2
    assert m[("privbot_tickets", (("status", "triage"),))] == 1
    assert m[("privbot_tickets", (("status", "closed"),))] == 0
    assert m[("privbot_outbox_backlog", ())] == 2
    assert m[("privbot_outbox_oldest_age_seconds", ())] == pytest.approx(90)
    assert m[("privbot_next_deadline_seconds", ())] == pytest.approx(timedelta(days=30).total_seconds() - 90)
    assert m[("privbot_tickets_overdue", ())] == 0

    outbox.deliver_due(services.db, transports_for(services))
    clock.fast_forward(days=31)
    after = scrape(services)
    assert after[("privbot_outbox_backlog", ())] == 0
    assert after[("privbot_outbox_oldest_age_seconds", ())] == 0
    assert after[("privbot_next_deadline_seconds", ())] < 0
    assert after[("privbot_tickets_overdue", ())] == 2


def test_metrics_say_whether_a_mailbox_is_watched_without_naming_it(services: Services, frozen_clock: object) -> None:
    from privbot import leases

    assert scrape(services)[("privbot_leases_held", (("job", "imap"),))] == 0
    assert leases.claim(services.db, "imap:mail.example.org:993:privacy@example.com:INBOX", "node-a:/var/lib/privbot", 60)
    m = scrape(services)
    assert m[("privbot_leases_held", (("job", "imap"),))] == 1 and m[("privbot_leases_held", (("job", "telegram"),))] == 0
    with TestClient(ops_app(services)) as client:
        assert "privacy@example.com" not in client.get("/metrics").text and "node-a" not in client.get("/metrics").text
    clock.fast_forward(seconds=61)  # its holder died: nobody watches the mailbox now
    assert scrape(services)[("privbot_leases_held", (("job", "imap"),))] == 0


def test_metrics_count_what_other_processes_received(services: Services) -> None:
    # A second privbot process on the same database: its /metrics sees the first's mail.
    other = build_services(services.settings)
    try:
        for i in range(3):
            receive_email(services, make_mail(sender=f"user{i}@example.org").as_bytes())
        m = scrape(other)
        assert m[("privbot_messages_received_total", (("channel", "email"),))] == 3
        assert m[("privbot_outbox_backlog", ())] == 3
    finally:
        other.db.dispose()


def test_metrics_carry_no_address_or_text(services: Services) -> None:
    receive_email(services, make_mail("Please delete my data, my name is Zebulon Quixote.", sender="zebulon@example.org").as_bytes())
    with TestClient(ops_app(services)) as client:
        body = client.get("/metrics").text
    assert "zebulon" not in body.lower() and "quixote" not in body.lower()


# ---------------------------------------------------------------- logs

SECRET_BODY = "My grandmother's maiden name is Wilhelmina Oyelaran-Castellanos"
CODE = "583920"
ADDRESS = "wilhelmina.oyelaran@example.org"


def _assert_clean(text: str) -> None:
    assert "Wilhelmina" not in text
    assert "Oyelaran" not in text.replace("O***", "")
    assert CODE not in text
    assert ADDRESS not in text
    assert "wilhelmina.oyelaran@" not in text


class _ExplodingTransport:
    """A relay that refuses the recipient the way smtplib reports it: address in the error."""

    def send(self, recipient: str, payload: bytes) -> None:
        raise smtplib.SMTPRecipientsRefused({recipient: (550, b"5.1.1 <" + recipient.encode() + b"> unknown user")})


@pytest.fixture
def privbot_logging() -> Iterator[None]:
    """Logging as ``privbot run`` sets it up, undone afterwards for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("DEBUG")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_logs_of_the_whole_pipeline_show_no_body_code_or_full_address(
    services: Services, smtp_port: int, caplog: pytest.LogCaptureFixture, privbot_logging: None
) -> None:
    caplog.set_level(logging.DEBUG)
    body = f"Please delete my data. {SECRET_BODY}. The code you sent me is {CODE}. Write to {ADDRESS}."
    # A request through real SMTP, its acknowledgement through a relay that refuses it ...
    send(smtp_port, make_mail(body, sender=ADDRESS, subject=f"Code {CODE} for {ADDRESS}"), sender=ADDRESS)
    report = outbox.deliver_due(services.db, {"email": _ExplodingTransport()})
    assert report.failed == 1
    # ... mail that cannot be parsed, which goes to the shunt with a warning ...
    send(smtp_port, b"\x00\x01\x02\x03" * 8 + f" {SECRET_BODY} {CODE} {ADDRESS}".encode(), sender=ADDRESS)
    # ... and a pipeline failure whose database error carries the statement's parameters.
    session = services.db.session()
    try:
        session.add_all([Staff(email=ADDRESS, password_hash=CODE, role=SECRET_BODY[:16], created_at=clock.now()) for _ in range(2)])
        session.flush()
    except IntegrityError:
        logging.getLogger("privbot.test").exception("storing staff failed for %s", ADDRESS)
    finally:
        session.rollback()
        session.close()

    messages = [r for r in caplog.records]
    assert any("attempt 1 failed" in r.getMessage() for r in messages)  # the failure is logged ...
    assert any("shunt" in r.getMessage() for r in messages)
    assert any("storing staff failed for w***@example.org" in r.getMessage() for r in messages)  # ... masked
    _assert_clean(caplog.text)
    _assert_clean("\n".join((r.exc_text or "") for r in messages))


def test_json_log_lines_are_objects_with_masked_addresses() -> None:
    install_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("privbot.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("answer to %s failed for PRIV-000042 (code %s)", ADDRESS, CODE)
        try:
            raise ValueError(f"refused {ADDRESS}")
        except ValueError:
            logger.exception("delivery failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["WARNING", "ERROR"]
    assert lines[0]["msg"] == "answer to w***@example.org failed for PRIV-000042 (code ******)"
    assert lines[0]["logger"] == "privbot.test.json" and lines[0]["ts"].endswith("+00:00")
    assert "ValueError: refused w***@example.org" in lines[1]["exc"]
    _assert_clean(stream.getvalue())
