"""Intent and language detection, trained from the editable examples in ``intents/``.

Why it looks like this: messages to a privacy mailbox are short, multilingual (seven
languages, two of them without spaces between words) and full of near-misses
("cancel my subscription" is billing, "close my account" is cancellation, "delete my
data but keep the account" is deletion).  A small linear model over character and word
n-grams, trained at start-up from the privacy officer's examples, handles the
vocabulary; a thin layer of cue patterns (also data, in the same files) handles the
distinctions that must not depend on luck, and names the words that decided, so staff
can see *why* a ticket got its intent.

Pipeline for one message:

1. :func:`newtext.split_new_text` keeps only what the person just wrote;
2. the language is read from the script (kana → ja, Han → zh), from function words
   when they clearly point one way, else by lingua;
3. the model scores the whole new text; cue matches that are not negated
   ("don't close my account") add to their intent's score; override cues
   (bounces, auto-replies) decide "other" on their own;
4. the text is cut into clauses, each scored again, to find secondary requests
   ("close my account **and** erase everything").

The public surface (``Classifier.load``, ``classify``, ``classify_many``,
``default_intents_dir``) is used by the intake pipeline and the CLI.

Cost: intake classifies one message at a time, so per-message work is kept small —
the fitted model runs as plain dictionaries and numpy (:mod:`.linear`, no
scikit-learn at run time), cue regexes run only when their literal words occur
(:mod:`.anchors`), and a message and its clauses are scored in one call.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privbot.classify.anchors import may_match
from privbot.classify.intents import Cue, IntentSpec, content_key, has_cjk, load_intents
from privbot.classify.linear import LinearModel, from_sklearn
from privbot.classify.newtext import quoted_words, split_new_text
from privbot.domain import Classification, Intent

__all__ = ["Classifier", "default_intents_dir", "detect_language"]

log = logging.getLogger(__name__)

#: Bump when features, augmentation or scoring change, so stale caches are not reused.
MODEL_VERSION = "privbot-classify-3"

#: the model's columns: the enum's own order
INTENT_ORDER: tuple[Intent, ...] = tuple(Intent)
LANGUAGES = ("en", "zh", "es", "de", "fr", "pt", "ja")


def default_intents_dir() -> Path:
    """``$PRIVBOT_INTENTS_DIR`` if set, else the repository's (or wheel's) ``intents/``."""
    env = os.environ.get("PRIVBOT_INTENTS_DIR")
    if env:
        return Path(env)
    import privbot

    pkg = Path(privbot.__file__).resolve().parent
    for candidate in (pkg.parents[1] / "intents", pkg / "intents"):
        if candidate.is_dir():
            return candidate
    return pkg.parents[1] / "intents"


# --------------------------------------------------------------------------- language

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
#: at least two, three letters (``[^\W\d_]`` is a letter, ``[\W\d_]`` anything else): the
#: search stops at the last letter it needs instead of listing every letter of the text
_TWO_LETTERS = re.compile(r"[^\W\d_][\W\d_]*[^\W\d_]")
_THREE_LETTERS = re.compile(r"[^\W\d_](?:[\W\d_]*[^\W\d_]){2}")
_detector = None


def _lingua():
    """Build lingua only for the five Latin-script languages privbot serves (fast to load)."""
    global _detector
    if _detector is None:
        from lingua import Language, LanguageDetectorBuilder

        _detector = LanguageDetectorBuilder.from_languages(
            Language.ENGLISH, Language.SPANISH, Language.GERMAN, Language.FRENCH, Language.PORTUGUESE
        ).build()
    return _detector


# Function words that belong to exactly one of the five Latin-script languages (words
# shared by two of them — "de", "la", "que", "por favor", "me", "das", "in", "an" — are
# left out).  Counting them settles most letters at once for a few microseconds;
# lingua (about 0.15 ms a message, and the better judge of short or mixed text) is asked
# only when they do not clearly point one way.  On the examples in intents/ and the dev
# set this decided 592 of 735 texts, all correctly.
_FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("the", "and", "my", "you", "your", "please", "is", "of", "i", "this", "for", "with", "have", "it",
           "that", "we", "are", "not", "can", "would", "from", "thanks", "hi", "hello", "be", "been"),
    "es": ("el", "los", "las", "del", "mis", "con", "gracias", "hola", "quiero", "cuenta", "datos", "mi",
           "usted", "puedo"),
    "de": ("der", "die", "das", "und", "ich", "nicht", "ist", "mein", "meine", "meinen", "meiner", "meines",
           "bitte", "mit", "sie", "ein", "eine", "einen", "zu", "von", "den", "dem", "für", "auf", "sehr",
           "geehrte", "danke", "hallo"),
    "fr": ("je", "vous", "mon", "est", "pas", "pour", "avec", "merci", "bonjour", "votre", "et", "une", "du",
           "dans", "sur", "ce", "qui", "nous", "ma", "mes"),
    "pt": ("não", "eu", "meu", "minha", "meus", "minhas", "obrigado", "obrigada", "olá", "você", "uma", "os",
           "ao", "pelo", "pela", "isso", "gostaria", "também", "conta", "dados"),
}
_WORD_LANG: dict[str, str] = {}
for _lang, _words in _FUNCTION_WORDS.items():
    for _w in _words:
        assert _WORD_LANG.setdefault(_w, _lang) == _lang, f"function word {_w!r} in two languages"
_LATIN_WORDS = re.compile(r"[^\W\d_]+")


def _function_word_guess(sample: str) -> str | None:
    """The language whose function words clearly dominate (2+ and 3x the next), else None."""
    counts: dict[str, int] = {}
    get = _WORD_LANG.get
    for w in _LATIN_WORDS.findall(sample.lower()):
        lang = get(w)
        if lang is not None:
            counts[lang] = counts.get(lang, 0) + 1
    if not counts:
        return None
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    best, n = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0
    return best if n >= 2 and n >= 3 * second else None


def detect_language(text: str) -> str:
    """ISO 639-1 code of ``text``: script first (kana → ja, Han → zh), then lingua."""
    sample = text[:600]
    if _KANA.search(sample):
        return "ja"
    if _HAN.search(sample):
        return "zh"
    if _HANGUL.search(sample):
        return "ko"
    if _THREE_LETTERS.search(sample) is None:
        return "en"  # "👍", "/start", "ok": nothing to go on; English is the default reply language
    guess = _function_word_guess(sample)
    if guess:
        return guess
    lang = _lingua().detect_language_of(sample)
    if lang is None:
        return "en"
    return lang.iso_code_639_1.name.lower()


# --------------------------------------------------------------------------- text prep

_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|vs|fw|fwd|wg|tr|rv|enc|res|r)\s*(\[\d+\])?\s*[:：]\s*|回复[:：]|回覆[:：]|答复[:：]|转发[:：]|返信[:：])+", re.I)
_EMAIL = re.compile(r"\S+@\S+\.\w+")
_URL = re.compile(r"https?://\S+|www\.\S+")
_DIGITS = re.compile(r"\d+")
_SPACES = re.compile(r"[ \t\u3000]+")
# Word-level negation marking: "don't close my account" -> "don't NOT_close NOT_my account".
_NEG_WORDS = re.compile(
    r"\b(don'?t|do not|dont|not|never|no need to|without|rather than|instead of|nicht|kein\w*|ohne|pas|sans|jamais"
    r"|no|sin|não|nao|sem|nunca)\b\s+((?:\w+\s+){0,1}\w+)",
    re.I,
)
_MAX_CHARS = 1500


def _normalise(text: str) -> str:
    text = _URL.sub(" urladdr ", text)
    text = _EMAIL.sub(" mailaddr ", text)
    text = _DIGITS.sub("0", text)
    text = text.lower().replace("’", "'").replace("＇", "'")
    return _SPACES.sub(" ", text).strip()


def _mark_negation(text: str) -> str:
    return _NEG_WORDS.sub(lambda m: m.group(1) + " " + " ".join("not_" + w for w in m.group(2).split()), text)


def _subject_for_model(subject: str) -> str:
    """A reply's subject names the earlier message, not what the person asks now."""
    if not subject or _REPLY_PREFIX.match(subject):
        return ""
    return subject.strip()


