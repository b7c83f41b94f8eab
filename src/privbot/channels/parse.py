"""Turn the bytes of one e-mail into an :class:`~privbot.domain.Inbound`.

Why this module exists: people write to a privacy address from every mail client on
earth, in every charset, and some of what arrives is broken (wrong charset labels,
bad base64, lost MIME boundaries) or not written by a person at all (bounces,
out-of-office replies, newsletters).  A privacy request must not be lost because its
bytes were odd, and an auto-reply must never be answered, so both the SMTP intake and
the IMAP watcher go through this one parser.

The contract, in short:

* :func:`parse_email` never raises anything but :class:`UnparseableMessage`, and
  raises that only when the bytes are not mail at all (see its docstring); everything
  else degrades (undecodable bytes become U+FFFD) and still yields an ``Inbound``.
* The sender is the ``From`` address only -- never ``Reply-To`` or the envelope -- so an
  answer reaches only the mailbox that asked.
* ``sender_authenticated`` is conservative: only a trusted ``Authentication-Results``
  header reporting a pass *for the From domain* counts.
* Every string that leaves this module is free of lone surrogates and NUL, so it can be
  stored in SQLite/PostgreSQL and reused in outgoing headers (via
  :func:`clean_header_text`) without a second cleaning.

Only the standard library is used (``email`` with ``policy.default``, ``html.parser``).
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.message
import email.parser
import email.utils
import logging
import quopri
import re
import unicodedata
from collections.abc import Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import HeaderRegistry
from html import unescape as _html_unescape
from html.parser import HTMLParser

from privbot.classify.newtext import split_new_text
from privbot.domain import Channel, Inbound

__all__ = [
    "MAX_TEXT_CHARS",
    "UnparseableMessage",
    "auto_reply_reason",
    "clean_header_text",
    "normalise_address",
    "parse_email",
]

log = logging.getLogger(__name__)

#: Decoded text kept per message (``full_text``).  Privacy requests are short; this
#: bounds memory and database rows when someone mails a novel or a log dump.
MAX_TEXT_CHARS = 200_000
#: MIME parts visited and nesting followed; a hostile message can nest thousands deep.
MAX_PARTS = 200
MAX_DEPTH = 20
#: Length of a cleaned header value (subject, display name).  Long enough for any real
#: subject, short enough to reuse in an outgoing ``Subject:`` with a ``[PRIV-…]`` tag.
MAX_HEADER_CHARS = 255
#: Raw header text looked at when decoding (bounds the regex work on a huge header).
_MAX_HEADER_INPUT = 16_384
#: HTML handed to the HTML parser (the text that comes out is capped again).
_MAX_HTML_CHARS = 2_000_000
#: Thread ids kept from ``References`` (long threads carry hundreds).
_MAX_REFERENCES = 50
_MAX_MSGID_CHARS = 998


class _MemoHeaderFactory:
    """``policy.default``'s header registry, remembering the headers it has parsed.

    Why: the standard library parses a structured header each time it is *read*, and
    reading one message reads ``Content-Type`` about eight times (the feed parser asks
    for the main type, the boundary and the subtype; we ask for the type and the
    charset).  Header objects are immutable, so the same (name, value) can share one;
    and most mail repeats a few values ("text/plain; charset=utf-8") across messages.
    Bounded, so hostile mail cannot grow it without limit.
    """

    MAX_ENTRIES = 2048
    MAX_VALUE_CHARS = 1024  # longer values are parsed afresh (rare, and not worth keeping)

    def __init__(self, registry: HeaderRegistry) -> None:
        self._registry = registry
        self._cache: dict[tuple[str, str], object] = {}

    def __call__(self, name: str, value):  # type: ignore[no-untyped-def]
        if type(value) is not str or len(value) > self.MAX_VALUE_CHARS:
            return self._registry(name, value)
        key = (name, value)
        header = self._cache.get(key)
        if header is None:
            header = self._registry(name, value)
            if len(self._cache) >= self.MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = header
        return header

    def __getitem__(self, name: str) -> type:
        return self._registry[name]  # the policy asks for a header's class (max_count)

    def map_to_type(self, name: str, cls: type) -> None:
        self._cache.clear()
        self._registry.map_to_type(name, cls)


class CachedHeaderRegistry(HeaderRegistry):
    """The standard header registry without its per-call class creation.

    ``HeaderRegistry.__getitem__`` builds a brand-new class (``type(...)``) every time a
    header is read or set -- about 40 µs, more than parsing most headers.  The class it
    builds depends only on the header name, so it is made once per name here.  Also
    used for outgoing mail (:mod:`privbot.channels.mail_out`).
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._classes: dict[str, type] = {}
        super().__init__(*args, **kwargs)

    def map_to_type(self, name, cls):  # type: ignore[no-untyped-def]
        self._classes.clear()
        super().map_to_type(name, cls)

    def __getitem__(self, name):  # type: ignore[no-untyped-def]
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


def fast_header_factory() -> _MemoHeaderFactory:
    """A drop-in ``header_factory`` for an ``EmailPolicy``: same header objects, made cheaply."""
    return _MemoHeaderFactory(CachedHeaderRegistry())


#: ``policy.default`` with the remembering header factory (same parsing, read once).
_POLICY = policy.default.clone(header_factory=fast_header_factory())


class UnparseableMessage(Exception):
    """The bytes cannot be made into an Inbound at all.

    The caller keeps the raw bytes (a shunt) so that a person can look at them and
    re-run them once the parser has been fixed; nothing else is lost.
    """


# --------------------------------------------------------------------------- charsets

# Labels mail software writes, mapped to the Python codecs that decode what those
# programs actually send.  Mail clients decode with the superset of the labelled
# charset (GB2312 -> GB18030, Big5 -> CP950/HKSCS, Shift_JIS -> CP932,
# EUC-KR/ks_c_5601-1987 -> CP949, ISO-8859-1 -> windows-1252), and so do we.  For
# Western single-byte labels UTF-8 is tried first: text wrongly labelled Latin-1 is
# common, and non-ASCII Latin-1 text is almost never valid UTF-8.
_GB = ("gb18030",)
_BIG5 = ("cp950", "big5hkscs")
_SJIS = ("cp932", "shift_jis_2004")
_EUCJP = ("euc_jp", "euc_jis_2004", "cp932")
_ISO2022JP = ("iso2022_jp", "iso2022_jp_2", "iso2022_jp_ext", "iso2022_jp_2004", "iso2022_jp_3")
_KR = ("cp949",)
_WESTERN = ("utf-8", "cp1252", "latin-1")
_UTF8 = ("utf-8",)

