"""Read the privacy officer's intent files (``intents/*.toml``) into plain values.

Intents are data, not code: each file holds a description, the policy wording, example
messages grouped by language, and cue patterns.  Editing a file and restarting privbot
changes the classifier's behaviour; :func:`content_key` fingerprints the files so a
trained model can be cached and reused only while they are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from privbot.classify.anchors import anchors
from privbot.domain import Intent
from privbot.files import replace_durably


#: Chinese and Japanese characters (kana, CJK ideographs and their extensions)
_CJK = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


@dataclass(frozen=True)
class Cue:
    """A regular expression that, found in the new text, pushes towards one intent."""

    intent: Intent
    pattern: re.Pattern[str]
    weight: float
    override: bool = False  # decides the intent on its own (bounces, auto-replies)
    field: str = "text"  # "text": new text + subject; "any": also the quoted rest
    #: evidence only for a further request in its own clause, never for the main one:
    #: "and tell me what else you hold" adds access to a request, but a letter is not an
    #: access request because it asks a question somewhere
    second_only: bool = False
    #: case-folded literals one of which every match contains (None: always run the regex)
    anchors: tuple[str, ...] | None = None
    #: the anchors without a Chinese or Japanese character: a text that has none cannot
    #: contain the others, so for such a text (most mail) only these are looked for
    latin_anchors: tuple[str, ...] | None = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        latin = None if self.anchors is None else tuple(a for a in self.anchors if not _CJK.search(a))
        object.__setattr__(self, "latin_anchors", latin)  # frozen: set once, here

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
                    second_only=bool(c.get("second_only", False)),
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


#: ``[examples]``, a language's list opening (``en = [``) and closing (``]``) — the layout
#: every intents file has; :func:`add_example` edits nothing else
_EXAMPLES_TABLE = re.compile(r"\s*\[examples\]\s*(#.*)?")
_TABLE_HEADER = re.compile(r"\s*\[")
_LIST_CLOSE = re.compile(r"\s*\]\s*(#.*)?")


def add_example(path: Path, lang: str, text: str) -> bool:
    """Append ``text`` to the ``[examples]`` list for ``lang`` in the intents file ``path``,
    keeping its comments and layout; ``False`` when it is an example there already.

    The file is the privacy officer's: it is edited as text, one line added (or a new
    language's list at the end of ``[examples]``), and written only if reading it back
    gives exactly what it gave before plus this one example.  A file laid out some other
    way raises :class:`IntentFileError` and is left as it was.
    """
    if not re.fullmatch(r"[a-z]{2,3}", lang):
        raise IntentFileError(f"not a language code: {lang!r}")
    source = path.read_text(encoding="utf-8")
    try:
        before = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise IntentFileError(f"{path}: {exc}") from exc
    examples = before.get("examples") or {}
    if text in examples.get(lang, []):
        return False
    item = json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    header = next((i for i, line in enumerate(lines) if _EXAMPLES_TABLE.fullmatch(line.rstrip("\n"))), None)
    if header is None:
        lines += ["\n", "[examples]\n", f"{lang} = [\n", f"  {item},\n", "]\n"]
    else:
        end = next((i for i in range(header + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines))
        opening = re.compile(rf"\s*{lang}\s*=\s*\[\s*(#.*)?")
        start = next((i for i in range(header + 1, end) if opening.fullmatch(lines[i].rstrip("\n"))), None)
        if start is None:  # a language the file has no list for yet: at the end of [examples]
            at = end
            while at > header + 1 and not lines[at - 1].strip():
                at -= 1
            lines[at:at] = [f"{lang} = [\n", f"  {item},\n", "]\n"]
        else:
            close = next((i for i in range(start + 1, end) if _LIST_CLOSE.fullmatch(lines[i].rstrip("\n"))), None)
            if close is None:
                raise IntentFileError(f"{path}: the {lang} examples do not end with a line holding only ']'; add the example by hand")
            last = next((i for i in range(close - 1, start, -1) if lines[i].strip() and not lines[i].lstrip().startswith("#")), None)
            if last is not None and not lines[last].rstrip().endswith(","):
                lines[last] = lines[last].rstrip("\n").rstrip() + ",\n"
            lines.insert(close, f"  {item},\n")
    edited = "".join(lines)
    expected = {**before, "examples": {**examples, lang: [*examples.get(lang, []), text]}}
    try:
        if tomllib.loads(edited) != expected:
            raise ValueError
    except (tomllib.TOMLDecodeError, ValueError):
        raise IntentFileError(f"{path}: its layout is not the usual one; add the example by hand") from None
    replace_durably(path, edited)  # on disk before the caller takes the correction off its queue
    return True
