"""A delivery report's returned message is mail inside mail: sanitized as forwarded mail,
never handed over as raw MIME text (Office 365 reports are sniffed as text/plain)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings

SETTINGS = Settings(workers=1)
#: The returned message as Office 365 attaches it: its own headers first (libmagic then
#: calls it text/plain), ISO-2022-JP, quoted-printable.
RETURNED = (
    "ARC-Seal: i=1; a=rsa-sha256; d=outlook.example; s=arcselector; cv=none\r\n"
    "Message-ID: <returned@example.lg.jp>\r\n"
    "From: =?ISO-2022-JP?B?GyRCO1RLIUBvGyhC?= <staff@example.lg.jp>\r\n"
    "To: someone@example.com\r\n"
    "Subject: =?ISO-2022-JP?B?GyRCSlZBdyRHJDkbKEI=?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=ISO-2022-JP\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "=1B$B$K$c!<$s=1B(B\r\n"
).encode("ascii")


def _report(returned_type: str) -> bytes:
    boundary = "REPORT"
    return (
        "From: postmaster@outlook.example\r\nTo: staff@example.lg.jp\r\n"
        "Subject: Undeliverable\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Delivery has failed to these recipients.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; outlook.example\r\n\r\n"
        "Final-Recipient: rfc822; someone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"--{boundary}\r\nContent-Type: {returned_type}\r\n\r\n"
    ).encode("ascii") + RETURNED + f"\r\n--{boundary}--\r\n".encode("ascii")


@pytest.fixture(scope="module")
def ctx() -> Iterator[AttachmentContext]:
    with AttachmentContext.from_settings(SETTINGS) as context:
        yield context


@pytest.mark.parametrize("returned_type", ["message/rfc822", "message/global"])
def test_the_returned_message_is_sanitized_as_forwarded_mail(
        ctx: AttachmentContext, returned_type: str) -> None:
    result = sanitize(_report(returned_type), "Q1", SETTINGS, ctx)
    [returned] = [a for a in result.report.actions if a.part == "3"]  # the returned message
    assert returned.reason == "forwarded mail sanitized"
    delivered = email.message_from_bytes(rebuild(result, SETTINGS), policy=email.policy.default)
    assert isinstance(delivered, EmailMessage)
    [eml] = [p for p in delivered.iter_attachments() if p.get_content_type() == "message/rfc822"]
    inner = eml.get_payload(0)
    assert isinstance(inner, EmailMessage)
    assert str(inner["Subject"]).endswith("返送です")
    body = inner.get_body()
    assert body is not None and "にゃーん" in body.get_content()
    raw = delivered.as_bytes()
    assert b"=1B$B" not in raw and b"quoted-printable\r\n\r\n=1B" not in raw  # no raw MIME