_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ["gb2312", "gbk", "x-gbk", "cp936", "ms936", "windows-936", "euc-cn", "euccn", "x-euc-cn",
         "gb_2312-80", "gb_2312", "csgb2312", "chinese", "gb18030", "iso-ir-58", "hz-gb-2312"], _GB),
    **dict.fromkeys(["big5", "cn-big5", "x-x-big5", "csbig5", "cp950", "big-5", "big5-hkscs", "big5hkscs"], _BIG5),
    **dict.fromkeys(
        ["shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "csshiftjis", "windows-31j", "cp932",
         "ms932", "x-ms-cp932"], _SJIS),
    **dict.fromkeys(["euc-jp", "x-euc-jp", "eucjp", "cseucpkdfmtjapanese"], _EUCJP),
    **dict.fromkeys(
        ["iso-2022-jp", "csiso2022jp", "iso-2022-jp-1", "iso-2022-jp-2", "iso-2022-jp-3",
         "iso-2022-jp-2004", "iso-2022-jp-ext", "cp50220", "cp50221", "cp50222"], _ISO2022JP),
    **dict.fromkeys(
        ["euc-kr", "euckr", "cseuckr", "ks_c_5601-1987", "ks_c_5601", "ksc5601", "ksc_5601", "korean",
         "iso-ir-149", "windows-949", "cp949", "uhc", "x-windows-949"], _KR),
    **dict.fromkeys(
        ["iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "cp819", "ibm819",
         "csisolatin1", "iso-ir-100", "us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "cp367",
         "windows-1252", "cp1252", "x-cp1252", "iso-8859-15", "latin-9", "iso8859-15"], _WESTERN),
    **dict.fromkeys(["utf-8", "utf8", "x-utf8", "unicode-1-1-utf-8"], _UTF8),
    "iso-8859-9": ("utf-8", "cp1254", "latin-1"),
    "iso-8859-11": ("cp874",),
    "tis-620": ("cp874",),
    "windows-874": ("cp874",),
}
# Labels that carry no information (the sender did not know either).
_NO_CHARSET = frozenset({"", "unknown-8bit", "x-unknown", "unknown", "default", "x-user-defined",
                         "8bit", "7bit", "binary", "charset", "none"})
# Codecs Python knows that are not how any mail text is encoded; decoding with them
# would turn bytes into something misleading (escape processing, IDNA).
_REFUSED_CODECS = frozenset({"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined",
                             "mbcs", "oem", "palmos", "unicode_internal"})


def _clean_label(label: str | None) -> str:
    if not label:
        return ""
    label = str(label).strip().strip("\"'").strip().lower()
    # RFC 2231 language suffix ("utf-8*en") and stray parameters.
    return label.split("*", 1)[0].split(";", 1)[0].strip()


def _codecs_for(label: str | None) -> tuple[str, ...]:
    """Codecs to try, best first, for a declared charset; () when it tells nothing."""
    name = _clean_label(label)
    if name in _NO_CHARSET:
        return ()
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name]
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return ()
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return ()
    return (info.name,)


def _decode_bytes(data: bytes, label: str | None = None, hint: str | None = None) -> str:
    """Decode ``data``; never raises.  Unknown bytes become U+FFFD."""
    if not data:
        return ""
    candidates = _codecs_for(label)
    if not candidates:
        # No usable label: UTF-8 (today's default everywhere), then the charset the
        # rest of this message declared, then a guess between CJK and Western.
        candidates = ("utf-8", *_codecs_for(hint))
        high = sum(1 for b in data if b >= 0x80)
        if high and high * 4 >= len(data):
            # Dense high bytes: CJK double-byte text is far likelier than Latin-1.
            candidates += ("gb18030", "cp1252")
        else:
            candidates += ("cp1252", "gb18030")
    for codec in candidates:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    try:
        return data.decode(candidates[0], "replace")
    except LookupError:  # pragma: no cover - candidates are all known codecs
        return data.decode("utf-8", "replace")


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _has_surrogates(s: str) -> bool:
    return not s.isascii() and _SURROGATE_RE.search(s) is not None


def _to_bytes(s: str) -> bytes:
    """Undo ``surrogateescape``: the bytes a header or payload string came from."""
    return s.encode("utf-8", "surrogateescape")


def _decode_8bit(s: str, hint: str | None = None) -> str:
    """A raw header holding undeclared 8-bit bytes (RFC 6532 UTF-8, or worse)."""
    if not _has_surrogates(s):
        return s
    try:
        return _decode_bytes(_to_bytes(s), None, hint)
    except UnicodeError:
        return _SURROGATE_RE.sub("\ufffd", s)


# ------------------------------------------------------------------ RFC 2047 headers

# Tolerant: encoders put spaces in Q text and omit padding in B text.
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([QqBb])\?([^?]*?)\?=")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def _b64_lenient(data: bytes) -> bytes:
    """Base64 that survives missing padding, stray characters and joined chunks."""
    out = bytearray()
    # Broken encoders concatenate separately padded chunks; decode chunk by chunk.
    for chunk in re.split(rb"=+", data):
        chunk = re.sub(rb"[^A-Za-z0-9+/]", b"", chunk)
        chunk = chunk[: len(chunk) - (len(chunk) % 4 == 1)]  # a lone 6 bits carry no byte
        if not chunk:
            continue
        try:
            out += binascii.a2b_base64(chunk + b"=" * (-len(chunk) % 4))
        except (binascii.Error, ValueError):
            continue
    return bytes(out)