#: a follow-up that only chases an earlier, quoted request
_CHASER = re.compile(
    r"\b(nobody|no one|no-one)\b[^.!?\n]{0,20}\b(has |have )?(replied|answered|responded|got back)|\bstill (waiting|no (reply|answer|response))\b"
    r"|\b(haven't|have not|never) (heard back|heard anything|had (a |any )?(reply|answer|response)|received (a |any )?(reply|answer|response))"
    r"|\b(following up|chasing|second request|reminder)\b|\b(message|mail|email|request) below\b|\bsee (my )?(message|mail|email|request )?below\b"
    r"|(没人|没有人|一直没|还没(有)?人?)(回复|回应|处理|答复)|(请|麻烦)?尽快处理|催一下|赶紧处理|趕緊處理|快点处理|(怎么|怎麼)?(还没|還沒)(有)?(注销|註銷|删|刪|改好|退订|退訂|处理好|處理好)[^。！？\n]{0,4}[？?]|再次(来信|提醒|申请)|没有(任何)?(回复|回音|答复|消息)|没人理|石沉大海"
    r"|(まだ|いまだに)(返信|回答|連絡)|返信がありません|keine (antwort|rückmeldung)|noch (keine|nicht)\b.{0,20}(antwort|geantwortet|bearbeitet)"
    r"|toujours pas de (réponse|retour)|sans (réponse|nouvelles)|sin respuesta|sigo esperando|todavía no (he recibido|me han respondido)|sem resposta|ainda (aguardo|estou aguardando)",
    re.I,
)


# --------------------------------------------------------------------------- negation of cues

# A cue preceded (or, in Japanese/French, followed) by one of these within its clause
# is a thing the person does NOT want: "don't close my account", "账号不要注销".
_NEG_BEFORE = re.compile(
    r"(\b(don'?t|do not|dont|not|never|no need to|without|rather than|instead of|isn'?t|aren'?t|nicht|nichts|kein\w*|ohne"
    r"|ne|n'|pas|sans|no|sin|não|nao|sem|nem|ni)\b|不要|别|不用|不想|无需|不必|先别|并非|而不是|不需要|暂时不|勿|唔使|唔駛|唔好|毋須)"
    r"[^.!?。！？;；,，\n]{0,24}$",
    re.I,
)
_NEG_AFTER = re.compile(
    # "注销就不用了" (no need to close it), but not "销户，不用了" (close it: I'm not using it)
    # nor "请删除，不要再保留" (delete it, keep it no more)
    r"^[^.!?。！？;；\n]{0,6}(しないで|しません|せず|ではなく|じゃなく|は不要|不要(?!再)|pas\b|nicht\b|no\b|(?<![，,\s])(不要(?!再)|不用))",
    re.I,
)


# Chinese negates with a bare 不/别/没 right before the verb ("账号不注销"): a short window.
_NEG_BEFORE_ZH = re.compile(r"(不|(?<![识区特分类级告性])别|勿|没|未)[^，。！？；,\n]{0,3}$")
# A cue can span the negation itself: "账号不要注销", "account, don't close".
_NEG_INSIDE = re.compile(r"(不要|不用|不想|不需要|不必|(?:不|别|勿)(?=[注删关停销取撤])|しないで|しません|\bdon'?t\b|\bdo not\b|\bnot\b|\bnicht\b|\bnichts\b|\bpas\b|\bnão\b)", re.I)


