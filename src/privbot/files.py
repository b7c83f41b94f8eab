"""Writing a file a person or another step relies on: all of it or none, and on disk.

Used for files that are edited in place and then trusted by a later step — an intents
file a correction was folded into, the queue of corrections it was taken from.  A crash
leaves the old file or the new one, never half of either; the new one is on disk before
the caller goes on to change anything that depends on it.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically, fsynced before it takes its place."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