def _decode_q(text: str) -> bytes:
    data = _to_bytes(text.replace("_", " "))
    return _QP_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _decode_encoded_words(text: str, hint: str | None = None) -> str:
    """Decode RFC 2047 words; adjacent words of one charset are joined as bytes first,
    because encoders split multi-byte characters across words."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_cs: str | None = None

    def flush() -> None:
        nonlocal pending, pending_cs
        if pending_cs is not None:
            out.append(_decode_bytes(bytes(pending), pending_cs, hint))
        pending, pending_cs = bytearray(), None

    pos = 0
    for m in _ENCODED_WORD.finditer(text):
        gap = text[pos : m.start()]
        # Whitespace between two encoded words is not part of the text (RFC 2047 §6.2).
        if gap and not (gap.isspace() and pending_cs is not None):
            flush()
            out.append(gap)
        charset = _clean_label(m.group(1))
        data = _b64_lenient(_to_bytes(m.group(3))) if m.group(2) in "Bb" else _decode_q(m.group(3))
        if pending_cs is not None and charset != pending_cs:
            flush()
        pending_cs = charset
        pending += data
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _unfold(value: str) -> str:
    return _FOLD_RE.sub("", value) if "\n" in value else value


def _scrub(text: str) -> str:
    """Remove what must never be stored: lone surrogates and NUL."""
    if not text.isascii():  # (ASCII text holds no surrogate: the search is skipped)
        text = _SURROGATE_RE.sub("\ufffd", text)
    return text.replace("\x00", "")


def clean_header_text(value: str) -> str:
    """Decoded, single-line, length-capped text, safe to put into an outgoing header.

    RFC 2047 encoded words and raw 8-bit bytes are decoded; CR, LF, every other
    control character, U+2028/U+2029 and the Unicode direction overrides (used to
    disguise names) become spaces; runs of whitespace collapse to one space; the result
    is at most ``MAX_HEADER_CHARS`` characters (cut ones end in "…").  A subject or a
    display name can therefore never inject a second header line into a reply.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    value = value[:_MAX_HEADER_INPUT]
    value = _decode_8bit(_unfold(value))
    value = _decode_encoded_words(value)
    chars = []
    for ch in value:
        cat = unicodedata.category(ch)
        if cat == "Cc" or ch in "\u2028\u2029" or cat == "Cs":
            chars.append(" ")
        else:
            chars.append(ch)
    value = _BIDI_CONTROLS.sub(" ", "".join(chars))
    value = " ".join(value.split())
    if len(value) > MAX_HEADER_CHARS:
        value = value[: MAX_HEADER_CHARS - 1].rstrip() + "…"
    return value


# ----------------------------------------------------------------------- headers

#: While :func:`parse_email` runs: each message part's headers by lower-case name, read
#: once (one message asks for about thirty headers; scanning them all each time cost
#: more than parsing the body).  Scoped to one parse, so a Message changed later by
#: someone else is never read from a stale index.
_HEADER_INDEX: ContextVar[dict[int, tuple[email.message.Message, dict[str, list[str]]]] | None] = ContextVar(
    "privbot_parse_header_index", default=None
)


def _index_headers(msg: email.message.Message) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    try:
        items = msg.raw_items() if hasattr(msg, "raw_items") else msg.items()
        for key, val in items:
            if isinstance(key, str):
                index.setdefault(key.strip().lower(), []).append(_unfold(str(val)))
    except Exception:  # noqa: BLE001 - a header we cannot read is a header we lack
        pass
    return index


def _cached_index(msg: email.message.Message) -> dict[str, list[str]] | None:
    """``msg``'s headers by lower-cased name, built once per parse (None outside one)."""
    cache = _HEADER_INDEX.get()
    if cache is None:
        return None
    entry = cache.get(id(msg))
    if entry is None or entry[0] is not msg:
        entry = (msg, _index_headers(msg))  # holding msg keeps its id from being reused
        cache[id(msg)] = entry
    return entry[1]


def _raw_headers(msg: email.message.Message, name: str) -> list[str]:
    """All raw values of a header, unparsed.

    ``policy.default`` parses a header when it is read, and some malformed values
    make that parsing fail or lose bytes; the raw strings never do.
    """
    lname = name.lower()
    index = _cached_index(msg)
    if index is not None:
        return list(index.get(lname, ()))
    out: list[str] = []
    try:
        items = msg.raw_items() if hasattr(msg, "raw_items") else msg.items()
        for key, val in items:
            if isinstance(key, str) and key.strip().lower() == lname:
                out.append(_unfold(str(val)))
    except Exception:  # noqa: BLE001 - a header we cannot read is a header we lack
        return out
    return out


def _first_header(msg: email.message.Message, name: str) -> str:
    values = _raw_headers(msg, name)
    return values[0].strip() if values else ""


# A Content-Type of a type and plain parameters only: tokens, or quoted strings without
# escapes, and nothing the email package would read differently (comments, RFC 2231
# names, encoded words, line breaks).  Almost every message's is; reading it with one
# regular expression gives what the email package gives (tests/test_parse.py holds the
# two equal) for a tenth of the cost, and the parser asks for it five times a message.
_TOKEN = r"[A-Za-z0-9!#$%&'+.^_`{|}~-]+"
_SIMPLE_CTYPE = re.compile(
    rf'[ \t]*({_TOKEN}/{_TOKEN})[ \t]*((?:;[ \t]*{_TOKEN}[ \t]*=[ \t]*(?:"[^"\\\r\n()]*"|{_TOKEN})[ \t]*)*);?[ \t]*'
)
_SIMPLE_PARAM = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"([^"]*)"|({_TOKEN}))[ \t]*')
_SIMPLE_CT_CACHE: dict[str, tuple[str, dict[str, str]] | None] = {}


def _simple_content_type(part: email.message.Message) -> tuple[str, dict[str, str]] | None:
    """``(type, {parameter: value})`` of a simple Content-Type (see above), else None."""
    values = _raw_headers(part, "content-type")
    if len(values) != 1:  # none (the default depends on the parent) or several: the email package decides
        return None
    value = values[0]
    if value in _SIMPLE_CT_CACHE:
        return _SIMPLE_CT_CACHE[value]
    # 8-bit bytes and encoded words: the email package decodes them, even in quotes
    m = _SIMPLE_CTYPE.fullmatch(value) if value.isascii() and "=?" not in value else None
    found: tuple[str, dict[str, str]] | None = None
    if m is not None:
        params: dict[str, str] = {}
        for piece in m.group(2).split(";")[1:]:
            p = _SIMPLE_PARAM.fullmatch(piece)
            if p is None:  # a quoted value with a ";" in it: left to the email package
                params = {}
                break
            params.setdefault(p.group(1).lower(), p.group(2) if p.group(2) is not None else p.group(3))
        else:
            found = (m.group(1).lower(), params)
    if len(_SIMPLE_CT_CACHE) >= 512:
        _SIMPLE_CT_CACHE.clear()
    _SIMPLE_CT_CACHE[value] = found
    return found


def _content_type(part: email.message.Message) -> str:
    simple = _simple_content_type(part)
    return simple[0] if simple is not None else _content_type_by_email(part)


def _content_type_by_email(part: email.message.Message) -> str:
    try:
        ctype = part.get_content_type()
    except Exception:  # noqa: BLE001
        return "text/plain"
    return (ctype or "text/plain").lower()