#: a kana or CJK ideograph, for the chat-sentence rules below
_CJK_CHAR = r"[\u3040-\u30ff\u3400-\u9fff]"
#: a space between Chinese or Japanese characters: a chat line's sentence boundary
_CJK_SPACE = re.compile(rf"(?<={_CJK_CHAR})\s+(?={_CJK_CHAR})")


def _clause_before(text: str, start: int) -> str:
    """Up to 40 characters before ``start``, from the last chat-style sentence boundary
    on: "现在不想用了 以后别再采集" — the 不想 belongs to the sentence before."""
    window = text[max(0, start - 40) : start + 1]
    last = None
    for last in _CJK_SPACE.finditer(window):
        pass
    return window[last.end() if last else 0 : len(window) - (1 if start < len(text) else 0)]


def _clause_after(text: str, end: int) -> str:
    """Up to 12 characters after ``end``, to the next chat-style sentence boundary:
    "帮我删了 号不用动" — the 不用 is about the account, in the sentence after."""
    gap = _CJK_SPACE.search(text, end, end + 12)
    return text[end : gap.start() if gap else end + 12]


#: a refusal carried over a list: "I am not asking you to delete anything or close my account"
_NEG_OR_BEFORE = re.compile(r"\b(not|never|don'?t|do not|no need to)\b[^.!?;\n,]{0,40}\b(or|nor)\s+$", re.I)


def _negated(text: str, start: int, end: int) -> bool:
    """Whether the cue found at ``start:end`` is refused rather than asked for."""
    before = _clause_before(text, start)
    inside = _NEG_INSIDE.search(text, start, end)
    return bool(
        _NEG_BEFORE.search(before)
        or _NEG_OR_BEFORE.search(text[max(0, start - 60) : start])
        or _NEG_BEFORE_ZH.search(before[-6:])
        or _NEG_AFTER.search(_clause_after(text, end))
        # A cue that opens with the negation (after at most a "from now on") asks for
        # it: "不要再推送", "以后不要再收集", "don't sell my data", "keine Werbung mehr"
        # are the request, not a refusal of one.  "账号不要注销" is a refusal.
        or (inside is not None and not _LEAD_IN.fullmatch(text, start, inside.start()))
    )


#: what may come before a negation that opens a request ("以后也请不要…", "from now on don't…")
_LEAD_IN = re.compile(r"(?:以后|今后|往后|从现在起|今後|也|请|請|还|再|please|and|from now on|in future|going forward|\bi\b|\bwe\b|[\s,，])*", re.I)


# A negation-led cue says what someone else does, not what the writer asks, when a
# subject other than the writer comes right before it: "your policy says you don't
# share", "they never sell" ("make sure you don't share" still asks).
_OTHERS_SUBJECT = re.compile(r"(?<!make sure )(?<!ensure )(?<!ensure that )\b(you|they|he|she|it|which|who|company|policy)\s+$", re.I)
_NEG_START = re.compile(r"(don'?t|do not|dont|never|no longer)\b", re.I)


def _stated(text: str, start: int, end: int) -> bool:
    return bool(_NEG_START.match(text, start, end) and _OTHERS_SUBJECT.search(text[max(0, start - 30) : start]))


# A cue found in what already happened is context, not a request: "我已经注销了账号，
# 却还在扣费", "不小心把录像删了", "确认我的录像已经删除了".  Chinese marks it with
# 已经/早就 or 不小心 rather than a tense; other languages' past forms do not match the
# cues' verbs in the first place ("I closed" is not "close").
_DONE_BEFORE_ZH = re.compile(r"(已经|早已|早就)(?!决定|打算|准备|想|考虑)[^，。！？；,\n]{0,10}$|(不小心|手贱|手賤|手滑)[^，。！？；,\n]{0,10}$|[已误][^，。！？；,\n]?$")
#: not "删除已经采集的照片"; "账号被冻结" / "將被刪除" happened (or will) to them, unasked
_DONE_INSIDE_ZH = re.compile(r"(已经|已經|早已|早就)[被给]?(删|刪|注销|註銷|关|關|停|取消|撤回|退订|解绑|清)|(已经|已經|早已|早就)(?!决定|決定|打算|准备|準備|想|考虑|考慮)[^，。！？\n]{1,8}(关掉|關掉|删掉|刪掉|取消|退订|退訂)|[被將将]被?(冻结|凍結|停用|删|刪|注销|註銷|关闭|關閉|封)")


#: "I already unsubscribed last week": the cue's verb right after "already" is done
_DONE_BEFORE_EN = re.compile(r"\balready\s+$", re.I)


def _already_done(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 12) : start]
    return bool(_DONE_BEFORE_ZH.search(before) or _DONE_INSIDE_ZH.search(text, start, end) or _DONE_BEFORE_EN.search(before))


# A right named in a condition or a weighing-up is a question about it, not a request:
# "if I close my account, do I get a refund?", "注销账号的话会员费能退吗",
# "一般注销以后数据会保留多久", "还没决定要不要注销".  "注销以后请删除我的数据" asks
# for both: without a question in its sentence the condition is a request's order.
_IF_BEFORE = re.compile(r"\bif (i|we)\s+$|\b(does|will|would) (that|this|it) (also )?$|(会不会|會不會)[^，。！？\n]{0,12}$|\bsi (je |j'|on |yo )?$|\bse eu $|\b(wenn|falls) (ich|wir) (mein\w* |unser\w* )?$|(如果|要是|假如)我?\s*$|(要不要|是否要|该不该|該不該|还没决定|還沒決定|还没想好|還沒想好)\s*$", re.I)
_THEN_AFTER_ZH = re.compile(r"^[^。！？\n]{0,4}?(的话|的話|以后|以後|之后|之後)")
_QUESTION_ZH = re.compile(r"[吗嗎么麼？?]|多久|怎么|怎麼|会不会|會不會|能不能|还能|還能|是否|哪些|什么|什麼")
#: "清除缓存会不会把我的记录也删了": the question sits inside the cue's span
_WHETHER_INSIDE = re.compile(r"会不会|會不會")
#: a clause that opens as a condition: what follows it is the question or the request
_CONDITION = re.compile(r"\s*(if (i|we)\b|如果|要是|假如)", re.I)


