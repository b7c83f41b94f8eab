"""The link next to a mailed code: a page with a button, and only the button verifies."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from privbot.app import Services
from privbot.domain import Status
from privbot.web.app import create_app
from tests.support import make_mail, send
from tests.test_verify import DELETE, Mailbox, add_account, body, code_in, ticket_of


@pytest.fixture
def public(services: Services) -> Services:
    services.settings.public_url = "http://testserver"
    return services


def link_in(text: str) -> str:
    m = re.search(r"http://testserver(/verify/\S+)", text)
    assert m, text
    return m.group(1)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m
    return m.group(1)


def test_opening_the_link_verifies_nothing_until_the_requester_confirms(public: Services, smtp_port: int) -> None:
    add_account(public)
    box = Mailbox(public)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    path = link_in(body(ack))
    assert code_in(ack) in path
    client = TestClient(create_app(public))

    page = client.get(path)  # what a mail scanner does
    assert page.status_code == 200 and "Confirm" in page.text
    assert ticket_of(public).status == Status.AWAITING_VERIFICATION

    code = parse_qs(urlsplit(path).query)["code"][0]
    done = client.post(urlsplit(path).path, data={"csrf": csrf_of(page.text), "code": code})
    assert done.status_code == 200 and "confirmed" in done.text
    ticket = ticket_of(public)
    assert ticket.verified and ticket.status == Status.AWAITING_APPROVAL


def test_a_wrong_code_by_link_counts_as_an_attempt_and_says_so(public: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail(DELETE))
    path = urlsplit(link_in(body(Mailbox(public).one()))).path
    client = TestClient(create_app(public))
    token = csrf_of(client.get(path).text)
    r = client.post(path, data={"csrf": token, "code": "00000000"})
    assert r.status_code == 400 and "not right" in r.text
    assert not ticket_of(public).verified


def test_confirming_without_the_pages_token_is_refused(public: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail(DELETE))
    path = link_in(body(Mailbox(public).one()))
    code = parse_qs(urlsplit(path).query)["code"][0]
    r = TestClient(create_app(public)).post(urlsplit(path).path, data={"code": code})
    assert r.status_code == 403
    assert not ticket_of(public).verified


def test_a_link_for_a_reference_that_does_not_exist_reads_like_any_stale_link(public: Services) -> None:
    client = TestClient(create_app(public))
    token = csrf_of(client.get("/verify/PRIV-999999?code=12345678").text)
    r = client.post("/verify/PRIV-999999", data={"csrf": token, "code": "12345678"})
    assert r.status_code == 400 and "no longer valid" in r.text


def test_a_request_written_in_chinese_is_confirmed_on_a_chinese_page(public: Services, smtp_port: int) -> None:
    # The link carries the acknowledgement's language; the page, its button and the
    # answer after the click are all in it.
    add_account(public)
    box = Mailbox(public)
    send(smtp_port, make_mail("您好，请删除你们保存的我的全部个人信息，包括设备日志。谢谢", subject="删除个人信息"))
    path = link_in(body(box.one()))
    assert parse_qs(urlsplit(path).query)["lang"] == ["zh"]
    client = TestClient(create_app(public))
    page = client.get(path, headers={"accept-language": "en-GB,en;q=0.9"})
    assert '<html lang="zh">' in page.text and "确认您的隐私请求" in page.text and ">确认</button>" in page.text
    code = parse_qs(urlsplit(path).query)["code"][0]
    done = client.post(urlsplit(path).path, data={"csrf": csrf_of(page.text), "code": code, "lang": "zh"})
    assert done.status_code == 200 and "您的请求已确认" in done.text
    assert ticket_of(public).verified


def test_a_link_without_a_language_follows_the_browser_and_an_unknown_one_falls_back_to_english(public: Services) -> None:
    client = TestClient(create_app(public))
    german = client.get("/verify/PRIV-000001?code=12345678", headers={"accept-language": "fr;q=0.5, de-AT;q=0.9"})
    assert '<html lang="de">' in german.text and "Bestätigen" in german.text
    klingon = client.get("/verify/PRIV-000001?code=12345678&lang=tlh", headers={"accept-language": "tlh"})
    assert '<html lang="en">' in klingon.text and "Confirm your privacy request" in klingon.text


def test_what_the_link_carries_is_shown_as_text_never_as_markup(public: Services) -> None:
    client = TestClient(create_app(public))
    page = client.get('/verify/PRIV-1"><script>alert(1)</script>?code=1&lang="><b>')
    assert "<script>alert(1)</script>" not in page.text and "<b>" not in page.text