_PARAM_RE_CACHE: dict[str, re.Pattern[str]] = {}


def _param(part: email.message.Message, header: str, name: str) -> str:
    """A header parameter (charset, boundary, report-type), tolerant of bad syntax."""
    simple = _simple_content_type(part) if header == "content-type" else None
    if simple is not None and name.lower() in simple[1]:
        return simple[1][name.lower()].strip()
    return _param_by_email(part, header, name)


def _param_by_email(part: email.message.Message, header: str, name: str) -> str:
    try:
        val = part.get_param(name, header=header)
        if isinstance(val, tuple):  # RFC 2231 (charset, language, value)
            val = email.utils.collapse_rfc2231_value(val)
        if val is not None:
            return str(val).strip()
    except Exception:  # noqa: BLE001 - fall through to the regex reading
        pass
    pattern = _PARAM_RE_CACHE.setdefault(
        name, re.compile(r"(?:^|;)\s*" + re.escape(name) + r"\s*=\s*\"?([^\";]*)", re.IGNORECASE)
    )
    m = pattern.search(_first_header(part, header))
    return m.group(1).strip() if m else ""


def _content_disposition(part: email.message.Message) -> str:
    return _first_header(part, "content-disposition").split(";", 1)[0].strip().lower()


def _has_filename(part: email.message.Message) -> bool:
    return bool(_param(part, "content-disposition", "filename") or _param(part, "content-type", "name"))


# --------------------------------------------------------------------- addresses

#: RFC 5322 dot-atom: a local part that needs no quotes (atext, single dots between);
#: the SMTP intake's path reader uses it too
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_DOT_ATOM = re.compile(DOT_ATOM)
_ADDR_BAD_CHARS = re.compile(r"[\s<>(),;:\\\[\]\"\x00-\x1f\x7f]")


def normalise_address(addr: str) -> str:
    """The canonical form of one e-mail address, or ``''`` if it is not one.

    Accepts ``user@example.org``, ``<user@example.org>``, ``mailto:user@example.org`` and
    ``Name <user@example.org>``.  The *whole* address is lowercased (decision: the local
    part is case-sensitive on paper, but no mail provider treats it so, and a requester
    who writes once as ``Ann@`` and once as ``ann@`` is one person).  Nothing else is
    folded: dots and ``+tags`` are kept, because merging them would merge mailboxes
    that may belong to different people.  A trailing dot of the domain is dropped.
    A quoted local part that needs no quotes (``"o'brien"@example.org``) is the same
    mailbox as the bare one (RFC 5321, 4.1.2) and is written bare; one that does need
    them (spaces, ``@``, quotes), several ``@`` and control characters give ``''``.
    """
    if not addr or not isinstance(addr, str):
        return ""
    addr = _scrub(addr).strip()
    if "<" in addr or ">" in addr:
        m = re.search(r"<([^<>]*)>", addr)
        if not m:
            return ""
        addr = m.group(1).strip()
    if addr.lower().startswith("mailto:"):
        addr = addr[7:].split("?", 1)[0].strip()
    if addr.count("@") != 1 or len(addr) > 254:
        return ""
    local, _, domain = addr.partition("@")
    if len(local) > 2 and local[0] == local[-1] == '"' and _DOT_ATOM.fullmatch(local[1:-1]):
        local = local[1:-1]
    domain = domain.rstrip(".")
    if not local or not domain or _ADDR_BAD_CHARS.search(local) or _ADDR_BAD_CHARS.search(domain):
        return ""
    if domain.startswith(".") or ".." in domain or local.startswith(".") or local.endswith("."):
        return ""
    return f"{local}@{domain}".lower()


def _domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].lower().rstrip(".") if "@" in addr else addr.lower().rstrip(".")


@dataclass(frozen=True)
class _From:
    address: str = ""
    name: str = ""
    #: exactly one mailbox, and two independent parsers agree on it
    unambiguous: bool = False


def _parse_from(msg: email.message.Message, hint: str | None) -> _From:
    values = _raw_headers(msg, "from")
    if not values:
        return _From()
    raw = _decode_8bit(values[0], hint)[:_MAX_HEADER_INPUT]
    # Parse the address on the raw (still encoded) form, then decode only the display
    # name: decoding first would let "=?utf-8?q?victim@x?=" turn into an address.
    try:
        pairs = email.utils.getaddresses([raw])
    except Exception:  # noqa: BLE001
        pairs = []
    found = [(name, normalise_address(a)) for name, a in pairs if normalise_address(a)]
    if not found:
        return _From()
    name, address = found[0]
    name = clean_header_text(name)
    if normalise_address(name) == address:
        name = ""
    unambiguous = len(found) == 1 and len(values) == 1 and _from_by_second_parser(values[0]) == address
    return _From(address, name, unambiguous)