_SENTENCE_STOP_ZH = re.compile(r"[。！？!\n]")


def _hypothetical(text: str, start: int, end: int) -> bool:
    """Whether the cue at ``start:end`` names a right only as a condition or in a
    question about its consequences ("if I close…", "注销的话…吗", "会不会…删了")."""
    if _IF_BEFORE.search(text[max(0, start - 12) : start]) or _WHETHER_INSIDE.search(text, start, end):
        return True
    then = _THEN_AFTER_ZH.search(text[end : end + 8])
    if not then:
        return False
    sentence = _SENTENCE_STOP_ZH.split(text[end + then.end() : end + then.end() + 30], maxsplit=1)[0]
    return bool(_QUESTION_ZH.search(sentence))


# --------------------------------------------------------------------------- clauses

# What the person already did is context, not a request ("I closed my account in
# January, but you still email me").
_NARRATIVE = re.compile(
    r"(^|\b)(i|we)\s+(already\s+|have\s+|had\s+|'ve\s+|just\s+)?(closed|cancell?ed|deleted|deactivated|unsubscribed|signed\s+up|opted|removed|asked|requested|used|got)\b"
    r"|\b(i'?ve|we'?ve)\s+(already\s+)?\w+ed\b|已经.{0,8}了|之前.{0,10}(过|了)|済み|しました"
    r"|\bhabe\b.{0,30}\b(ge\w+t|gelöscht)\b|\bj'ai\s+(déjà\s+)?\w+é\b|\bya\s+\w+é\b|\bjá\s+\w+ei\b",
    re.I,
)

# Saying who you are is not asking for anything: "My account email is j@x.org", "Mein
# Konto ist unter … registriert", "账号：…".  The model reads such a clause as a
# correction (it names an address); unless a cue backs it, it gives no secondary
# right.  A new value ("my email is now …", "should be …") is still a correction.
_IDENTIFYING = re.compile(
    r"\b(my|our)\s+(\w+\s+){0,2}(e-?mail|email address|address|username|user name|user id|login|account|id|phone|number|worker id)\s+(is|was|are|:)\s"
    r"|\b(registered|signed up)\s+(under|with)\b|\bi'?m writing from\b|\bsame (e-?mail|address|account)\b|\bthe one i'?m (writing|emailing) from\b"
    r"|\bunter (der|dem|meiner)\b.{0,40}\bregistriert\b|\bmein(e)?\s+(\w+\s+)?(konto|e-mail|e-mail-adresse|benutzername|kundennummer)\b.{0,40}\b(ist|lautet)\b"
    r"|\bmon (adresse|e-mail|identifiant|compte)\b.{0,30}\best\b|\bmi (correo|cuenta|usuario)\b.{0,30}\bes\b"
    r"|^(账号|账户|帐号|注册|登录|用户)(邮箱|用户名|手机号?|ID|名)?\s*[:：是]|^(邮箱|用户ID|用户名|手机号|手机|设备 ?ID|worker id|account|user id)\s*[:：是]"
    r"|^((full |first |last )?name|e-?mail|phone|tel|mobile|address|username|user ?name|user id|account( id| number| no\.?)?|customer (id|number)|date of birth|dob"
    r"|nombre|correo|teléfono|dirección|usuario|vorname|nachname|telefon|adresse|benutzername|kundennummer|nom|prénom|courriel|téléphone|identifiant"
    r"|姓名|名字|电话|联系电话|地址|氏名|名前|メール|電話番号?|住所|会員番号)\s*[:：]"
    r"|^(アカウント|メールアドレス|ユーザーID|ユーザー名|登録メール)"
    r"|(\b(is|was|are|ist|est|es|é)|是|为|は)\s*[\w.+-]+@[\w-]+\.",  # "… is x@example.org"
    re.I,
)
_NEW_VALUE = re.compile(r"\b(now|new|changed|instead|should|wrong|incorrect|correct|right|update|neu|richtig|nouvelle|nueva|nuevo|correcto)\b|改|错|誤|間違|应|應", re.I)

# A clause the model alone names as a second request must at least be worded as one:
# a plea, a wish, a question, an imperative verb of the rights, a "no more".  Clause
# splitting leaves fragments ("avatar into the account.", "account numbers") that the
# model, seeing a few privacy words, would otherwise turn into requests nobody made.
_ASKING = re.compile(
    r"\?|？|\b(please|pls|plz|kindly|want|wanna|would like|'d like|need|can (you|u)|could (you|u)|would you|will you|let me"
    r"|(i|we) (ask|request|demand|object)|stop|don'?t|do not|no longer|never|no more|remove|delete|erase|wipe|close|cancel|change"
    r"|update|fix|correct|amend|swap|switch|send|give|tell|show|provide|confirm|unsubscribe|opt\s*(me\s*)?out|get rid|take (me|it) off"
    r"|like to|hereby|terminat\w*|deactivate|deleted|removed|erased|closed|(has|have) changed|is now"
    r"|appreciate|expect|insist|prefer|must|should|object|ask you|too|as well|also)\b"
    r"|请|麻烦|帮|能不能|能否|可以|可否|希望|要求|想|要|别|不要|不想|停止|删|注销|改|更正|发|给我|告诉|提供|吗|也|还有|顺便|把"
    r"|ください|下さい|お願い|たい|頂け|いただ|削除|停止|教え|ほし|願|希望|求め|ないで|やめ|消して"
    r"|\b(bitte|möchte|will|wünsche|fordere|verlange|soll|sollen|auch|können sie|könnten sie|keine|nicht mehr|lösch\w*|schick\w*|send\w*)\b"
    r"|\b(merci de|veuillez|je veux|je voudrais|je souhait\w*|je (vous )?demande|j'exige|je m'oppose|aussi|pouvez|pourriez|ne plus|s'il vous pla\w*)|supprim|envoy"
    r"|\b(por favor|quiero|quisiera|deseo|solicito|pido|necesito|me gustar[ií]a|exijo|tambi[eé]n|pueden|podr[ií]an|no m[aá]s|dejen|cierren|cancelen|den de baja"
    r"|quero|gostaria|peço|podem|poderiam|não quero|parem|deixem|fechem|cancelem)\b"
    r"|borr|elimin|envi[aeo]|apag|exclu",
    re.I,
)

