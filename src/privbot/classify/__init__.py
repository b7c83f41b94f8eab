"""Intent and language detection, trained from the editable examples in ``intents/``.

This is a placeholder: keyword rules until the trained classifier lands (issue 3).
The public surface is :class:`Classifier` with ``load()`` and ``classify()``.
"""

from __future__ import annotations

import re
from pathlib import Path

from privbot.domain import Classification, Intent

_RULES: list[tuple[Intent, re.Pattern[str]]] = [
    (Intent.WITHDRAWAL, re.compile(r"unsubscribe|withdraw (my )?consent|stop (sending|sharing)|撤回|退订", re.I)),
    (Intent.CANCELLATION, re.compile(r"(close|cancel|deactivate) (my )?account|注销", re.I)),
    (Intent.DELETION, re.compile(r"\b(delete|erase|remove)\b.*\b(data|information|info)\b|删除", re.I)),
    (Intent.CORRECTION, re.compile(r"\b(correct|update|fix|rectify)\b|更正|修改", re.I)),
    (Intent.ACCESS, re.compile(r"\b(copy|access|export)\b.*\b(data|information)\b|查阅|副本", re.I)),
]
_CJK = re.compile(r"[\u4e00-\u9fff]")


class Classifier:
    @classmethod
    def load(cls, intents_dir: Path | None = None, cache_dir: Path | None = None) -> "Classifier":
        return cls()

    def classify(self, text: str, subject: str = "", channel: str = "email") -> Classification:
        blob = f"{subject}\n{text}"
        hits = [intent for intent, rx in _RULES if rx.search(blob)]
        language = "zh" if _CJK.search(blob) else "en"
        if not hits:
            return Classification(Intent.OTHER, (Intent.OTHER,), 0.5, language)
        return Classification(hits[0], tuple(hits), 0.8, language)