# "ann@example.org", "<ann@example.org>", "Ann Example <ann@example.org>": plain atoms and
# a dot-atom address, where the header registry cannot read anything else (checked in
# tests/test_parse.py).  Its full parse costs ~0.1 ms, a third of a simple message.
_PLAIN_FROM = re.compile(
    rf"\s*(?:(?P<bare>{DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    rf"|(?:[A-Za-z0-9]+(?: [A-Za-z0-9]+)* ?)?<(?P<angle>{DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>)\s*"
)


def _from_by_second_parser(raw: str) -> str:
    """The From address by a parser independent of ``getaddresses`` ('' on doubt)."""
    m = _PLAIN_FROM.fullmatch(raw)
    if m:
        return normalise_address(m.group("bare") or m.group("angle"))
    return _from_by_registry(raw)


def _from_by_registry(raw: str) -> str:
    """The From address as ``policy.default``'s header parser reads it ('' on doubt)."""
    try:
        header = _POLICY.header_factory("from", raw)
        addresses = header.addresses  # type: ignore[attr-defined]
        if len(addresses) != 1:
            return ""
        return normalise_address(addresses[0].addr_spec)
    except Exception:  # noqa: BLE001
        return ""


_MSGID_RE = re.compile(r"<[^<>]+>")


def _msgids(value: str) -> list[str]:
    """Message ids in ``value``, in ``<...>`` form, whitespace removed."""
    value = re.sub(r"[\s\x00-\x1f\x7f]+", "", _scrub(value))[:100_000]
    ids = [i for i in _MSGID_RE.findall(value) if len(i) > 2]
    if not ids and value and "<" not in value and ">" not in value:
        ids = [f"<{value}>"]  # a bare id: keep it in the one form threading compares
    return [i[:_MAX_MSGID_CHARS] for i in ids]


_LANG_TAG = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$")


def _language_tag(value: str) -> str:
    """First tag of a Content-Language value, in conventional case (``zh-TW``)."""
    tag = value.split(",", 1)[0].strip()
    if not _LANG_TAG.match(tag):
        return ""
    parts = tag.split("-")
    out = [parts[0].lower()]
    for p in parts[1:]:
        if len(p) == 2 and p.isalpha():
            out.append(p.upper())
        elif len(p) == 4 and p.isalpha():
            out.append(p.title())
        else:
            out.append(p.lower())
    return "-".join(out)


# ------------------------------------------------------------ Authentication-Results

def _strip_comments(value: str) -> str:
    """Remove (nested) RFC 5322 comments, keeping quoted strings intact."""
    out: list[str] = []
    depth = 0
    in_quote = False
    escaped = False
    for ch in value:
        if escaped:
            if depth == 0:
                out.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if in_quote:
            out.append(ch)
            if ch == '"':
                in_quote = False
            continue
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
            if ch == '"':
                in_quote = True
    return "".join(out)


_AR_TOKEN = re.compile(r'([A-Za-z0-9_.\-]+(?:/[0-9]+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s";]+)')


def _split_semicolons(value: str) -> list[str]:
    parts, cur, in_quote = [], [], False
    for ch in value:
        if ch == '"':
            in_quote = not in_quote
        if ch == ";" and not in_quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse_auth_results(value: str) -> tuple[str, list[dict[str, str]]]:
    """``(authserv_id, [ {method, result, ptype.prop: value, ...}, ... ])``."""
    segments = _split_semicolons(_strip_comments(value[:_MAX_HEADER_INPUT]))
    authserv = ""
    first = segments[0].strip()
    if first and not _AR_TOKEN.match(first):
        authserv = first.split()[0].lower()
        segments = segments[1:]
    results: list[dict[str, str]] = []
    for seg in segments:
        tokens = _AR_TOKEN.findall(seg)
        if not tokens:
            continue
        method, result = tokens[0]
        entry = {"method": method.split("/", 1)[0].lower(), "result": result.strip('"').lower()}
        for key, val in tokens[1:]:
            entry.setdefault(key.lower(), val.strip('"').strip())
        results.append(entry)
    return authserv, results


def _auth_passes_for(entry: dict[str, str], from_domain: str) -> bool:
    if entry.get("result") != "pass":
        return False
    method = entry.get("method")
    if method == "dmarc":
        # DMARC is about the From domain by definition, but insist the header says so.
        return _domain_of(entry.get("header.from", "")) == from_domain
    if method == "dkim":
        return from_domain in {_domain_of(entry.get("header.d", "")), _domain_of(entry.get("header.i", ""))}
    if method == "spf":
        return _domain_of(entry.get("smtp.mailfrom", "")) == from_domain
    return False


def _sender_authenticated(
    msg: email.message.Message, sender: _From, trusted_authserv_ids: Collection[str] | None
) -> bool:
    """Whether a trusted Authentication-Results header vouches for the From domain.

    Anyone can write an ``Authentication-Results`` header into their message.  The
    receiving server adds its own on top, so by default only the *topmost* header is
    read; with ``trusted_authserv_ids`` only headers naming one of those servers are
    (RFC 8601 §5).  Matching is exact on the domain: no organisational-domain
    guessing.  An ambiguous From (several mailboxes, parsers disagreeing) never counts.
    """
    if not sender.address or not sender.unambiguous:
        return False
    from_domain = _domain_of(sender.address)
    headers = _raw_headers(msg, "authentication-results")
    if not headers:
        return False
    if trusted_authserv_ids is None:
        chosen = [_parse_auth_results(headers[0])]
    else:
        trusted = {t.strip().lower() for t in trusted_authserv_ids}
        chosen = [ar for ar in map(_parse_auth_results, headers) if ar[0] in trusted]
    return any(_auth_passes_for(entry, from_domain) for _, entries in chosen for entry in entries)


# ------------------------------------------------------------------- auto replies

_OOF_SUBJECT = re.compile(
    r"^\s*(?:\[?auto(?:matic)?[ -]?(?:reply|response|antwort)\]?\s*[:：\]-]"
    r"|auto\s*:"
    r"|autoreply\b"
    r"|out[ -]of[ -](?:the[ -])?office\b"
    r"|abwesenheitsnotiz\b|automatische antwort\b|abwesend\b\s*:"
    r"|自动回复|自動回覆|自动答复|自動応答|自動返信|自動回复"
    r"|r[ée]ponse automatique\b|absence du bureau\b"
    r"|respuesta autom[áa]tica\b|fuera de la oficina\b"
    r"|risposta automatica\b|resposta autom[áa]tica\b"
    r"|automatisch antwoord\b|afwezig\b\s*:"
    r"|automatyczna odpowied[źz]\b"
    r"|автоматический ответ\b|автоответ"
    r"|자동 ?응답|부재"
    r")",
    re.IGNORECASE,
)
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-auto-reply",
                      "x-autoreply-from", "x-mail-autoreply", "x-autogenerated")
_FALSEY = frozenset({"", "no", "false", "0", "none", "off"})


def auto_reply_reason(msg: email.message.EmailMessage) -> str | None:
    """Why ``msg`` looks machine-sent, or ``None`` for a message a person wrote.

    Reasons, checked strongest first:

    * ``"bounce"`` -- a delivery status report (``multipart/report;
      report-type=delivery-status``), ``X-Failed-Recipients``, a ``From`` of
      MAILER-DAEMON/postmaster, or (weaker, checked later) a null ``Return-Path: <>``;
    * ``"read-receipt"`` -- a disposition notification (MDN); ``"report"`` -- any other
      ``multipart/report`` (abuse feedback and the like);
    * ``"out-of-office"`` -- an auto-reply whose subject says it is an absence notice;
    * ``"auto-reply"`` -- ``Auto-Submitted: auto-replied``, ``X-Autoreply`` and friends,
      ``Precedence: auto_reply``, ``X-Auto-Response-Suppress: All/OOF/AutoReply``;
    * ``"auto-submitted"`` -- any other ``Auto-Submitted`` value but ``no`` (RFC 3834);
    * ``"bulk"`` -- ``Precedence: bulk/junk``; ``"list"`` -- ``Precedence: list``,
      ``List-Id`` or ``List-Unsubscribe`` (a newsletter is not a privacy request);
    * ``"out-of-office"`` again, weakest -- an absence subject prefix alone
      ("Automatic reply:", "Out of Office", "Abwesenheitsnotiz", "自动回复", ...).
    """
    try:
        return _auto_reply_reason(msg)
    except Exception:  # noqa: BLE001 - never let a header crash intake; a person decides
        log.warning("auto_reply_reason failed on a message", exc_info=True)
        return None