# "特申请注销本人账号（注册邮箱：a@b.cn）", "close my account (login: jdoe)": an aside that
# only says who is asking.  Left in, its address outweighs the request around it (an
# address is what most correction requests carry).
_ID_ASIDE = re.compile(
    r"\s?[（(]\s*(?:注册|註冊|登录|登入|账号|帳號|账户|帳戶|用户|用戶|邮箱|信箱|registered|account|login|user|e-?mail|username|customer|"
    r"workspace|kundennummer|kundenkonto|konto|compte|identifiant|cuenta|conta|usuario|アカウント|登録)[^()（）\n]{0,20}[:：]\s*[^()（）\n]{1,60}[)）]"
    # a bare address in brackets: "mein WorksLink-Konto (k.h@example.de) zu schließen"
    r"|\s?[（(]\s*[\w.+-]+@[\w-]+(?:\.[\w-]+)+\s*[)）]",
    re.I,
)

_CLAUSE_SPLIT = re.compile(
    r"(?<=[.!?。！？；;])\s+|[。！？；;\n]+|\s*[,，]?\s*\b(?:and then|and also|and|also|plus|as well as|then|but|afterwards)\b\s+"
    r"|[，,]\s*(?=(?:并且|并|还有|另外|同时|然后|再|也|以及|而且|顺便|and|y|und|et|e|also|plus)\b)"
    r"|(?:并且|然后|另外|同时|以及|而且|还有|顺便)|[，,]|、(?=[^、]{6,})|そして|また、|あわせて|併せて"
    r"|\s+(?:und|sowie|außerdem|et|puis|ainsi que|y|además|e|também|além disso)\s+"
    # A list ("销户 + 删除全部数据"), and a space between Chinese or Japanese words, which
    # in a chat line is where one sentence ends and the next begins.
    rf"|\s*[+＋]\s*(?={_CJK_CHAR})|\s+[+&＋]\s+|{_CJK_SPACE.pattern}",
    re.I,
)


def _clauses(text: str) -> list[tuple[int, str]]:
    """``(offset, clause)`` pieces of the new text, long enough to carry a request."""
    out: list[tuple[int, str]] = []
    pos = 0
    for m in _CLAUSE_SPLIT.finditer(text):
        piece = text[pos : m.start()]
        if piece.strip():
            out.append((pos, piece))
        pos = m.end()
    if text[pos:].strip():
        out.append((pos, text[pos:]))
    return [(o, c.strip()) for o, c in out if _TWO_LETTERS.search(c)]


# --------------------------------------------------------------------------- augmentation

# Wrappers in every language: the model must learn that greetings and sign-offs say
# nothing about the intent, and see short requests inside longer letters.
_WRAPPERS: dict[str, list[tuple[str, str]]] = {
    "en": [("Hello,\n\n", "\n\nThanks,\nAlex"), ("Dear Sir or Madam,\n\n", "\n\nKind regards,\nJ. Smith"),
           ("Hi team, hope you're well.\n", "\nCheers"), ("", " thx")],
    "zh": [("您好：\n\n", "\n\n谢谢！\n李明"), ("你好，", "。谢谢"), ("", "，麻烦尽快处理"), ("贵公司好：\n", "\n此致\n敬礼")],
    "es": [("Hola,\n\n", "\n\nGracias,\nMaría"), ("Estimados señores:\n\n", "\n\nAtentamente,\nJ. García")],
    "de": [("Hallo,\n\n", "\n\nDanke,\nMax"), ("Sehr geehrte Damen und Herren,\n\n", "\n\nMit freundlichen Grüßen\nK. Braun")],
    "fr": [("Bonjour,\n\n", "\n\nMerci,\nJulie"), ("Madame, Monsieur,\n\n", "\n\nCordialement,\nP. Roux")],
    "pt": [("Olá,\n\n", "\n\nObrigado,\nPedro"), ("Prezados,\n\n", "\n\nAtenciosamente,\nM. Santos")],
    "ja": [("お世話になっております。\n", "\nよろしくお願いいたします。"), ("ご担当者様\n\n", "\n\n山本")],
}


def _training_set(specs: list[IntentSpec]) -> tuple[list[str], list[int]]:
    rng = random.Random(1234)  # deterministic: the same files give the same model
    texts: list[str] = []
    labels: list[int] = []
    for spec in specs:
        y = INTENT_ORDER.index(spec.intent)
        for lang, examples in spec.examples.items():
            wrappers = _WRAPPERS.get(lang, _WRAPPERS["en"])
            for ex in examples:
                texts.append(ex)
                labels.append(y)
                if len(ex) < 200:
                    pre, post = rng.choice(wrappers)
                    texts.append(pre + ex + post)
                    labels.append(y)
        for line in spec.policy_wording:
            texts.append(line)
            labels.append(y)
    return texts, labels


# --------------------------------------------------------------------------- model


