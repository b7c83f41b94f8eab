"""The command line as a new user drives it: `privbot run`, then mail, then `tickets`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.support import free_port, make_mail, outbox_messages, reply_to, send

PRIVBOT = [sys.executable, "-m", "privbot.cli"]


def privbot(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PRIVBOT, *args], env=env, input=input, capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PRIVBOT_")}
    e.update(
        PRIVBOT_DATA_DIR=str(tmp_path / "var"),
        PRIVBOT_PRIVACY_ADDRESS="privacy@example.com",
        PRIVBOT_SMTP_LISTEN=f"127.0.0.1:{free_port()}",
        PRIVBOT_WEB_LISTEN="",
        PRIVBOT_OUTBOX_INTERVAL="0.2",
    )
    return e


def wait_for(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_privbot_run_takes_a_request_by_smtp_and_acknowledges_it(env: dict[str, str], tmp_path: Path) -> None:
    port = int(env["PRIVBOT_SMTP_LISTEN"].rpartition(":")[2])
    proc = subprocess.Popen([*PRIVBOT, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"privbot run exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 60)
        request = make_mail("please delete all the personal information you hold about me")
        sent_at = datetime.now().astimezone()
        send(port, request)
        acks = wait_for(lambda: outbox_messages(tmp_path / "var"))
        out = privbot(env, "tickets", "--json")
        assert out.returncode == 0, out.stderr
        [ticket] = [json.loads(line) for line in out.stdout.splitlines()]
        assert ticket["intent"] == "deletion" and ticket["status"] in ("received", "awaiting_verification")
        assert ticket["ref"].startswith("PRIV-") and len(ticket["ref"]) >= 11
        received = datetime.fromisoformat(ticket["received_at"])
        assert abs((received - sent_at).total_seconds()) < 30
        assert datetime.fromisoformat(ticket["due_at"]) - received == timedelta(days=30)
        [ack] = acks
        assert f"[{ticket['ref']}]" in ack["Subject"]
        assert ack["In-Reply-To"] == request["Message-ID"]

        send(port, request)  # the same message again changes nothing
        send(port, reply_to(ack, "Thanks. My customer number is 4411."))
        ooo = make_mail("I am out of the office.", subject="Automatic reply: Privacy", headers={"Auto-Submitted": "auto-replied"})
        send(port, ooo)
        time.sleep(1.0)
        out = privbot(env, "tickets", "--json")
        assert len(out.stdout.splitlines()) == 1
        assert len(outbox_messages(tmp_path / "var")) == 1
        shown = json.loads(privbot(env, "show", ticket["ref"], "--json").stdout)
        assert [m["kind"] for m in shown["messages"] if m["direction"] == "in"] == ["request", "reply"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""


def test_classify_answers_the_json_lines_contract(env: dict[str, str]) -> None:
    lines = [
        {"id": "a", "channel": "email", "subject": "Close my account", "body": "Please close my account and erase everything you hold on me."},
        {"id": "b", "channel": "chat", "subject": "", "body": "unsubscribe me from your newsletter"},
    ]
    out = privbot(env, "classify", input="\n".join(json.dumps(x) for x in lines) + "\n")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    for r in rows:
        assert set(r) >= {"id", "intent", "intents", "confidence", "language"}
        assert r["intents"][0] == r["intent"]
        assert 0.0 <= r["confidence"] <= 1.0
    assert rows[0]["intent"] in ("cancellation", "deletion")
    assert {"cancellation", "deletion"} <= set(rows[0]["intents"])
    assert rows[1]["intent"] == "withdrawal"


@pytest.mark.parametrize(
    "args, message",
    [
        (["tickets", "--status", "lost"], "unknown status"),
        (["show", "PRIV-999999"], "no ticket PRIV-999999"),
        (["frobnicate"], "invalid choice"),
        (["sweep", "--at", "yesterday"], "--at"),
    ],
)
def test_user_errors_exit_2_with_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    out = privbot(env, *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_configuration_exits_2_naming_it(env: dict[str, str]) -> None:
    out = privbot({**env, "PRIVBOT_DEADLINE_DAYS": "thirty"}, "tickets")
    assert out.returncode == 2 and "PRIVBOT_DEADLINE_DAYS" in out.stderr


def test_classify_rejects_a_line_that_is_not_json(env: dict[str, str]) -> None:
    out = privbot(env, "classify", input='{"id": 1, "body": "hi"}\nnot json\n')
    assert out.returncode == 2 and "line 2" in out.stderr