def _may_name_a_mailer_daemon(value: str) -> bool:
    """False only when no address in this From can have the local part ``mailer-daemon``
    or ``postmaster``: neither word occurs, and nothing (a quoted-pair, a quoted string, a
    comment, an encoded word) could make one appear when the address is parsed.  Parsing
    the address costs 30 µs; this is the common case."""
    folded = value.lower()
    return any(s in folded for s in ("mailer-daemon", "postmaster", "\\", '"', "(", "=?")) or not value.isascii()


def _auto_reply_reason(msg: email.message.Message) -> str | None:
    ctype = _content_type(msg)
    if ctype == "multipart/report":
        report = _param(msg, "content-type", "report-type").lower()
        if report == "delivery-status":
            return "bounce"
        if report == "disposition-notification":
            return "read-receipt"
        return "report"
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        return "bounce"
    if _raw_headers(msg, "x-failed-recipients"):
        return "bounce"
    from_values = _raw_headers(msg, "from")
    if from_values and _may_name_a_mailer_daemon(from_values[0]):
        try:
            pairs = email.utils.getaddresses([_decode_8bit(from_values[0])])
        except Exception:  # noqa: BLE001
            pairs = []
        for _name, addr in pairs:
            local = addr.rpartition("@")[0] if "@" in addr else addr
            if local.strip().lower() in ("mailer-daemon", "postmaster"):
                return "bounce"

    subject = clean_header_text(_first_header(msg, "subject"))
    oof_subject = bool(_OOF_SUBJECT.match(subject))

    def autoreply() -> str:
        return "out-of-office" if oof_subject else "auto-reply"

    auto_submitted = _first_header(msg, "auto-submitted").split(";", 1)[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return autoreply() if auto_submitted == "auto-replied" else "auto-submitted"
    index = _cached_index(msg)
    for name in _AUTOREPLY_HEADERS:
        values = index.get(name, ()) if index is not None else _raw_headers(msg, name)
        if any(v.strip().lower() not in _FALSEY for v in values):
            return autoreply()
    suppress = {t.strip().lower() for v in _raw_headers(msg, "x-auto-response-suppress") for t in v.split(",")}
    if suppress & {"all", "oof", "autoreply"}:
        return autoreply()
    precedence = _first_header(msg, "precedence").strip().lower()
    if precedence in ("auto_reply", "auto-reply"):
        return autoreply()
    if precedence in ("bulk", "junk"):
        return "bulk"
    if precedence == "list" or _first_header(msg, "list-id") or _first_header(msg, "list-unsubscribe"):
        return "list"
    return_path = _raw_headers(msg, "return-path")
    if return_path and re.fullmatch(r"\s*<\s*>\s*", return_path[0]):
        return "bounce"
    if oof_subject:
        return "out-of-office"
    return None


# ------------------------------------------------------------------ HTML to text

_HTML_SKIP = frozenset({"script", "style", "head", "title", "noscript", "template", "svg", "math",
                        "object", "iframe", "select", "canvas", "audio", "video", "xml"})
_HTML_HEAD_ONLY = frozenset({"meta", "link", "title", "style", "script", "base", "noscript", "template"})
_HTML_BLOCK = frozenset({"address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
                         "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
                         "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
                         "table", "tr", "ul", "body", "html", "caption", "thead", "tbody", "tfoot"})
_HTML_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre"})
_WS = re.compile(r"\s+")


class _HTMLText(HTMLParser):
    """Readable text from HTML: what a person would see, blockquotes marked as quotes.

    Quoted blocks get a ``>`` prefix per level so that ``split_new_text`` treats them
    exactly like quotes in plain text.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[int, str]] = []
        self._cur: list[str] = []
        self._cur_depth = 0
        self._skip: list[str] = []
        self._quote = 0
        self._pre = 0
        self._size = 0

    # Lines -------------------------------------------------------------------
    def _flush(self) -> None:
        text = "".join(self._cur).strip()
        if text:
            self.lines.append((self._cur_depth, text))
        self._cur = []

    def _newline(self, blank: bool = False) -> None:
        self._flush()
        if blank and self.lines and self.lines[-1][1]:
            self.lines.append((self._quote, ""))

    def _emit(self, text: str) -> None:
        if self._size > MAX_TEXT_CHARS:
            return
        if not self._cur:
            self._cur_depth = self._quote
        self._cur.append(text)
        self._size += len(text)

    # Parser callbacks ----------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip and self._skip[-1] == "head" and tag not in _HTML_HEAD_ONLY:
            self._skip.pop()  # content without </head>: the browser's implicit body
        if tag == "body":
            self._skip.clear()
        if tag in _HTML_SKIP:
            self._skip.append(tag)
            return
        if self._skip:
            return
        if tag == "br":
            self._newline()
        elif tag in ("td", "th"):
            if self._cur:
                self._emit("  ")
        elif tag in _HTML_BLOCK:
            self._newline(blank=tag in _HTML_PARAGRAPH)
            if tag == "blockquote":
                self._quote += 1
            elif tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._emit("- ")
        elif tag == "img":
            alt = dict(attrs).get("alt") or ""
            if alt.strip():
                self._emit(_WS.sub(" ", alt))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            return  # <script/> opens nothing
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag in self._skip:
                while self._skip and self._skip.pop() != tag:
                    pass
            return
        if tag in _HTML_BLOCK:
            self._newline(blank=tag in _HTML_PARAGRAPH)
            if tag == "blockquote" and self._quote:
                self._quote -= 1
            elif tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._skip or not data:
            return
        if self._pre:
            lines = data.replace("\r\n", "\n").split("\n")
            for i, line in enumerate(lines):
                if i:
                    self._newline()
                if line:
                    self._emit(line)
            return
        text = _WS.sub(" ", data)
        if text == " " and (not self._cur or self._cur[-1].endswith(" ")):
            return
        self._emit(text)

    def text(self) -> str:
        self._flush()
        out: list[str] = []
        for depth, line in self.lines:
            if not line and (not out or not out[-1].strip(">")):
                continue  # no leading or doubled blank lines
            prefix = ">" * depth
            out.append(f"{prefix} {line}" if prefix and line else (prefix or line))
        while out and not out[-1].strip(">"):
            out.pop()
        return "\n".join(out).strip()


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body (stdlib only)."""
    html = html[:_MAX_HTML_CHARS]
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
        return parser.text()
    except Exception:  # noqa: BLE001 - html.parser has raised on odd markup before
        text = re.sub(r"(?is)<(script|style|head)\b.*?(</\1\s*>|$)", " ", html)
        text = re.sub(r"(?i)<br\s*/?>|</p\s*>|</div\s*>", "\n", text)
        text = _html_unescape(re.sub(r"<[^>]*>", " ", text))
        return "\n".join(" ".join(line.split()) for line in text.splitlines()).strip()


# --------------------------------------------------------------------- body text

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _normalise_text(text: str) -> str:
    text = _scrub(text).replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n")
    text = _CONTROL_CHARS.sub("", text)
    return text.lstrip("\ufeff")


def _unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 ``format=flowed`` soft line breaks back into paragraphs."""
    out: list[str] = []
    buf: str | None = None
    buf_depth = 0

    def flush() -> None:
        nonlocal buf
        if buf is not None:
            out.append((">" * buf_depth + " " if buf_depth else "") + buf)
        buf = None

    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        if stripped.startswith(" "):
            stripped = stripped[1:]  # space-stuffing
        if stripped == "-- ":  # the signature separator is never a soft break
            flush()
            out.append((">" * depth + " " if depth else "") + stripped)
            continue
        if buf is not None and depth != buf_depth:
            flush()
        if buf is None:
            buf, buf_depth = "", depth
        soft = stripped.endswith(" ")
        buf += stripped[:-1] if soft and delsp else stripped
        if not soft:
            flush()
    flush()
    return "\n".join(out)


def _payload_bytes(part: email.message.Message) -> bytes:
    """The decoded (transfer-encoding undone) bytes of a leaf part; never raises."""
    payload = part._payload if isinstance(getattr(part, "_payload", None), str) else None  # noqa: SLF001
    if payload is None:
        try:
            got = part.get_payload(decode=True)
        except Exception:  # noqa: BLE001
            return b""
        return got if isinstance(got, bytes) else b""
    data = _to_bytes(payload)
    cte = _first_header(part, "content-transfer-encoding").split(";", 1)[0].strip().strip('"').lower()
    if cte == "base64":
        return _b64_lenient(data)
    if cte == "quoted-printable":
        try:
            return quopri.decodestring(data)
        except Exception:  # noqa: BLE001
            return data
    if cte in ("x-uuencode", "uuencode", "uue", "x-uue"):
        try:
            got = part.get_payload(decode=True)
            return got if isinstance(got, bytes) else data
        except Exception:  # noqa: BLE001
            return data
    return data


@dataclass
class _Walk:
    """State shared while walking one message's MIME tree."""

    parts: int = 0
    chars: int = 0
    charset_hint: str = ""
    language: str = ""
    repaired: bool = False
    texts: list[str] = field(default_factory=list)


def _leaf_text(part: email.message.Message, ctype: str, state: _Walk) -> str:
    data = _payload_bytes(part)[: MAX_TEXT_CHARS * 4]
    charset = _param(part, "content-type", "charset")
    if charset and not state.charset_hint and _codecs_for(charset):
        state.charset_hint = charset
    if not state.language:
        state.language = _language_tag(_first_header(part, "content-language"))
    text = _normalise_text(_decode_bytes(data, charset, state.charset_hint))
    if ctype == "text/html":
        return html_to_text(text)
    if _param(part, "content-type", "format").lower() == "flowed":
        text = _unflow(text, _param(part, "content-type", "delsp").lower() == "yes")
    if ctype in ("text/enriched", "text/richtext"):
        text = re.sub(r"<[^>]*>", "", text)
    return text


_BOUNDARY_LINE = re.compile(rb"^--([^\s\"]{1,200}?)(?:--)?[ \t]*\r?$", re.MULTILINE)


def _repair_multipart(part: email.message.Message, depth: int, state: _Walk) -> str:
    """A multipart whose boundary is missing or wrong: find the boundary the body
    actually uses and parse the body again with it; else read it as plain text."""
    data = _payload_bytes(part)
    if not state.repaired:
        m = _BOUNDARY_LINE.search(data)
        if m:
            state.repaired = True  # one repair per message: no loops on hostile input
            head = b'Content-Type: multipart/mixed; boundary="' + m.group(1) + b'"\r\n\r\n'
            try:
                fixed = email.message_from_bytes(head + data, policy=_POLICY)
            except Exception:  # noqa: BLE001
                fixed = None
            if fixed is not None and fixed.is_multipart():
                text = _part_text(fixed, depth + 1, state)
                if text.strip():
                    return text
    # No usable boundary: show the body, minus lines that are plainly MIME plumbing.
    text = _normalise_text(_decode_bytes(data, _param(part, "content-type", "charset"), state.charset_hint))
    kept = [ln for ln in text.split("\n")
            if not re.match(r"(?i)^(--\S+|content-[a-z-]+:.*|mime-version:.*)\s*$", ln.strip())]
    return "\n".join(kept).strip()


def _forwarded_text(inner: email.message.Message, depth: int, state: _Walk) -> str:
    """An attached or inline message (``message/rfc822``): kept, marked as quoted.

    The separator makes ``split_new_text`` see it as quoted; when the sender wrote
    nothing above it (a plain forward), ``Inbound.text`` falls back to all of it.
    """
    lines = ["-----Original Message-----"]
    for name in ("From", "Date", "Subject"):
        value = clean_header_text(_first_header(inner, name))
        if value:
            lines.append(f"{name}: {value}")
    body = _part_text(inner, depth + 1, state)
    return "\n".join(lines) + ("\n\n" + body if body else "")


def _part_text(part: email.message.Message, depth: int, state: _Walk) -> str:
    """Readable text of ``part`` and what it contains, bounded in parts and depth."""
    if depth > MAX_DEPTH or state.parts >= MAX_PARTS or state.chars >= MAX_TEXT_CHARS:
        return ""
    state.parts += 1
    ctype = _content_type(part)
    disposition = _content_disposition(part)
    payload = getattr(part, "_payload", None)

    if ctype in ("message/rfc822", "message/global"):
        if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
            return _forwarded_text(payload[0], depth, state)
        return ""
    if isinstance(payload, list):
        children = [c for c in payload if isinstance(c, email.message.Message)]
        if ctype == "multipart/alternative":
            return _alternative_text(children, depth, state)
        if ctype == "multipart/related" and children:
            children = children[:1]  # the root; the rest are images and styles
        texts = []
        for child in children:
            text = _part_text(child, depth + 1, state)
            if text.strip():
                texts.append(text.strip())
                state.chars += len(text)
        return "\n\n".join(texts)
    if ctype.startswith("multipart/"):
        return _repair_multipart(part, depth, state)
    if disposition == "attachment" or (depth > 0 and _has_filename(part)):
        return ""  # attachments are kept in raw, never read as the request
    if ctype in ("text/plain", "text/html", "text/enriched", "text/richtext"):
        return _leaf_text(part, ctype, state)
    return ""


def _alternative_text(children: list[email.message.Message], depth: int, state: _Walk) -> str:
    """multipart/alternative: the plain-text version if it says anything, else HTML."""
    def has_type(part: email.message.Message, wanted: str, level: int = 0) -> bool:
        if _content_type(part) == wanted:
            return True
        payload = getattr(part, "_payload", None)
        return level < 3 and isinstance(payload, list) and any(
            isinstance(c, email.message.Message) and has_type(c, wanted, level + 1) for c in payload)

    plain = [c for c in children if has_type(c, "text/plain")]
    others = [c for c in children if c not in plain]
    for child in [*plain, *reversed(others)]:  # richest non-plain version last in the list
        text = _part_text(child, depth + 1, state)
        if text.strip():
            return text
    return ""


# ------------------------------------------------------------------------ parsing

_BINARY_BYTES = frozenset([*range(0, 9), *range(14, 27), *range(28, 32), 127])


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:65536]
    bad = sum(1 for b in sample if b in _BINARY_BYTES)
    return bad * 50 > len(sample)  # more than 2% control bytes: not text