class _Model:
    """Normalisation + the flattened linear model (:mod:`privbot.classify.linear`)."""

    def __init__(self, linear: LinearModel) -> None:
        self.linear = linear

    def decision(self, texts: list[str]) -> np.ndarray:
        norm = [_normalise(t[:_MAX_CHARS]) for t in texts]
        return self.linear.decision(norm, [_mark_negation(t) for t in norm])

    def proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities in ``INTENT_ORDER`` columns."""
        return _softmax(self.decision(texts) * 3.0)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _fit(specs: list[IntentSpec]):
    """The fitted scikit-learn parts ``(char_vec, word_vec, svm, present_columns)``."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    texts, labels = _training_set(specs)
    norm = [_normalise(t[:_MAX_CHARS]) for t in texts]
    # char_wb 2-4 (unigrams cost speed and add nothing): works without word boundaries (Chinese, Japanese) and with typos.
    char_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=1, max_features=120_000)
    # word 1-2 with negation marks: "not_close" must not look like "close".
    word_vec = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w[\w']*\b")
    X = hstack([char_vec.fit_transform(norm), word_vec.fit_transform([_mark_negation(t) for t in norm])]).tocsr()
    y = np.array(labels)
    present = sorted(set(labels))
    clf = LinearSVC(C=0.5, class_weight="balanced", random_state=0)  # same files, same model
    clf.fit(X, y)
    return char_vec, word_vec, clf, present


def _train(specs: list[IntentSpec]) -> _Model:
    # Only the fitted numbers are kept: applying them needs no scikit-learn (see linear.py).
    # An intents dir lacking some intent (tests) still gets six columns.
    char_vec, word_vec, clf, present = _fit(specs)
    return _Model(from_sklearn(char_vec, word_vec, clf, len(INTENT_ORDER), present))


# --------------------------------------------------------------------------- classifier


@dataclass
class _Hit:
    cue: Cue
    start: int
    end: int
    text: str


def _anchor_finder(anchor_set: set[str]) -> Callable[[str], set[str]]:
    """A function giving the anchors of ``anchor_set`` that occur in a (case-folded) text."""
    try:
        import ahocorasick
    except ImportError:  # pragma: no cover - a hard dependency; the slow path gives the same answers
        ordered = tuple(sorted(anchor_set))
        return lambda folded: {a for a in ordered if a in folded}
    if not anchor_set:
        return lambda folded: set()
    automaton = ahocorasick.Automaton()
    for a in anchor_set:
        automaton.add_word(a, a)
    automaton.make_automaton()
    return lambda folded: {a for _, a in automaton.iter(folded)}


class Classifier:
    """Primary + secondary intents, confidence, language and the cues that decided."""

    #: clause-level probability for a secondary intent backed by a cue / by the model alone
    SECONDARY_WITH_CUE = 0.30
    SECONDARY_MODEL_ONLY = 0.80

    def __init__(self, specs: list[IntentSpec], model: _Model, key: str = "") -> None:
        self.specs = specs
        self.model = model
        self.key = key
        self.cues: list[Cue] = [c for s in specs for c in s.cues]
        # The anchor prefilter, asked once per text instead of once per cue: which of all
        # the cues' anchors occur, found in one pass by an Aho-Corasick automaton (~6 µs
        # for ~800 anchors; a substring search per anchor took ~110 µs, and asking each
        # cue in turn ~130 µs of Python), then per cue a set test.
        self._matchers: list[tuple[Cue, frozenset[str] | None, frozenset[str] | None]] = [
            (c, None if c.anchors is None else frozenset(c.anchors), None if c.latin_anchors is None else frozenset(c.latin_anchors))
            for c in self.cues if not c.override
        ]
        self._find_all = _anchor_finder({a for _, all_, _ in self._matchers if all_ for a in all_})
        self._find_latin = _anchor_finder({a for _, _, lat in self._matchers if lat for a in lat})
        self.ready_seconds: float = 0.0
        self.from_cache: bool = False

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, intents_dir: Path | None = None, cache_dir: Path | None = None) -> "Classifier":
        """Train from ``intents_dir``, or load the model cached for exactly these files."""
        t0 = time.perf_counter()
        intents_dir = Path(intents_dir) if intents_dir else default_intents_dir()
        specs = load_intents(intents_dir)
        key = content_key(intents_dir, salt=MODEL_VERSION + _sklearn_version())
        model: _Model | None = None
        cache_file = Path(cache_dir) / f"classifier-{key[:24]}.pkl" if cache_dir else None
        from_cache = False
        if cache_file and cache_file.exists():
            try:
                with cache_file.open("rb") as f:
                    model = pickle.load(f)
                from_cache = True
            except Exception:  # a corrupt or incompatible cache is only a lost speed-up
                log.warning("ignoring unreadable classifier cache %s", cache_file)
                model = None
        if model is None and cache_file:
            model = _train_in_child(intents_dir, cache_file)
        if model is None:
            model = _train(specs)
            if cache_file:
                _write_atomically(cache_file, pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        self = cls(specs, model, key)
        # lingua loads its n-gram models on first use (~0.7 s): pay that now, not on
        # the first message a channel hands over.
        _lingua().detect_language_of("warm up the language models")
        self.ready_seconds = time.perf_counter() - t0
        self.from_cache = from_cache
        return self

    # ----------------------------------------------------------------- classify
    def classify(self, text: str, subject: str = "", channel: str = "email") -> Classification:
        return self.classify_many([(text, subject, channel)])[0]

    def classify_many(self, items: list[tuple[str, str, str]]) -> list[Classification]:
        prepared = [self._prepare(text or "", subject or "") for text, subject, _channel in items]
        # Whole messages and all their clauses scored in one call: the fixed cost of a
        # scoring call is then paid once per batch (and once per message in classify()).
        clause_rows: list[tuple[int, int, str]] = []
        for i, (body, new, _subj, _lang) in enumerate(prepared):
            cl = _clauses(new)
            if len(cl) > 1:
                clause_rows.extend((i, off, c) for off, c in cl)
        texts = [p[0] for p in prepared] + [c for _, _, c in clause_rows]
        probs = self.model.proba(texts) if texts else np.zeros((0, len(INTENT_ORDER)))
        n = len(prepared)
        per_msg: dict[int, list[tuple[int, str, np.ndarray]]] = {}
        for (i, off, c), p in zip(clause_rows, probs[n:]):
            per_msg.setdefault(i, []).append((off, c, p))
        return [self._decide(prepared[i], probs[i], per_msg.get(i, [])) for i in range(n)]

    # ----------------------------------------------------------------- internals
    def _prepare(self, text: str, subject: str) -> tuple[str, str, str, str]:
        new, rest = split_new_text(text)
        new = _ID_ASIDE.sub("", new)
        subj = _subject_for_model(subject)
        if not new.strip() and rest:
            # Nothing but a forward or a quote: the quoted words are all there is.
            new = "\n".join(ln.lstrip("> ").rstrip() for ln in rest.splitlines())
        elif rest and _CHASER.search(new):
            # "Nobody has answered the mail below": the request is the quoted one, and
            # the reply's subject names it.
            new = new.rstrip() + "\n" + quoted_words(rest)
            subj = _REPLY_PREFIX.sub("", subject).strip()
        body = f"{subj}\n{new}" if subj else new
        lang = detect_language(new if _THREE_LETTERS.search(new) else f"{subject}\n{new}")
        return body, new, subject, lang

    def _cue_hits(self, text: str) -> tuple[list[_Hit], list[_Hit]]:
        """Every match of every (non-override) cue in text order: ``(wanted, negated)``."""
        hits: list[_Hit] = []
        negated: list[_Hit] = []
        folded = text.casefold()
        cjk = has_cjk(folded)
        present = (self._find_all if cjk else self._find_latin)(folded)
        for cue, all_, latin in self._matchers:
            wanted = all_ if cjk else latin
            if wanted is not None and wanted.isdisjoint(present):
                continue  # no anchor of this cue occurs: its regex cannot match
            for m in cue.pattern.finditer(text):
                if m.end() == m.start():
                    continue
                # What happened, what others do, what would happen: context for a right,
                # not a request for it.  An "other" cue there is just as much "other"
                # ("手贱把录像删了 能恢复不" is asking to undo a slip).
                if cue.intent is not Intent.OTHER and (
                    _already_done(text, m.start(), m.end()) or _stated(text, m.start(), m.end()) or _hypothetical(text, m.start(), m.end())
                ):
                    continue
                hit = _Hit(cue, m.start(), m.end(), m.group(0))
                (negated if _negated(text, m.start(), m.end()) else hits).append(hit)
        hits.sort(key=lambda h: h.start)
        return hits, negated

    def _decide(self, prep: tuple[str, str, str, str], p: np.ndarray, clauses: list[tuple[int, str, np.ndarray]]) -> Classification:
        body, new, subject, lang = prep
        # Overrides see the raw subject too: "Automatic reply: ...", "Undelivered Mail ...".
        override_text = f"{subject}\n{new[:400]}"
        folded = override_text.casefold()
        for cue in self.cues:
            if cue.override and may_match(cue.anchors, folded):
                m = cue.pattern.search(override_text)
                if m:
                    return Classification(Intent.OTHER, (Intent.OTHER,), 0.99, lang, (f'other: "{m.group(0).strip()}" (override)',))

        # Cues are matched once on the whole text; a clause sees the hits inside it.
        hits, negated = self._cue_hits(body)
        shift = len(body) - len(new)  # body = subject line + new text
        main_hits = [h for h in hits if not h.cue.second_only]
        boost = _boost(main_hits, negated)
        score = np.log(p + 1e-4) + boost
        conf = _softmax(score[None, :])[0]
        primary = INTENT_ORDER[int(np.argmax(score))]
        if primary is Intent.OTHER:
            hits = main_hits  # a question in mail that asks for nothing is only a question

        # Secondary intents: a clause whose own best intent differs from the primary.
        # ``seen`` records where each intent is first asked for, to order them.
        seen: dict[Intent, int] = {}
        backed: set[Intent] = {i for i in INTENT_ORDER if boost[INTENT_ORDER.index(i)] > 0}
        cues_out: list[str] = []
        # Every clause's scores at once (numpy on six numbers costs more in calls than maths).
        cnegs: list[list[_Hit]] = []
        cboosts: list[np.ndarray] = []
        for off, clause, _cp in clauses:
            lo, hi = off + shift, off + shift + len(clause)
            cneg = [h for h in negated if _in_clause(h, lo, hi, shift)]
            cnegs.append(cneg)
            cboosts.append(_boost([h for h in hits if _in_clause(h, lo, hi, shift)], cneg))
        if clauses:
            cb = np.array(cboosts)
            cscores = np.log(np.array([cp for _, _, cp in clauses]) + 1e-4) + cb
            cprobs = _softmax(cscores).tolist()
            best = np.argmax(cscores, axis=1).tolist()
            cb_l = cb.tolist()
        for k, (off, clause, _cp) in enumerate(clauses):
            cneg, cboost, cprob, j = cnegs[k], cb_l[k], cprobs[k], best[k]
            it = INTENT_ORDER[j]
            if it is Intent.OTHER or it in seen:
                continue
            if any(h.cue.intent is it for h in cneg):
                continue  # "账号不注销", "don't close my account": the clause rules it out
            if it is primary:
                seen[it] = off
                continue
            if (cboost[j] > 0 and cprob[j] >= self.SECONDARY_WITH_CUE) or cprob[j] >= self.SECONDARY_MODEL_ONLY:
                if cboost[j] <= 0 and _NARRATIVE.search(clause):
                    continue  # "I closed my account in January": a story, not a request
                if cboost[j] <= 0 and _IDENTIFYING.search(clause) and not _NEW_VALUE.search(clause):
                    continue  # "My account email is …": who is asking, not what
                if cboost[j] <= 0 and not _ASKING.search(clause):
                    continue  # "avatar into the account.": a fragment that asks for nothing
                if cboost[j] <= 0 and _CONDITION.match(clause):
                    continue  # "if I close my account, …": the condition of a question
                seen[it] = off
                cues_out.append(f'{it}: clause "{clause[:60]}"')
        seen.setdefault(primary, -1)
        if primary is Intent.OTHER and boost[_OTHER_AT] >= STRONG_OTHER:
            # "I never asked to close my account", a newsletter's footer: no right is asked for
            seen, cues_out = {primary: -1}, []
        if len(seen) > 1:
            # Several requests: closing the account is the one that shapes the ticket
            # (the others become steps before it); otherwise the first one asked for leads.
            if Intent.CANCELLATION in seen and Intent.CANCELLATION in backed:
                primary = Intent.CANCELLATION
            elif primary is Intent.OTHER or seen[primary] >= 0:
                firsts = sorted((o, INTENT_ORDER.index(i), i) for i, o in seen.items() if o >= 0 and i is not Intent.OTHER)
                if firsts and (primary is not Intent.OTHER or conf[INTENT_ORDER.index(firsts[0][2])] > 0.15):
                    primary = firsts[0][2]
        secondaries = tuple(i for _, _, i in sorted((o, INTENT_ORDER.index(i), i) for i, o in seen.items()) if i is not primary and i is not Intent.OTHER)
        for h in hits:
            if h.cue.intent == primary:
                cues_out.insert(0, f'{primary}: "{h.text.strip()[:60]}"')
                break
        cues_out.append(f"model: {primary} {float(p[INTENT_ORDER.index(primary)]):.2f}")
        return Classification(
            primary,
            (primary, *secondaries),
            float(conf[INTENT_ORDER.index(primary)]),
            lang,
            tuple(cues_out),
        )


_SENTENCE_END = re.compile(r"[!?。！？;；\n]|\.\s+[^\W\d_]")  # not "Art. 15 DSGVO"


def _in_clause(h: _Hit, lo: int, hi: int, new_from: int) -> bool:
    """Whether cue hit ``h`` speaks for the clause at ``lo:hi`` of the text.

    A hit inside the clause does.  So does one that runs into it from the clause before
    within one sentence of the new text, because a cue belongs to the clause where it
    ends, where its object is: "delete my account and everything you've got on me"
    asks, in its second clause, for the data."""
    if h.start >= lo and h.end <= hi + 1:
        return True
    return lo < h.end <= hi + 1 and h.start >= new_from and not _SENTENCE_END.search(h.text)


def _boost(hits: list[_Hit], negated: list[_Hit] = ()) -> np.ndarray:
    """Per intent, the strongest cue found (several weak cues do not add up to certainty).

    An intent that is only ever mentioned negated ("don't close my account") is pushed
    down, since the person has said explicitly that they do not want it.
    """
    b = np.zeros(len(INTENT_ORDER))
    for h in hits:
        j = INTENT_ORDER.index(h.cue.intent)
        if h.cue.weight > b[j]:
            b[j] = h.cue.weight
    for h in negated:
        j = INTENT_ORDER.index(h.cue.intent)
        if b[j] <= 0:
            b[j] = min(b[j], -NEGATION_PENALTY * h.cue.weight)
    return b


NEGATION_PENALTY = 0.75
#: an "other" cue this strong (a newsletter's footer, "I never asked to close my account")
#: keeps the message "other" even where a clause names a right
STRONG_OTHER = 3.0
_OTHER_AT = INTENT_ORDER.index(Intent.OTHER)


def _sklearn_version() -> str:
    """Part of the cache key (a new scikit-learn may fit differently), read without importing it.

    Importing scikit-learn costs about half a second, and a cached model does not need it.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scikit-learn")
    except PackageNotFoundError:  # pragma: no cover - sklearn is a hard dependency
        return "?"


def _train_in_child(intents_dir: Path, cache_file: Path) -> "_Model | None":
    """Train in a short-lived child process that writes ``cache_file``; load the result.

    Why: scikit-learn and SciPy (~60 MB once imported) and the training's scratch memory
    (~40 MB more) would otherwise stay in this long-running process for good (freed heap
    is seldom returned to the system), and lingua's models load on top of them: a cold
    ``privbot run`` peaked at ~320 MB against ~235 MB for a warm one.  The model is the
    same (training is deterministic); if the child cannot run, the caller trains here.
    """
    import subprocess
    import sys

    import privbot

    code = (
        "import sys, pickle; from pathlib import Path; import privbot.classify as c; "
        "d, out = Path(sys.argv[1]), Path(sys.argv[2]); "
        "c._write_atomically(out, pickle.dumps(c._train(c.load_intents(d)), protocol=pickle.HIGHEST_PROTOCOL))"
    )
    src = str(Path(privbot.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        subprocess.run([sys.executable, "-c", code, str(intents_dir), str(cache_file)], env=env, check=True, timeout=300,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with cache_file.open("rb") as f:
            return pickle.load(f)
    except Exception as exc:  # no child processes here, a read-only cache dir, ...: train in-process
        log.info("training the classifier in a child process failed (%s); training here", type(exc).__name__)
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Concurrent privbot processes may share a cache dir: never expose a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".classifier-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache dir costs speed, not correctness
        log.warning("could not write classifier cache %s: %s", path, exc)
