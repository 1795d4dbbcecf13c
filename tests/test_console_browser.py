"""The console in a real browser: Playwright driving Debian's Chromium against `mugaika serve`.

The flows of issue 18, as people do them: an operator releases a PPAP mail with its
password and the sanitized content arrives; an operator requests the release of an
executable, an approver approves and the original arrives; a recipient files a request
from the notice's link, an approver denies it and the recipient is told why; an auditor
reads the audit log and cannot download. Screenshots of each screen go to
var/screenshots/ (docs/screenshots/ keeps the ones the README shows).
"""

from __future__ import annotations

import email
import email.policy
import io
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pyzipper

from tests.conftest import ROOT, Gateway, Sink
from tests.store_helpers import EXE_BYTES, mail_with_attachment

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "var" / "screenshots"
PASSWORD = "console password 1"
PPAP_PASSWORD = "himitsu-2026"
PPAP_TEXT = "令和8年度 予算案（内部資料）".encode()
LINK = re.compile(r"http://127\.0\.0\.1:\d+/release/\S+")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.exists(), "make setup installs Debian's chromium"
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield launched
        launched.close()


@pytest.fixture
def gateway(tmp_path: Path, sink: Sink) -> Iterator[Gateway]:
    gw = Gateway(tmp_path / "gw", sink.port, MUGAIKA_RELEASE_LINK_KEY="k" * 32)
    gw.env["MUGAIKA_RELEASE_LINK_BASE_URL"] = f"http://127.0.0.1:{gw.api_port}"
    gw.start()
    for name, role in (("sato", "operator"), ("suzuki", "approver"), ("kansa", "auditor"),
                       ("kanri", "admin")):
        subprocess.run([sys.executable, "-m", "gateway", "user", "create", "--role", role, name],
                       input=PASSWORD + "\n", cwd=ROOT, env=gw.env, text=True, check=True,
                       capture_output=True, timeout=60)
    yield gw
    gw.stop()


def send(gw: Gateway, raw: bytes, to: str = "clerk@example.lg.jp") -> None:
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
        smtp.sendmail("tanaka@example.com", [to], raw)


def ppap_mail() -> bytes:
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(PPAP_PASSWORD.encode())
        zf.writestr("yosan.txt", PPAP_TEXT)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "tanaka@example.com", "clerk@example.lg.jp", "予算案"
    msg.set_content("パスワードは別途お送りします。\n")
    msg.add_attachment(buf.getvalue(), maintype="application", subtype="zip",
                       filename="yosan.zip")
    return msg.as_bytes()