def _parse_bytes(raw: bytes) -> email.message.Message:
    try:
        return email.message_from_bytes(raw, policy=_POLICY)
    except Exception:  # noqa: BLE001 - RecursionError on absurd nesting, or a parser bug
        # Headers only: the body stays one string and is read by the repair path.
        return email.parser.BytesParser(policy=_POLICY).parsebytes(raw, headersonly=True)


def parse_email(
    raw: bytes,
    *,
    channel: Channel = Channel.EMAIL,
    received_at: datetime | None = None,
    trusted_authserv_ids: Collection[str] | None = None,
) -> Inbound:
    """Parse one message into an :class:`Inbound`.

    Raises :class:`UnparseableMessage` only when the bytes are not mail:

    * empty or whitespace only;
    * no ``From`` address *and* either no header at all, control-byte garbage
      (more than 2 % of the first 64 KiB), or no readable text.

    A message with a From address is always parsed, however broken its body.  A
    message with headers and text but no usable From gives ``sender == ''`` (intake
    can route it to staff; it cannot be answered).

    ``received_at`` is passed through (callers give ``clock.now()``); the ``Date``
    header is the sender's claim and is not used.

    ``trusted_authserv_ids``: which ``Authentication-Results`` headers to believe.
    ``None`` (default) believes the topmost one only -- right for a mailbox behind a
    provider that adds its own header on top (IMAP).  An SMTP intake that senders reach
    directly, with no verifying MTA in front, must pass ``()`` (believe none) or the
    authserv-id its own MTA writes, because every such header there is the sender's.
    """
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        raise TypeError(f"parse_email() takes bytes, not {type(raw).__name__}")
    if not raw.strip():
        raise UnparseableMessage("empty message")
    token = _HEADER_INDEX.set({})
    try:
        return _parse(raw, channel, received_at, trusted_authserv_ids)
    except UnparseableMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - the promise: bad mail never escapes as a crash
        log.exception("mail parser failed; message goes to the shunt")
        raise UnparseableMessage(f"parser failed: {type(exc).__name__}: {exc}"[:300]) from exc
    finally:
        _HEADER_INDEX.reset(token)


