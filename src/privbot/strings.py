"""Short texts shown to requesters outside a mail: the Telegram bot's words and the page
a confirmation link opens.

Each kind is a folder under ``templates/`` with one ``<lang>.toml`` per language, data
a privacy officer can edit like the mail templates beside it.  English fills any key a
translation lacks, so a half-translated file still shows every line.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

FALLBACK = "en"


@lru_cache(maxsize=64)
def load(templates_dir: Path, kind: str, lang: str) -> dict[str, Any]:
    """``templates/<kind>/<lang>.toml`` over ``templates/<kind>/en.toml``, tables merged key by key."""

    def read(code: str) -> dict[str, Any]:
        path = templates_dir / kind / f"{code}.toml"
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    merged = read(FALLBACK)
    if lang != FALLBACK:
        for key, value in read(lang).items():
            if isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def available(templates_dir: Path, kind: str) -> list[str]:
    return sorted(p.stem for p in (templates_dir / kind).glob("*.toml"))


def pick(templates_dir: Path, kind: str, *candidates: str | None) -> str:
    """The first candidate written for ``kind``: ``zh-hans`` and ``zh-CN`` count as ``zh``."""
    have = set(available(templates_dir, kind))
    for c in candidates:
        code = (c or "").strip().lower().replace("_", "-").split("-")[0]
        if code in have:
            return code
    return FALLBACK


def accepted(header: str | None) -> list[str]:
    """The languages of an ``Accept-Language`` header, most wanted first."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((header or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and tag != "*" and q > 0:
            ranked.append((-q, i, tag))
    return [tag for _, _, tag in sorted(ranked)]
