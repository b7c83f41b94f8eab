"""Literal "anchors" of a cue pattern: cheap proof that a regular expression cannot match.

Why this exists: the cue patterns in ``intents/*.toml`` are written for people to read
("(close|cancel|…)\\W+(?:\\w+\\W+){0,3}(account|…)"), and scanning every message with
every one of them cost about a third of a millisecond per message, although a typical
message matches only two or three.  Python's ``re`` has no multi-pattern automaton, but
most cues need one of a few literal words somewhere in any match ("close", "cancel", …).
:func:`anchors` works those words out from the parsed pattern; a plain substring test
(``in``, which runs in C) for them on the case-folded text rules a cue out before its
regex runs.  It is only a prefilter: when an anchor is present the real pattern decides,
so behaviour is unchanged; a pattern with no usable anchor is simply always run.
"""

from __future__ import annotations

import re
from itertools import product

try:  # Python 3.11+
    from re import _constants as _c
    from re import _parser as _p
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

__all__ = ["anchors", "may_match"]

_MAX_SET = 8  # a literal alternative set larger than this is not worth expanding


def anchors(pattern: str | re.Pattern[str]) -> tuple[str, ...] | None:
    """Case-folded strings, one of which occurs in every match of ``pattern``; None if unknown.

    Derived from the parse tree: literal runs (with small alternations such as
    ``(mon|le|notre) compte`` expanded), branches (one anchor per alternative), and
    repeats that must occur at least once.  Anything not understood contributes no
    requirement, so the answer errs on the side of "might match".
    """
    src = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    flags = pattern.flags if isinstance(pattern, re.Pattern) else 0
    try:
        tree = _p.parse(src, flags)
    except re.error:
        return None
    need = _need_seq(list(tree))
    if not need or any(not s for s in need):
        return None
    folded = sorted({s.casefold() for s in need}, key=len)
    # An anchor that contains a shorter one adds nothing ("article" once "art" is there).
    kept: list[str] = []
    for s in folded:
        if not any(k in s for k in kept):
            kept.append(s)
    return tuple(kept)


def may_match(anchor_set: tuple[str, ...] | None, folded_text: str) -> bool:
    """False only when no anchor occurs in ``folded_text`` (``text.casefold()``)."""
    if anchor_set is None:
        return True
    for a in anchor_set:
        if a in folded_text:
            return True
    return False


# ----------------------------------------------------------------------------- internals


def _exact_elem(op, av) -> set[str] | None:
    """Every string this element can match, if that is a small finite set."""
    if op is _c.LITERAL:
        return {chr(av)}
    if op is _c.AT:
        return {""}  # zero-width (\b, ^, $)
    if op is _c.IN:
        chars: set[str] = set()
        for iop, iav in av:
            if iop is not _c.LITERAL:
                return None  # negation, ranges, categories: not a small literal set
            chars.add(chr(iav))
        return chars
    if op is _c.SUBPATTERN:
        return _exact_seq(list(av[-1]))
    if op is _c.BRANCH:
        out: set[str] = set()
        for alt in av[1]:
            e = _exact_seq(list(alt))
            if e is None:
                return None
            out |= e
        return out if len(out) <= _MAX_SET else None
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT) and av[1] <= 1:  # optional: (the )?
        e = _exact_seq(list(av[2]))
        if e is None:
            return None
        return (e | {""}) if av[0] == 0 else e
    return None


def _exact_seq(items: list) -> set[str] | None:
    cur = {""}
    for op, av in items:
        e = _exact_elem(op, av)
        if e is None:
            return None
        cur = {a + b for a, b in product(cur, e)}
        if len(cur) > _MAX_SET:
            return None
    return cur


def _need_elem(op, av) -> set[str] | None:
    """Strings one of which every match of this element contains (None: no requirement)."""
    e = _exact_elem(op, av)
    if e is not None:
        return e if "" not in e else None
    if op is _c.SUBPATTERN:
        return _need_seq(list(av[-1]))
    if op is _c.BRANCH:
        out: set[str] = set()
        for alt in av[1]:
            n = _need_seq(list(alt))
            if not n:
                return None  # one alternative needs nothing: the branch needs nothing
            out |= n
        return out
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)) and av[0] >= 1:
        return _need_seq(list(av[2]))
    if op is getattr(_c, "ATOMIC_GROUP", None):
        return _need_seq(list(av))
    return None


def _best(cands: list[set[str]]) -> set[str] | None:
    """The cheapest selective requirement: anchors of 4+ characters (2+ for CJK), then fewest."""
    cands = [c for c in cands if c and "" not in c]
    if not cands:
        return None
    return max(cands, key=lambda c: (min(_weight(s) for s in c), -len(c)))


#: words in most messages privbot reads: as an anchor alone they would let the cue's
#: regex run on nearly every message, so a longer or rarer requirement is preferred
_COMMON = frozenset({"account", "data", "information", "info", "email", "address", "have", "keep", "please",
                     "want", "like", "need", "all", "my", "the", "me", "you", "your", "and", "to", "of"})


def _weight(s: str) -> int:
    """How selective an anchor is, capped: a CJK character says as much as two Latin ones;
    a word nearly every message holds says next to nothing."""
    if s.strip().casefold() in _COMMON:
        return 1
    return min(5, sum(2 if ord(ch) > 0x2E80 else 1 for ch in s))


def _need_seq(items: list) -> set[str] | None:
    cands: list[set[str]] = []
    cur = {""}  # product of the current run of exactly-known elements
    for op, av in items:
        e = _exact_elem(op, av)
        if e is not None and op is not _c.AT:
            nxt = {a + b for a, b in product(cur, e)}
            if len(nxt) <= _MAX_SET:
                cur = nxt
                continue
            cands.append(cur)
            cur = e
            continue
        if op is _c.AT:
            # \b, ^, $ consume nothing; keep the run going (the literals stay adjacent).
            continue
        cands.append(cur)
        cur = {""}
        n = _need_elem(op, av)
        if n:
            cands.append(n)
    cands.append(cur)
    return _best(cands)
