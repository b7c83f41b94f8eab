"""Reply templates: every language renders, with and without a code, and user text stays text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from privbot.config import Settings
from privbot.replies import Renderer

LANGS = ["en", "zh", "es", "de", "fr", "pt", "ja"]
RENDERER = Renderer(Settings().templates_dir)


def context(**extra: object) -> dict[str, object]:
    return {
        "ref": "PRIV-000042",
        "intent": "deletion",
        "intents": ["deletion", "cancellation"],
        "due_at": datetime(2026, 4, 1, tzinfo=UTC),
        "received_at": datetime(2026, 3, 2, tzinfo=UTC),
        "requester_name": "Ana",
        "privacy_address": "privacy@example.com",
        "channel": "email",
        **extra,
    }


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", ["acknowledgement", "clarification"])
def test_every_language_has_its_own_template_naming_the_reference(kind: str, lang: str) -> None:
    assert lang in RENDERER.languages(kind)
    out = RENDERER.render(kind, lang, **context())
    assert out.language == lang
    assert "PRIV-000042" in out.subject and "PRIV-000042" in out.text
    assert "privacy@example.com" in out.text


@pytest.mark.parametrize("lang", LANGS)
def test_acknowledgement_shows_the_code_only_when_there_is_one(lang: str) -> None:
    with_code = RENDERER.render("acknowledgement", lang, **context(code="482913", code_hours=72)).text
    without = RENDERER.render("acknowledgement", lang, **context()).text
    assert "482913" in with_code and "72" in with_code
    assert "482913" not in without


def test_unknown_language_falls_back_to_english() -> None:
    assert RENDERER.render("acknowledgement", "ko", **context()).language == "en"


def test_requester_text_is_never_evaluated_as_a_template() -> None:
    out = RENDERER.render("acknowledgement", "en", **context(requester_name="{{ 7*7 }}{% for x in [1] %}loop{% endfor %}"))
    assert "{{ 7*7 }}" in out.text and "49" not in out.text and "loop{%" in out.text


def test_a_misspelt_variable_is_an_error_not_a_blank(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "acknowledgement").mkdir()
    (tmp_path / "acknowledgement" / "en.subject").write_text("[{{ ref }}] hi")
    (tmp_path / "acknowledgement" / "en.txt").write_text("due {{ due_att }}")
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        Renderer(tmp_path).render("acknowledgement", "en", **context())


def test_an_officers_edit_and_new_language_take_effect_within_the_recheck_interval(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os
    import time

    from privbot import replies

    folder = tmp_path / "acknowledgement"
    folder.mkdir()
    (folder / "en.subject").write_text("[{{ ref }}] received")
    (folder / "en.txt").write_text("Old wording {{ ref }}")
    renderer = Renderer(tmp_path)
    assert renderer.render("acknowledgement", "de", **context()).text == "Old wording PRIV-000042"

    (folder / "en.txt").write_text("New wording {{ ref }}")
    (folder / "de.subject").write_text("[{{ ref }}] erhalten")
    (folder / "de.txt").write_text("Neu {{ ref }}")
    (folder / "en.html").write_text("<p>{{ ref }}</p>")
    for path in folder.iterdir():  # a later mtime than the first reading, however coarse the file system's
        os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    os.utime(folder, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    # Within the interval the templates already read are used as they were ...
    assert renderer.render("acknowledgement", "en", **context()).text == "Old wording PRIV-000042"
    # ... and once it has passed, the edit, the new language and the new HTML part are there.
    monkeypatch.setattr(replies, "RECHECK_SECONDS", 0.0)
    assert renderer.render("acknowledgement", "en", **context()).text == "New wording PRIV-000042"
    assert renderer.render("acknowledgement", "en", **context()).html == "<p>PRIV-000042</p>"
    german = renderer.render("acknowledgement", "de", **context())
    assert (german.language, german.text) == ("de", "Neu PRIV-000042")


STAFF_DIGEST = {
    "tickets": [
        {"ref": "PRIV-000042", "intent": "deletion", "status": "received", "due_at": datetime(2026, 4, 1, tzinfo=UTC),
         "days_left": 3, "kind": "due-3d", "clock": "gdpr"},
        {"ref": "PRIV-000043", "intent": "access", "status": "awaiting_approval", "due_at": datetime(2026, 3, 20, tzinfo=UTC),
         "days_left": 0, "kind": "overdue", "clock": "gdpr"},
        {"ref": "PRIV-000044", "intent": "access", "status": "received", "due_at": datetime(2026, 3, 16, tzinfo=UTC),
         "days_left": 5, "kind": "confirm-receipt", "clock": "ccpa"},
    ],
    "more": 2, "total": 5, "overdue_total": 1, "console_url": "https://privacy.example.com", "privacy_address": "privacy@example.com",
}


@pytest.mark.parametrize("lang", LANGS)
def test_every_notice_to_staff_is_written_in_every_language(lang: str) -> None:
    # PRIVBOT_STAFF_LANGUAGE picks one of them; none may fall back to English unseen.
    reminder = RENDERER.render("staff_reminder", lang, **STAFF_DIGEST)
    escalation = RENDERER.render("staff_escalation", lang, **STAFF_DIGEST)
    locked = RENDERER.render("staff_verification_locked", lang, **context(attempts=5))
    for out in (reminder, escalation, locked):
        assert out.language == lang
    assert "5" in reminder.subject and "PRIV-000042" in reminder.text and "2026-04-01 00:00 UTC" in reminder.text
    assert "privbot extend REF" in reminder.text and "https://privacy.example.com" in reminder.text
    assert "1" in escalation.subject
    assert "PRIV-000043" in escalation.text and "2026-03-20 00:00 UTC" in escalation.text  # overdue
    assert "PRIV-000044" in escalation.text and "2026-03-16 00:00 UTC" in escalation.text  # receipt to confirm
    assert "PRIV-000042" in locked.text and "privbot show PRIV-000042" in locked.text and "5" in locked.text
    if lang != "en":  # written in the language, not English with a translated heading
        english = RENDERER.render("staff_reminder", "en", **STAFF_DIGEST)
        assert reminder.subject != english.subject and "reach their legal deadline" not in reminder.text
        assert "passed their legal deadline" not in escalation.text and "one-time code" not in locked.text
