"""The console's pages and their security, over HTTP on a real database (both backends).

The browser flows (sign-in, PPAP, four-eyes release, deny) run in Chromium in
tests/test_console_browser.py; here every page is rendered in both languages and each
security rule is tried as an attacker would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.console import install
from gateway.console.i18n import load_catalogue
from gateway.console.web import HEADERS, SESSION_COOKIE
from gateway.custody.audit import AuditQuery
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Role
from gateway.settings import Settings
from tests.api_helpers import Api, build_api
from tests.store_helpers import FakeClock, hold_message

pytest_plugins = ("tests.store_helpers",)
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN = re.compile(r'name="login_token" value="([^"]+)"')


@pytest.fixture
def console(stores: SqlStores, settings: Settings) -> Iterator[Api]:
    built = build_api(stores, settings)
    install(built.app)
    for role in Role:
        stores.users.create(f"{role.value}-san", role, PASSWORD)
    hold_message(stores, settings, "Q1")
    with built.client:
        yield built


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> int:
    page = client.get("/console/login")
    token = LOGIN.search(page.text)
    assert token is not None
    answer = client.post("/console/login", data={"name": name, "password": password,
                                                 "login_token": token[1], "next": "/console/"},
                         follow_redirects=False)
    return answer.status_code


def csrf_of(client: TestClient, path: str) -> str:
    found = CSRF.search(client.get(path).text)
    assert found is not None, path
    return found[1]


PAGES = ["/console/", "/console/messages", "/console/messages/Q1", "/console/quarantine",
         "/console/quarantine/Q1", "/console/requests", "/console/audit", "/console/admin"]


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_every_page_renders_in_both_languages_with_the_headers(console: Api, lang: str) -> None:
    client = console.client
    assert sign_in(client, "admin-san") == 303
    client.cookies.set("mugaika_lang", lang, path="/console")
    other = "ja" if lang == "en" else "en"
    for path in PAGES:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
        assert f'<html lang="{lang}">' in answer.text
        for name, value in HEADERS.items():
            assert answer.headers[name] == value
        assert "<script>" not in answer.text and " style=" not in answer.text
        # A string of the other language shows a key rendered from the wrong table.
        assert load_catalogue()[other]["nav.dashboard"] not in answer.text


def test_catalogue_languages_have_the_same_keys() -> None:
    tables = load_catalogue()
    assert set(tables["ja"]) == set(tables["en"]) and len(tables["ja"]) > 100


def test_signed_out_pages_go_to_sign_in(console: Api) -> None:
    for path in PAGES:
        answer = console.client.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/login?next=")


def test_session_cookie_flags(console: Api) -> None:
    page = console.client.get("/console/login")
    token = LOGIN.search(page.text)
    assert token is not None
    answer = console.client.post("/console/login", follow_redirects=False, data={
        "name": "operator-san", "password": PASSWORD, "login_token": token[1]})
    cookie = next(v for k, v in answer.headers.multi_items()
                  if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie


def test_https_sets_secure_cookies(stores: SqlStores, settings: Settings) -> None:
    built = build_api(stores, settings.model_copy(update={"console_secure_cookies": "always"}))
    install(built.app)
    stores.users.create("clerk", Role.OPERATOR, PASSWORD)
    with TestClient(built.app, base_url="https://testserver") as client:
        token = LOGIN.search(client.get("/console/login").text)
        assert token is not None
        answer = client.post("/console/login", follow_redirects=False, data={
            "name": "clerk", "password": PASSWORD, "login_token": token[1]})
        assert "Secure" in answer.headers["set-cookie"]


def test_a_post_without_the_csrf_token_changes_nothing(console: Api) -> None:
    client = console.client
    assert sign_in(client, "operator-san") == 303
    forged = client.post("/console/quarantine/Q1/request", data={"reason": "x"},
                         follow_redirects=False)
    assert forged.status_code == 403
    wrong = client.post("/console/quarantine/Q1/request",
                        data={"reason": "x", "csrf": "guessed"}, follow_redirects=False)
    assert wrong.status_code == 403
    assert console.stores.quarantine.get("Q1").status == "held"  # type: ignore[union-attr]


def test_a_post_from_another_site_is_refused(console: Api) -> None:
    client = console.client
    assert sign_in(client, "operator-san") == 303
    token = csrf_of(client, "/console/quarantine/Q1")
    answer = client.post("/console/quarantine/Q1/request", data={"csrf": token},
                         headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert answer.status_code == 403
    assert console.stores.quarantine.get("Q1").status == "held"  # type: ignore[union-attr]


def test_sign_in_needs_the_form_token(console: Api) -> None:
    answer = console.client.post("/console/login", follow_redirects=False, data={
        "name": "admin-san", "password": PASSWORD, "login_token": "forged"})
    assert answer.status_code == 403


def test_wrong_passwords_lock_the_account_and_are_audited(console: Api,
                                                          clock: FakeClock) -> None:
    client = console.client
    for _ in range(5):
        assert sign_in(client, "approver-san", "wrong password!!") == 401
    assert sign_in(client, "approver-san") == 403  # locked, even with the right password
    clock.advance(minutes=16)
    assert sign_in(client, "approver-san") == 303
    actions = [e.action for e in console.stores.audit.search(AuditQuery(limit=50)).items]
    assert actions.count("console.login_failed") == 5
    assert "console.account_locked" in actions and "console.login_locked" in actions
    assert "console.login" in actions


def test_unknown_user_and_wrong_password_look_alike(console: Api) -> None:
    assert sign_in(console.client, "nobody", PASSWORD) == 401
    assert sign_in(console.client, "operator-san", "wrong password!!") == 401


def test_sessions_expire_when_idle(console: Api, clock: FakeClock) -> None:
    client = console.client
    assert sign_in(client, "auditor-san") == 303
    assert client.get("/console/", follow_redirects=False).status_code == 200
    clock.advance(minutes=31)
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_an_auditor_reads_the_audit_log_but_cannot_download(console: Api) -> None:
    client = console.client
    assert sign_in(client, "auditor-san") == 303
    assert client.get("/console/audit").status_code == 200
    entry = client.get("/console/quarantine/Q1").text
    assert "/original" not in entry
    assert client.get("/console/quarantine/Q1/original").status_code == 403
    assert client.get("/console/admin").status_code == 403


def test_operator_download_is_audited(console: Api) -> None:
    client = console.client
    assert sign_in(client, "operator-san") == 303
    answer = client.get("/console/quarantine/Q1/original")
    assert answer.status_code == 200 and answer.headers["content-disposition"].startswith(
        "attachment")
    events = console.stores.audit.search(AuditQuery(action="quarantine.download")).items
    assert [(e.actor, e.target) for e in events] == [("operator-san", "Q1")]


def test_four_eyes_in_the_console(console: Api) -> None:
    client = console.client
    assert sign_in(client, "admin-san") == 303
    token = csrf_of(client, "/console/quarantine/Q1")
    client.post("/console/quarantine/Q1/request", data={"csrf": token, "reason": "必要"})
    own = client.post("/console/quarantine/Q1/approve", data={"csrf": token},
                      follow_redirects=False)
    assert own.headers["location"].endswith("msg=msg.four_eyes")
    other = TestClient(console.app)
    assert sign_in(other, "approver-san") == 303
    other_token = csrf_of(other, "/console/quarantine/Q1")
    done = other.post("/console/quarantine/Q1/deny", data={"csrf": other_token,
                                                           "reason": "業務外のため"},
                      follow_redirects=False)
    assert done.headers["location"].endswith("msg=msg.denied")
    assert console.stores.quarantine.get("Q1").status == "denied"  # type: ignore[union-attr]


def test_audit_csv_opens_in_excel_as_japanese(console: Api) -> None:
    client = console.client
    assert sign_in(client, "admin-san") == 303
    client.get("/console/quarantine/Q1/original")
    answer = client.get("/console/audit.csv")
    assert answer.content.startswith("\ufeff".encode())
    text = answer.content.decode("utf-8-sig")
    assert "quarantine.download" in text and "admin-san" in text


def test_next_is_never_an_open_redirect(console: Api) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/console//evil.example"):
        token = LOGIN.search(console.client.get("/console/login").text)
        assert token is not None
        answer = console.client.post("/console/login", follow_redirects=False, data={
            "name": "admin-san", "password": PASSWORD, "login_token": token[1],
            "next": target})
        assert answer.headers["location"] == "/console/"


def test_the_entry_shows_what_the_recipient_got_never_the_original(
        console: Api, settings: Settings) -> None:
    """The preview is the gateway's own output kept with the entry: its text and PNG
    pages; the original's bytes are not on the page."""
    import io
    from email.message import EmailMessage

    from PIL import Image

    from tests.store_helpers import EXE_BYTES, envelope_for, mail_with_attachment

    png = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(png, "PNG")
    delivered = EmailMessage()
    delivered["Subject"] = "[無害化] 請求書の送付"
    delivered.set_content("【無害化処理のお知らせ】添付ファイルを削除しました。\n")
    delivered.add_attachment(png.getvalue(), maintype="image", subtype="png",
                             filename="page-1.png")
    raw = mail_with_attachment()
    result = hold_message(console.stores, settings, "Q2", raw)
    console.stores.quarantine.delete("Q2")
    console.stores.quarantine.hold("Q2", envelope_for(), raw, result.report, result.held,
                                   delivered.as_bytes())
    client = console.client
    assert sign_in(client, "auditor-san") == 303
    page = client.get("/console/quarantine/Q2").text
    assert "添付ファイルを削除しました" in page
    [image] = re.findall(r'src="(/console/quarantine/Q2/delivered/\d+\.png)"', page)
    answer = client.get(image)
    assert answer.headers["content-type"] == "image/png" and answer.content == png.getvalue()
    assert EXE_BYTES.decode("latin-1") not in answer.text
    assert client.get("/console/quarantine/Q2/delivered/0.png").status_code == 404
    assert "配送内容が保管されていません" in client.get("/console/quarantine/Q1").text


def test_dashboard_shows_libreoffice_health_beside_readiness(
        stores: SqlStores, settings: Settings) -> None:
    """LibreOffice is shown on the dashboard but is not part of readiness (mail flows
    without it; Office attachments wait)."""
    built = build_api(stores, settings)
    install(built.app, {"libreoffice": lambda: False})
    stores.users.create("kansa", Role.AUDITOR, PASSWORD)
    with built.client as client:
        assert sign_in(client, "kansa") == 303
        page = client.get("/console/").text
        row = re.search(r"LibreOffice[^<]*</th><td class=\"(\w+)\"", page)
        assert row is not None and row[1] == "ng"
        assert client.get("/readyz").json().get("checks", {}).get("libreoffice") is None
