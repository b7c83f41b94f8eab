"""Only the new text of a message decides: quotes, signatures and disclaimers are split off."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privbot.classify.anchors import may_match
from privbot.classify.newtext import _REPLY_HEADER, _REPLY_HEADER_ANCHORS, new_text, split_new_text


@pytest.mark.parametrize(
    "header",
    [
        "On Wed, 9 Apr 2025 at 15:22, WorksLink Privacy Team <privacy@example.com> wrote:",
        "在 2025年5月6日，WorksLink 隐私团队 写道：",
        "王先生 於 2025年5月6日 週二 寫道：",
        "2024年1月1日(月) 10:00 サポート <support@example.jp>:",
        "Le mar. 3 juin 2025 à 10:00, Équipe <a@b.fr> a écrit :",
        "Am 03.06.2025 um 10:00 schrieb Team <a@b.de>:",
        "El 3 jun 2025, a las 10:00, Equipo <a@b.es> escribió:",
        "Em 3 de jun. de 2025, às 10:00, Equipe <a@b.pt> escreveu:",
    ],
)
def test_reply_headers_in_seven_languages_start_the_quote(header: str) -> None:
    new, rest = split_new_text(f"Yes, go ahead.\n\n{header}\n> Please delete my account.")
    assert new == "Yes, go ahead."
    assert "delete my account" in rest


def test_wrapped_reply_header_is_recognised() -> None:
    body = "Thanks!\n\nOn Wed, 9 Apr 2025 at 15:22, WorksLink Privacy Team <privacy@example.com>\nwrote:\n> close my account"
    assert new_text(body) == "Thanks!"


@pytest.mark.parametrize(
    "block",
    [
        "From: Privacy <privacy@example.com>\nSent: Monday, 2 June 2025 10:00\nTo: me\nSubject: Re: request",
        "发件人: 隐私团队 <privacy@example.cn>\n发送时间: 2025年6月2日 10:00\n收件人: 我",
        "Von: Datenschutz <privacy@example.de>\nGesendet: Montag, 2. Juni 2025\nAn: mich",
        "De : Confidentialité <privacy@example.fr>\nEnvoyé : lundi 2 juin 2025\nÀ : moi",
        "-----Original Message-----\nFrom: x@example.com",
        "------------------ 原始邮件 ------------------",
    ],
)
def test_outlook_header_blocks_start_the_quote(block: str) -> None:
    assert new_text(f"Confirmed.\n\n{block}\n\nPlease delete everything.") == "Confirmed."


def test_a_sentence_mentioning_from_is_not_a_header() -> None:
    body = "From: my old address I got your emails.\nPlease unsubscribe me."
    assert "unsubscribe" in new_text(body)


@pytest.mark.parametrize(
    "sig",
    ["Sent from my iPhone", "Sent from Outlook for iOS", "Get Outlook for Android", "发自我的iPhone",
     "Von meinem iPhone gesendet", "Enviado desde mi iPhone", "Envoyé de mon iPhone", "iPhoneから送信", "-- "],
)
def test_signatures_are_not_new_text(sig: str) -> None:
    assert new_text(f"Please fix my surname.\n\n{sig}\nDisclaimer: close all accounts") == "Please fix my surname."


@pytest.mark.parametrize(
    "disclaimer",
    [
        "This email and any attachments are confidential and intended solely for the addressee.",
        "CONFIDENTIALITY NOTICE: the contents of this message are privileged.",
        "The information contained in this email is confidential.",
        "本邮件及其附件含有保密信息，仅限于发送给上面地址中列出的个人或群组。",
        "Diese E-Mail enthält vertrauliche Informationen.",
    ],
)
def test_legal_disclaimers_are_not_new_text(disclaimer: str) -> None:
    assert new_text(f"Send me my data.\n\n{disclaimer} If you received it in error, delete it.") == "Send me my data."


def test_bottom_posted_answer_after_a_quote_is_kept() -> None:
    body = "> Do you want us to close the account?\n\nYes please close it."
    assert new_text(body) == "Yes please close it."


def test_plain_message_is_unchanged() -> None:
    assert split_new_text("hello\nworld") == ("hello\nworld", "")


_HEADER_WORDS = ["On ", "Am ", "Le ", "wrote", "WROTE", "Schrieb", "a écrit", "A ÉCRIT", "escribió", "ESCREVEU", "ha scritto",
                 "schreef", "在 ", "写道", "於 ", "寫道", "書きました", "より", "2024年1月1日", ":", "：", " ", "x", "ſchrieb", "ＷＲＯＴＥ"]


_LINES = st.one_of(
    st.lists(st.one_of(st.sampled_from(_HEADER_WORDS), st.text(max_size=8)), max_size=12).map("".join),
    # most of these are headers: a prefix, anything, a header's word in any case, a colon
    st.tuples(st.sampled_from(["On ", "am ", "LE ", "", "在 ", "El "]), st.text(min_size=4, max_size=30),
              st.sampled_from(_HEADER_WORDS[3:18] + ["ſchrieb", "ＷＲＯＴＥ"]), st.sampled_from([":", " :", "：", ""])).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LINES)
def test_the_reply_header_shortcut_never_skips_a_line_the_pattern_would_match(line: str) -> None:
    # A message none of whose text holds a reply header's word is not tried line by line.
    if _REPLY_HEADER.match(line.strip()):
        assert may_match(_REPLY_HEADER_ANCHORS, line.casefold()), line


@pytest.mark.parametrize("case", [str.upper, str.swapcase])
def test_reply_headers_in_any_case_start_the_quote(case) -> None:
    new, rest = split_new_text(f"Yes, go ahead.\n\n{case('Am 03.06.2025 um 10:00 schrieb Team <a@b.de>:')}\n> Please delete my account.")
    assert new == "Yes, go ahead." and "delete my account" in rest


def test_the_quoted_request_is_read_without_its_reply_header_or_header_block() -> None:
    from privbot.classify.newtext import quoted_words

    _, rest = split_new_text(
        "Any news?\n\nOn Mon, 3 Mar 2025 at 09:00, Ann Lee <ann@example.org> wrote:\n> Please close my account.\n>\n> Ann\n"
    )
    assert quoted_words(rest) == "Please close my account.\nAnn"
    _, rest = split_new_text("还没人回复？\n\n-----原始邮件-----\n发件人：王芳 <wf@example.cn>\n发送时间：2025年3月3日\n主题：删除数据\n请删除我的全部数据。\n")
    assert quoted_words(rest) == "请删除我的全部数据。"
