from pathlib import Path

import pytest

from privbot.config import ConfigError, load_settings


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "privbot.toml"
    f.write_text('deadline_days = 20\nprivacy_address = "dpo@example.com"\n')
    s = load_settings(f, {"PRIVBOT_DEADLINE_DAYS": "45"})
    assert s.deadline_days == 45
    assert s.privacy_address == "dpo@example.com"


@pytest.mark.parametrize(
    "env, named",
    [
        ({"PRIVBOT_DEADLINE_DAYS": "soon"}, "PRIVBOT_DEADLINE_DAYS"),
        ({"PRIVBOT_SMTP_LISTEN": "localhost"}, "smtp_listen"),
        ({"PRIVBOT_PRIVACY_ADDRESS": "not an address"}, "PRIVBOT_PRIVACY_ADDRESS"),
        ({"PRIVBOT_CHECK_DELIVERABILITY": "maybe"}, "PRIVBOT_CHECK_DELIVERABILITY"),
        ({"PRIVBOT_LEGAL_CLOCK": "mars"}, "PRIVBOT_LEGAL_CLOCK"),
        ({"PRIVBOT_HOLIDAYS": "2026-12-25,25/12/2026"}, "PRIVBOT_HOLIDAYS: '25/12/2026'"),
        ({"PRIVBOT_HOLIDAYS": "2026-02-30"}, "PRIVBOT_HOLIDAYS: '2026-02-30'"),
        ({"PRIVBOT_IMAP_LEASE_SECONDS": "0.5"}, "PRIVBOT_IMAP_LEASE_SECONDS"),
        ({"PRIVBOT_STAFF_LANGUAGE": "german"}, "PRIVBOT_STAFF_LANGUAGE: the staff templates are written in de, en, es, fr, ja, pt, zh, got 'german'"),
    ],
)
def test_bad_value_is_an_error_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(None, env)


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    f = tmp_path / "privbot.toml"
    f.write_text("dedline_days = 20\n")
    with pytest.raises(ConfigError, match="dedline_days"):
        load_settings(f, {})


def test_defaults_run_on_a_bare_machine() -> None:
    s = load_settings(None, {})
    assert s.db_url.startswith("sqlite:///")
    assert s.smtp_endpoint == ("127.0.0.1", 2525)
    assert s.relay_endpoint is None


def test_staff_can_be_written_to_in_their_own_language(tmp_path: Path) -> None:
    assert load_settings(None, {}).staff_language == "en"
    assert load_settings(None, {"PRIVBOT_STAFF_LANGUAGE": "zh"}).staff_language == "zh"
    # an officer's own templates folder without staff templates still starts
    (tmp_path / "acknowledgement").mkdir()
    f = tmp_path / "privbot.toml"
    f.write_text(f'templates_dir = "{tmp_path}"\n')
    assert load_settings(f, {}).templates_dir == tmp_path
