"""Reviewing staff corrections: `privbot learned` lists them, `accept` folds one into
`intents/` (masked), `reject` drops it; the officer's files keep their comments and
layout, and nothing is lost when a file cannot be edited safely."""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from privbot import cli, learned
from privbot.app import Services, build_services
from privbot.classify.intents import IntentFileError, add_example, load_intents
from privbot.domain import Channel, Classification, Inbound, Intent
from privbot.intake import intake
from privbot.store.models import AuditEntry, Ticket
from privbot.web import actions
from tests.conftest import make_settings

INTENTS = Path(__file__).resolve().parents[1] / "intents"


@pytest.fixture
def services(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """A deployment with its own copy of intents/ (the officer's files), reachable by the CLI too."""
    shutil.copytree(INTENTS, tmp_path / "intents")
    settings = make_settings(tmp_path / "var", sqlite_url, intents_dir=tmp_path / "intents")
    for name, value in {"DATA_DIR": tmp_path / "var", "DATABASE_URL": sqlite_url, "INTENTS_DIR": tmp_path / "intents",
                        "PRIVACY_ADDRESS": "privacy@example.com"}.items():
        monkeypatch.setenv(f"PRIVBOT_{name}", str(value))
    svc = build_services(settings)
    svc.db.migrate()
    yield svc
    svc.db.dispose()


def corrected(services: Services, body: str, *, was: str, now: list[str], sender: str = "alice@example.org") -> str:
    """A ticket the classifier got wrong, reclassified by staff in the console."""
    c = Classification(Intent(was), (Intent(was),), 0.9, "en", ())
    ref = intake(services, Inbound(channel=Channel.EMAIL, sender=sender, text=body, subject="Hello",
                                   message_id=f"<{abs(hash(body))}@example.org>"), classification=c).ticket_ref
    assert ref
    with services.db.transaction() as s:
        t = s.scalar(select(Ticket).where(Ticket.id == int(ref.split("-")[1])))
        actions.reclassify(s, services.settings, t, now, "agent@corp.example")
    return ref


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def waiting_ids(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, _ = run(capsys, "learned", "--json")
    assert code == 0
    return [json.loads(line)["id"] for line in out.splitlines()]


def examples(services: Services, intent: str, lang: str = "en") -> list[str]:
    data = tomllib.loads((Path(services.settings.intents_dir) / f"{intent}.toml").read_text(encoding="utf-8"))
    return list(data["examples"].get(lang, []))


def audit_actions(services: Services) -> list[AuditEntry]:
    with services.db.transaction() as s:
        rows = list(s.scalars(select(AuditEntry).where(AuditEntry.action.like("learned_example_%")).order_by(AuditEntry.id)))
        s.expunge_all()
        return rows


def test_a_staff_correction_waits_for_review_and_once_accepted_is_an_example_of_its_right(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "I'm moving abroad; no more promo texts to +44 7700 900123 or mail to jo.bloggs@example.net please. PRIV-000042"
    ref = corrected(services, body, was="deletion", now=["withdrawal"])
    code, out, _ = run(capsys, "learned")
    assert code == 0 and ref in out and "withdrawal" in out and "1 waiting" in out
    [example_id] = waiting_ids(capsys)
    before = (Path(services.settings.intents_dir) / "withdrawal.toml").read_text(encoding="utf-8")

    code, out, _ = run(capsys, "learned", "accept", example_id, "--as", "officer@corp.example")

    assert code == 0 and "withdrawal.toml" in out
    added = examples(services, "withdrawal")[-1]
    # The requester's address, number and reference do not go into intents/ ...
    assert added == "I'm moving abroad; no more promo texts to +00 0000 000000 or mail to name@example.com please. PRIV-000000"
    # ... and only that one line is new: the officer's comments and layout stay.
    after = (Path(services.settings.intents_dir) / "withdrawal.toml").read_text(encoding="utf-8")
    assert after.replace(f"  {json.dumps(added, ensure_ascii=False)},\n", "", 1) == before
    assert added in next(s for s in load_intents(Path(services.settings.intents_dir)) if s.intent == Intent.WITHDRAWAL).examples["en"]
    assert waiting_ids(capsys) == []
    [entry] = audit_actions(services)
    assert entry.action == "learned_example_accepted" and entry.actor == "officer@corp.example"
    assert entry.detail == {"ticket": ref, "intent": "withdrawal", "lang": "en"}  # who and what, never the words


def test_the_officer_may_give_the_words_to_add_instead_of_the_requesters(services: Services, capsys: pytest.CaptureFixture[str]) -> None:
    corrected(services, "Hi, this is Margaret Ellis from Leeds, shut the whole thing down for me", was="other", now=["cancellation"])
    [example_id] = waiting_ids(capsys)
    code, _, _ = run(capsys, "learned", "accept", example_id, "--as", "officer@corp.example", "--text", "shut the whole thing down for me")
    assert code == 0
    assert examples(services, "cancellation")[-1] == "shut the whole thing down for me"
    assert not any("Margaret" in e for e in examples(services, "cancellation"))


def test_a_rejected_correction_leaves_the_queue_and_intents_untouched(services: Services, capsys: pytest.CaptureFixture[str]) -> None:
    corrected(services, "what's the weather like", was="access", now=["other"])
    kept = corrected(services, "please stop the newsletter", was="other", now=["withdrawal"], sender="bob@example.org")
    first, second = waiting_ids(capsys)
    files = {p.name: p.read_bytes() for p in Path(services.settings.intents_dir).glob("*.toml")}

    code, out, _ = run(capsys, "learned", "reject", first, "--as", "officer@corp.example")

    assert code == 0 and "dropped" in out
    assert waiting_ids(capsys) == [second]
    assert json.loads(learned.examples_path(services.settings).read_text().splitlines()[0])["ticket"] == kept
    assert {p.name: p.read_bytes() for p in Path(services.settings.intents_dir).glob("*.toml")} == files
    assert [e.action for e in audit_actions(services)] == ["learned_example_rejected"]


def test_an_unknown_id_or_a_missing_reviewer_is_a_one_line_error_and_changes_nothing(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    corrected(services, "please stop the newsletter", was="other", now=["withdrawal"])
    queue = learned.examples_path(services.settings).read_bytes()
    code, _, err = run(capsys, "learned", "accept", "0123456789", "--as", "officer@corp.example")
    assert code == 2 and "no correction '0123456789' is waiting" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "learned", "accept", waiting_ids(capsys)[0])
    assert code == 2 and "--as" in err
    assert learned.examples_path(services.settings).read_bytes() == queue and audit_actions(services) == []


def test_a_file_laid_out_otherwise_is_not_edited_and_the_correction_stays_queued(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(services.settings.intents_dir) / "withdrawal.toml"
    # An officer who keeps the list on one line: privbot will not rewrite their file.
    path.write_text('intent = "withdrawal"\n[examples]\nen = ["stop the newsletter", "no more promos"]\n', encoding="utf-8")
    corrected(services, "quit emailing me deals", was="other", now=["withdrawal"])
    [example_id] = waiting_ids(capsys)
    code, _, err = run(capsys, "learned", "accept", example_id, "--as", "officer@corp.example")
    assert code == 2 and "add the example by hand" in err
    assert path.read_text(encoding="utf-8").endswith('en = ["stop the newsletter", "no more promos"]\n')
    assert waiting_ids(capsys) == [example_id]


def test_a_language_without_examples_gets_its_own_list_and_a_repeat_is_not_added_twice(tmp_path: Path) -> None:
    path = tmp_path / "deletion.toml"
    shutil.copy(INTENTS / "deletion.toml", path)
    assert add_example(path, "it", 'Cancellate i miei dati, per favore: "tutti"') is True
    assert add_example(path, "it", 'Cancellate i miei dati, per favore: "tutti"') is False
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert data["examples"]["it"] == ['Cancellate i miei dati, per favore: "tutti"']
    assert data["examples"]["en"] == tomllib.loads((INTENTS / "deletion.toml").read_text(encoding="utf-8"))["examples"]["en"]
    with pytest.raises(IntentFileError):
        add_example(path, "en; rm", "x")
