"""Separate what a person just wrote from what they quoted, signed or disclaimed.

Only the new text decides a message's intent: an earlier request quoted under a
reply ("On ... wrote:", "在 ... 写道：", Outlook's "From:/Sent:" block), a mobile
signature ("Sent from my iPhone") or a company's legal disclaimer must not.  The full
text is always stored by the pipeline; this module only decides where the person's
own words end.

The rules are deliberately conservative: a line is treated as the start of quoted
material only when it looks like a mail client's header, not merely when it contains
"From:" somewhere in a sentence.
"""

from __future__ import annotations

import re

from privbot.classify.anchors import anchors, may_match

# "On Wed, 9 Apr 2025 at 15:22, Team <x@y> wrote:" and its translations.  Mail
# clients wrap long headers, so callers also try a line joined with the next one.
_REPLY_HEADER = re.compile(
    r"""^(
        (on|am|le|el|em|il|op)\s.{4,200}(wrote|schrieb|a\s+écrit|escribió|escreveu|ha\s+scritto|schreef)(\s*:?|\s.{0,120}:)
      | .{0,120}(wrote|schrieb|a\s+écrit|escribió|escreveu)\s*:
      | 在\s*.{2,200}写道\s*[:：]?
      | .{2,200}於\s*.{2,200}寫道\s*[:：]?
      | .{2,200}写道\s*[:：]
      | .{0,200}(書きました|より)\s*[:：]
      | \d{4}年\d{1,2}月\d{1,2}日.{0,120}[:：]
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)

#: words one of which every reply header holds ("wrote", "写道", …): a message without
#: any of them is not tried line by line (the pattern's ``.{0,200}`` runs cost 20 µs a
#: message, for nothing in almost every first request)
_REPLY_HEADER_ANCHORS = anchors(_REPLY_HEADER)

# Separator lines that always start quoted / forwarded material.
_SEPARATOR = re.compile(
    r"""^(
        -{2,}\s*(original\s+message|forwarded\s+message|ursprüngliche\s+nachricht|weitergeleitete\s+nachricht
                |mensaje\s+original|mensaje\s+reenviado|message\s+d'origine|message\s+transféré|message\s+original
                |mensagem\s+original|mensagem\s+encaminhada|原始邮件|原始郵件|转发邮件|元のメッセージ|転送メッセージ)\s*-{2,}
      | -{3,}\s*(原始邮件|原始郵件)\s*-{3,}
      | _{10,}
      | begin\s+forwarded\s+message\s*:
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)

# The first line of an Outlook-style header block, confirmed by a second header line.
_HEADER_FROM = re.compile(r"^\*?(from|von|de|da|van|发件人|寄件者|差出人|送信者|expéditeur)\s*\*?\s*[:：]", re.I)
_HEADER_NEXT = re.compile(
    r"^\*?(sent|date|to|subject|cc|gesendet|datum|an|betreff|enviado|fecha|para|asunto|envoyé|à|objet|data|assunto"
    r"|发送时间|日期|收件人|主题|寄件日期|收件者|主旨|送信日時|日時|宛先|件名)\s*\*?\s*[:：]",
    re.I,
)

# Mobile signatures and the conventional "-- " signature separator: the rest is not new.
_SIGNATURE = re.compile(
    r"""^(
        --\s*
      | sent\s+from\s+(my\s+)?\S.{0,40}
      | get\s+outlook\s+for\s+\S+
      | sent\s+via\s+\S.{0,40}
      | von\s+meinem\s+\S+\s+gesendet
      | gesendet\s+von\s+meinem\s+\S+
      | enviado\s+desde\s+mi\s+\S+
      | enviado\s+do\s+meu\s+\S+
      | envoyé\s+de\s+mon\s+\S+
      | 发自我的\S+ | 从我的\S+发送 | 来自我的\S+ | 寄自我的\S+
      | \S*iPhone\s*から送信 | \S+から送信
    )$""",
    re.IGNORECASE | re.VERBOSE,
)

# Legal disclaimers appended by company mail servers.
_DISCLAIMER = re.compile(
    r"""^\W*(
        confidentiality\s+notice | disclaimer\b | legal\s+notice | important\s+notice\s*:
      | this\s+(e-?mail|message|communication)\b.{0,80}(confidential|privileged|intended\s+(only|solely))
      | the\s+information\s+(contained\s+)?in\s+this\s+(e-?mail|message|communication)
      | if\s+you\s+(are\s+not|have\s+received\s+this).{0,40}(intended\s+recipient|in\s+error)
      | this\s+e-?mail\s+and\s+any\s+(files|attachments)
      | diese\s+(e-?mail|nachricht)\s+(enthält|kann)\s+vertrauliche
      | ce\s+(message|courriel|e-?mail)\s+(et\s+(toutes\s+)?les\s+pièces|est\s+confidentiel|peut\s+contenir)
      | este\s+(mensaje|correo)\s+(y\s+sus\s+anexos|es\s+confidencial|puede\s+contener|contiene\s+información)
      | esta\s+mensagem\s+(e\s+seus\s+anexos|é\s+confidencial|pode\s+conter)
      | 本邮件(及其附件)?(含有|包含|可能包含|仅供|为保密)
      | 保密声明 | 免责声明
      | このメール(は|には).{0,20}(機密|秘密) | 本メールは
    )""",
    re.IGNORECASE | re.VERBOSE,
)


def _is_quote(line: str) -> bool:
    return line.lstrip().startswith((">", "|>", "＞"))


def _outlook_header_at(lines: list[str], i: int) -> bool:
    """A "From:" line counts only when a "Sent:/To:/Subject:" line follows closely."""
    if not _HEADER_FROM.match(lines[i].strip()):
        return False
    for nxt in lines[i + 1 : i + 4]:
        if _HEADER_NEXT.match(nxt.strip()):
            return True
    return False


def split_new_text(text: str) -> tuple[str, str]:
    """Return ``(new_text, rest)``: the person's own words, and quotes/signature/disclaimer.

    ``rest`` keeps everything removed (quoted lines, headers and what follows them) in
    order, so nothing is lost.  When a reply is bottom-posted (quote first, answer
    below) the answer is still found, because ``>`` lines are skipped, not cut at.
    """
    lines = (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    headed = may_match(_REPLY_HEADER_ANCHORS, (text or "").casefold())
    keep: list[str] = []
    rest: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        stripped = line.strip()
        if _is_quote(line):
            rest.append(line)
            i += 1
            continue
        is_header = False
        if headed and stripped:
            joined = stripped + " " + lines[i + 1].strip() if i + 1 < n else stripped
            is_header = _REPLY_HEADER.match(stripped) is not None or (
                len(stripped) < 160 and _REPLY_HEADER.match(joined) is not None and not stripped.endswith((".", "。"))
            )
        if is_header:
            # A quote introduced by the header and marked with ">" may be followed by a
            # bottom-posted answer: skip the header and keep scanning.  Otherwise the
            # quoted message is unmarked and everything below it is old text.
            j = i + 1
            if _REPLY_HEADER.match(stripped) is None:
                j += 1  # the header was wrapped over two lines
            while j < n and not lines[j].strip():
                j += 1
            if j < n and _is_quote(lines[j]):
                rest.extend(lines[i:j])
                i = j
                continue
            rest.extend(lines[i:])
            break
        if stripped and (
            _SEPARATOR.match(stripped)
            or _outlook_header_at(lines, i)
            or _SIGNATURE.match(stripped)
            or _DISCLAIMER.match(stripped)
        ):
            rest.extend(lines[i:])
            break
        keep.append(line)
        i += 1
    return "\n".join(keep).strip(), "\n".join(rest).strip()


def new_text(text: str) -> str:
    """Only the person's own words (see :func:`split_new_text`)."""
    return split_new_text(text)[0]


def quoted_words(rest: str) -> str:
    """What the earlier message said, from the quoted part ``split_new_text`` returned:
    quote marks stripped, and without its reply header ("On … wrote:"), separator lines
    and header block (From / Sent / To / Subject), which name people, not requests."""
    out: list[str] = []
    for raw in rest.splitlines():
        line = raw.lstrip("> ").rstrip()
        stripped = line.strip()
        if not stripped or _SEPARATOR.match(stripped) or _HEADER_FROM.match(stripped) or _HEADER_NEXT.match(stripped):
            continue
        if _REPLY_HEADER.match(stripped):
            continue
        out.append(line)
    return "\n".join(out)