class Person:
    """One browser context (own cookies) signed in as `name`."""

    def __init__(self, browser: Any, gw: Gateway, name: str) -> None:
        self.base = f"http://127.0.0.1:{gw.api_port}"
        self.context = browser.new_context(locale="ja-JP")
        self.page = self.context.new_page()
        self.page.goto(f"{self.base}/console/")
        self.page.fill("input[name=name]", name)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("button.primary")
        self.page.wait_for_url(f"{self.base}/console/")

    def open(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def open_entry(self, subject: str) -> Any:
        page = self.open("/console/quarantine")
        page.click(f"text={subject}")
        return page


def wait_for(sink: Sink, match: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in sink.received if match(r)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("the sink did not receive the expected message")


def texts(received: Any) -> str:
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    return "\n".join(str(p.get_content()) for p in msg.walk()
                     if p.get_content_maintype() == "text")


def test_ppap_password_release_delivers_the_sanitized_content(
        browser: Any, gateway: Gateway, sink: Sink) -> None:
    send(gateway, ppap_mail())
    wait_for(sink, lambda r: "予算案" in str(r.message["Subject"]))
    operator = Person(browser, gateway, "sato")
    operator.shot("dashboard")
    page = operator.open_entry("予算案")
    # What the recipient got (the notice with the text), never the original's bytes.
    assert "無害化処理のお知らせ" in page.inner_text("pre.delivered")
    operator.shot("quarantine-entry-ppap")
    page.fill("input[name=password]", PPAP_PASSWORD)
    page.click("text=パスワードを入力して無害化")
    assert "解放しました" in page.inner_text("p.notice")
    released = wait_for(sink, lambda r: r.message["X-Mugaika-Password-Release-By"] == "sato")
    assert PPAP_TEXT.decode() in texts(released)


def test_four_eyes_release_of_an_executable(browser: Any, gateway: Gateway, sink: Sink) -> None:
    send(gateway, mail_with_attachment(subject="請求書の送付"))
    wait_for(sink, lambda r: "請求書の送付" in str(r.message["Subject"]))
    operator = Person(browser, gateway, "sato")
    operator.open("/console/quarantine")
    operator.shot("quarantine-list")
    page = operator.open_entry("請求書の送付")
    page.fill("input[name=reason]", "経理で必要")
    page.click("text=解放を申請")
    assert "承認者の承認を待っています" in page.inner_text("p.notice")

    approver = Person(browser, gateway, "suzuki")
    queue = approver.open("/console/requests")
    approver.shot("release-requests")
    queue.click("text=承認して解放")
    original = wait_for(sink, lambda r: r.message["X-Mugaika-Released-By"] == "suzuki")
    [attachment] = [p for p in original.message.walk() if p.get_filename() == "invoice.exe"]
    assert attachment.get_content() == EXE_BYTES


def test_recipient_request_denied_and_told_why(browser: Any, gateway: Gateway,
                                               sink: Sink) -> None:
    send(gateway, mail_with_attachment(subject="至急ご確認ください"))
    notice = wait_for(sink, lambda r: "至急ご確認ください" in str(r.message["Subject"]))
    link = LINK.search(texts(notice))
    assert link is not None, "the notice carries the recipient's link"
    recipient = browser.new_context(locale="ja-JP").new_page()
    recipient.goto(link[0])
    recipient.click("button")
    assert "申請を受け付けました" in recipient.inner_text("body")

    approver = Person(browser, gateway, "suzuki")
    page = approver.open_entry("至急ご確認ください")
    page.fill("form[action$='/deny'] input[name=reason]", "業務に関係のない添付のため")
    page.click("form[action$='/deny'] button")
    assert "却下しました" in page.inner_text("p.notice")
    told = wait_for(sink, lambda r: "却下" in str(r.message["Subject"]))
    assert told.rcpt_tos == ["clerk@example.lg.jp"]
    assert "業務に関係のない添付のため" in texts(told)


def test_auditor_sees_the_log_but_no_original(browser: Any, gateway: Gateway,
                                              sink: Sink) -> None:
    send(gateway, mail_with_attachment(subject="監査テスト"))
    wait_for(sink, lambda r: "監査テスト" in str(r.message["Subject"]))
    auditor = Person(browser, gateway, "kansa")
    log = auditor.open("/console/audit")
    assert "console.login" in log.inner_text("table")
    auditor.shot("audit-log")
    page = auditor.open_entry("監査テスト")
    assert page.locator("text=原本をダウンロード").count() == 0
    entry_id = page.url.rsplit("/", 1)[1]
    answer = page.request.get(f"{auditor.base}/console/quarantine/{entry_id}/original")
    assert answer.status == 403
    forged = page.request.post(f"{auditor.base}/console/logout", form={"csrf": "forged"})
    assert forged.status == 403, "a POST without the session's CSRF token is refused"


def test_english_switch_and_screens(browser: Any, gateway: Gateway, sink: Sink) -> None:
    send(gateway, mail_with_attachment(subject="English check"))
    wait_for(sink, lambda r: "English check" in str(r.message["Subject"]))
    login = browser.new_context(locale="ja-JP").new_page()
    login.goto(f"http://127.0.0.1:{gateway.api_port}/console/")
    SHOTS.mkdir(parents=True, exist_ok=True)
    login.screenshot(path=str(SHOTS / "login.png"))
    admin = Person(browser, gateway, "kanri")
    assert "sato" in admin.open("/console/admin").inner_text("table")
    admin.shot("admin")
    operator = Person(browser, gateway, "sato")
    page = operator.open("/console/messages")
    operator.shot("message-tracking")
    page.click("text=English check")
    assert "English check" in page.inner_text("h1")
    operator.shot("message-detail")
    page = operator.open("/console/messages")
    page.click("a.lang")
    assert page.locator("h1").inner_text() == "Message tracking"
    for path in ("/console/", "/console/quarantine", "/console/requests"):
        text = operator.open(path).inner_text("body")
        assert not re.search(r"\b(nav|field|status|dash|entry|msg)\.[a-z_]+\b", text)
    operator.shot("dashboard-en")
