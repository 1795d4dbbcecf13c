"""Assembling sample mails: stdlib-built MIME for ordinary ones, raw bytes for crafted ones.

Crafted mails (legacy charsets written as mailers write them, duplicate headers, broken
base64) cannot come from `email.message.EmailMessage`, which would repair them, so they
are written line by line here.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.message import EmailMessage

SENDER = '"外部 送信者" <sender@external.example>'
RECIPIENT = "user@example.lg.jp"
DATE = "Tue, 01 Apr 2025 09:00:00 +0900"
POLICY = email.policy.SMTP


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


def message_id(name: str) -> str:
    return f"<sample-{name}@samples.mugaika.invalid>"


def mime_mail(name: str, subject: str, text: str, attachments: list[Attachment],
              html: str | None = None) -> bytes:
    """A UTF-8 mail with a text (and optional HTML) body and base64 attachments."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = subject
    msg["Date"] = DATE
    msg["Message-ID"] = message_id(name)
    msg.set_content(text, charset="utf-8")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    for item in attachments:
        maintype, _, subtype = item.content_type.partition("/")
        msg.add_attachment(item.data, maintype=maintype, subtype=subtype, filename=item.filename)
    return _fixed_boundaries(msg, name)


def _fixed_boundaries(msg: EmailMessage, name: str) -> bytes:
    """Replace the generator's random boundaries so that a sample is the same every run."""
    for number, part in enumerate(msg.walk()):
        if part.is_multipart():
            part.set_boundary(f"=_mugaika_{name}_{number}")
    return msg.as_bytes()


def raw_mail(name: str, headers: list[tuple[str, str]], body: bytes,
             subject: str = "sample") -> bytes:
    """Header lines exactly as given (plus the common ones) and `body` verbatim, CRLF."""
    common = [("From", "sender@external.example"), ("To", RECIPIENT), ("Date", DATE),
              ("Message-ID", message_id(name)), ("MIME-Version", "1.0")]
    if not any(k.lower() == "subject" for k, _ in headers):
        common.append(("Subject", subject))
    lines = [f"{k}: {v}" for k, v in common + headers]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n\r\n"
    return head + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def forwarded(name: str, subject: str, text: str, inner: bytes) -> bytes:
    """A mail that forwards `inner` as a message/rfc822 attachment, as Outlook does."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = subject
    msg["Date"] = DATE
    msg["Message-ID"] = message_id(name)
    msg.set_content(text, charset="utf-8")
    inner_msg = email.message_from_bytes(inner, policy=POLICY)
    msg.add_attachment(inner_msg, filename="forwarded.eml")
    return _fixed_boundaries(msg, name)