def _parse(
    raw: bytes, channel: Channel, received_at: datetime | None, trusted_authserv_ids: Collection[str] | None
) -> Inbound:
    msg = _parse_bytes(raw)
    state = _Walk()
    try:
        full_text = _part_text(msg, 0, state)
    except RecursionError:
        full_text = ""
    full_text = re.sub(r"\n{3,}", "\n\n", full_text).strip()[:MAX_TEXT_CHARS]

    hint = state.charset_hint or None
    sender = _parse_from(msg, hint)
    has_headers = bool(_raw_headers_names(msg))
    if not sender.address and (not has_headers or not full_text or _looks_binary(raw)):
        raise UnparseableMessage("not mail: no From address and " + (
            "no headers" if not has_headers else "no readable text" if not full_text else "binary content"))

    try:
        new_text, _rest = split_new_text(full_text)
    except Exception:  # noqa: BLE001 - owned elsewhere; a bug there must not lose mail
        log.warning("split_new_text failed; using the full text", exc_info=True)
        new_text = ""

    subject = clean_header_text(_decode_8bit(_first_header(msg, "subject"), hint))
    message_ids = _msgids(_first_header(msg, "message-id"))
    in_reply_to = _msgids(_first_header(msg, "in-reply-to"))
    references: list[str] = []
    for value in _raw_headers(msg, "references"):
        for mid in _msgids(value):
            if mid not in references:
                references.append(mid)
    if len(references) > _MAX_REFERENCES:
        # The first id is the thread's root, the last ones its recent history.
        references = references[:1] + references[-(_MAX_REFERENCES - 1):]

    language = _language_tag(_first_header(msg, "content-language")) or state.language

    return Inbound(
        channel=channel,
        sender=sender.address,
        sender_name=sender.name,
        subject=subject,
        text=new_text or full_text,
        full_text=full_text,
        message_id=message_ids[0] if message_ids else "",
        in_reply_to=in_reply_to[0] if in_reply_to else "",
        references=tuple(references),
        raw=raw,
        auto_reason=auto_reply_reason(msg),  # type: ignore[arg-type]
        sender_authenticated=_sender_authenticated(msg, sender, trusted_authserv_ids),
        received_at=received_at,
        language_hint=language,
    )


def _raw_headers_names(msg: email.message.Message) -> list[str]:
    try:
        return [k for k, _ in msg.raw_items()] if hasattr(msg, "raw_items") else list(msg.keys())
    except Exception:  # noqa: BLE001
        return []
