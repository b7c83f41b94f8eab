"""Separate what a person just wrote from what they quoted or signed.

Only the new text decides a message's intent: an earlier request quoted under a
reply, a signature, or a legal disclaimer must not.  The full text is always stored.
"""

from __future__ import annotations

import re

_QUOTE_HEADER = re.compile(
    r"^(On .+wrote:|-+ ?Original Message ?-+|From: .+|Le .+a écrit ?:|Am .+schrieb .+:|El .+escribió:|Em .+escreveu:)\s*$",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"^(-- ?|__+|Sent from my .+)$")


def split_new_text(text: str) -> tuple[str, str]:
    """Return ``(new_text, rest)``: the person's own words, and quotes/signature."""
    lines = (text or "").replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">") or _QUOTE_HEADER.match(stripped) or _SIGNATURE.match(line.rstrip()):
            return "\n".join(lines[:i]).strip(), "\n".join(lines[i:]).strip()
    return "\n".join(lines).strip(), ""


def new_text(text: str) -> str:
    return split_new_text(text)[0]
