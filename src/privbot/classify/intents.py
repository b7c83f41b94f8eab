"""Read the privacy officer's intent files (``intents/*.toml``) into plain values.

Intents are data, not code: each file holds a description, the policy wording, example
messages grouped by language, and cue patterns.  Editing a file and restarting privbot
changes the classifier's behaviour; :func:`content_key` fingerprints the files so a
trained model can be cached and reused only while they are unchanged.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from privbot.classify.anchors import anchors, may_match
from privbot.domain import Intent


@dataclass(frozen=True)
class Cue:
    """A regular expression that, found in the new text, pushes towards one intent."""

    intent: Intent
    pattern: re.Pattern[str]
    weight: float
    override: bool = False  # decides the intent on its own (bounces, auto-replies)
    field: str = "text"  # "text": new text + subject; "any": also the quoted rest
    #: case-folded literals one of which every match contains (None: always run the regex)
    anchors: tuple[str, ...] | None = None

    def search_in(self, text: str, folded: str):
        """``finditer`` over ``text``, skipped when ``folded`` (its casefold) lacks every anchor."""
        if not may_match(self.anchors, folded):
            return ()
        return self.pattern.finditer(text)

    @property
    def label(self) -> str:
        return f"{self.intent}:{self.pattern.pattern[:40]}"


@dataclass
class IntentSpec:
    intent: Intent
    description: str
    policy_wording: list[str]
    examples: dict[str, list[str]]  # language -> messages
    cues: list[Cue] = field(default_factory=list)


class IntentFileError(ValueError):
    """An intents file is malformed; the message names the file and the problem."""


def intent_files(intents_dir: Path) -> list[Path]:
    """One ``<intent>.toml`` per intent; files starting with ``_`` hold shared rules."""
    return sorted(p for p in intents_dir.glob("*.toml") if not p.name.startswith("_"))


def content_key(intents_dir: Path, salt: str = "") -> str:
    """sha256 of every ``*.toml`` file's name and bytes (plus ``salt``, the code version)."""
    h = hashlib.sha256(salt.encode())
    for p in sorted(intents_dir.glob("*.toml")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def load_intents(intents_dir: Path) -> list[IntentSpec]:
    specs: list[IntentSpec] = []
    files = intent_files(intents_dir)
    if not files:
        raise IntentFileError(f"no intent files (*.toml) in {intents_dir}")
    for path in files:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise IntentFileError(f"{path}: {exc}") from exc
        try:
            intent = Intent(data.get("intent", path.stem))
        except ValueError as exc:
            raise IntentFileError(f"{path}: unknown intent {data.get('intent')!r}") from exc
        examples = {str(lang): [str(x) for x in xs] for lang, xs in (data.get("examples") or {}).items()}
        cues: list[Cue] = []
        for i, c in enumerate(data.get("cues") or []):
            try:
                rx = re.compile(c["pattern"], re.IGNORECASE)
            except (KeyError, re.error) as exc:
                raise IntentFileError(f"{path}: cue #{i + 1}: {exc}") from exc
            cues.append(
                Cue(
                    intent=intent,
                    pattern=rx,
                    weight=float(c.get("weight", 1.0)),
                    override=bool(c.get("override", False)),
                    field=str(c.get("field", "text")),
                    anchors=anchors(rx),
                )
            )
        specs.append(
            IntentSpec(
                intent=intent,
                description=str(data.get("description", "")).strip(),
                policy_wording=[str(x) for x in data.get("policy_wording") or []],
                examples=examples,
                cues=cues,
            )
        )
    return specs
