"""A recipient asks for the original through the signed link in the notice."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from gateway.custody.audit import AuditQuery
from gateway.custody.stores import SqlStores
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.release_links import release_link
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.api_helpers import Api, build_api
from tests.store_helpers import hold_message

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")


@pytest.fixture
def link_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "release_link_base_url": "https://mugaika.example.lg.jp/",
        "release_link_key": SecretStr("s3cret-key-for-tests"),
    })


@pytest.fixture
def link_api(stores: SqlStores, link_settings: Settings) -> Iterator[Api]:
    api = build_api(stores, link_settings)
    hold_message(stores, link_settings, "Q1")
    hold_message(stores, link_settings, "Q2")
    yield api


def _local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_no_link_unless_configured(settings: Settings) -> None:
    assert release_link(settings, "Q1") is None


def test_opening_the_link_changes_nothing(link_api: Api, link_settings: Settings) -> None:
    """Link scanners fetch URLs: GET only shows the question."""
    url = release_link(link_settings, "Q1")
    assert url is not None and url.startswith("https://mugaika.example.lg.jp/release/Q1?")
    page = link_api.client.get(_local(url))
    assert page.status_code == 200 and "請求書の送付" in page.text and "<form" in page.text
    # what was held and why, in the notice's words
    assert "invoice.exe" in page.text and "この種類のファイルは受信できません" in page.text
    assert link_api.stores.quarantine.get("Q1").status == "held"  # type: ignore[union-attr]
    assert link_api.stores.audit.search(AuditQuery()).total == 0


def test_recipient_request_waits_for_an_approver(link_api: Api, link_settings: Settings) -> None:
    """The button files a request; only an approver's approval releases."""
    url = release_link(link_settings, "Q1")
    assert url is not None
    done = link_api.client.post(_local(url))
    assert done.status_code == 200 and "受け付けました" in done.text
    assert link_api.spool.put_calls == []
    again = link_api.client.post(_local(url))
    assert again.status_code == 409
    detail = link_api.client.get("/api/quarantine/Q1", headers=link_api.as_("auditor")).json()
    assert detail["status"] == "release_requested"
    assert detail["requests"][0]["requested_by"] == "notice-link"
    approved = link_api.client.post("/api/quarantine/Q1/release/approve",
                                    headers=link_api.as_("approver"))
    assert approved.status_code == 200
    # the original, and the recipient's mail saying it was approved
    assert [e.kind for _, e in link_api.spool.put_calls] == ["release", "notice"]


def test_forged_moved_or_expired_links_are_refused(
    link_api: Api, link_settings: Settings
) -> None:
    url = release_link(link_settings, "Q1")
    assert url is not None
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert link_api.client.post(_local(forged)).status_code == 401
    moved = url.replace("/release/Q1?", "/release/Q2?")
    assert link_api.client.post(_local(moved)).status_code == 401
    expired = release_link(link_settings, "Q1", now=0)
    assert expired is not None
    assert link_api.client.post(_local(expired)).status_code == 401
    assert link_api.stores.quarantine.get("Q1").status == "held"  # type: ignore[union-attr]


def test_link_never_releases_directly(stores: SqlStores, link_settings: Settings) -> None:
    """Even with one-step release for staff, a link only files a request."""
    one_step = link_settings.model_copy(update={"release_requires_approval": False})
    api = build_api(stores, one_step)
    hold_message(stores, one_step, "Q1")
    url = release_link(one_step, "Q1")
    assert url is not None
    assert api.client.post(_local(url)).status_code == 200
    assert api.spool.put_calls == []



def test_notice_carries_a_working_link(link_api: Api, link_settings: Settings) -> None:
    """The recipient's notice shows the link, and the link opens the confirmation page."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "staff@example.lg.jp", "x"
    msg.set_content("本文")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 200, maintype="application",
                       subtype="octet-stream", filename="setup.exe")
    out = rebuild(sanitize(msg.as_bytes(), "Q1", link_settings), link_settings)
    delivered = email.message_from_bytes(out, policy=email.policy.default)
    assert isinstance(delivered, EmailMessage)
    body = delivered.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    url = next(word for word in text.split() if word.startswith("https://mugaika.example.lg.jp/"))
    assert url.startswith("https://mugaika.example.lg.jp/release/Q1?")
    assert link_api.client.get(_local(url)).status_code == 200
