"""Delivery status notifications (RFC 3464) for mail that could not be delivered."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage, Message
from email.utils import formatdate, make_msgid

from gateway.settings import Settings

_HUMAN = {
    "ja": ("配送できなかったメールがあります。以下の宛先には届いていません。\n\n{lines}\n\n"
           "無害化ゲートウェイ mugaika ({host}) からの自動通知です。"),
    "en": ("Your message could not be delivered to the recipients below.\n\n{lines}\n\n"
           "This is an automatic notice from the mugaika gateway at {host}."),
}


def _status(reply: str) -> str:
    """The RFC 3463 code from a reply such as `550 5.1.1 no such user`, else a generic one."""
    parts = reply.split()
    if len(parts) > 1 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return "5.0.0" if reply.startswith("5") else "4.0.0"


def build_dsn(
    *,
    queue_id: str,
    mail_from: str,
    failures: dict[str, str],
    original_headers: bytes,
    arrival: float,
    remote: str,
    settings: Settings,
) -> bytes:
    """A multipart/report bounce to `mail_from` listing each failed recipient and why."""
    lines = "\n".join(f"<{rcpt}>: {reply}" for rcpt, reply in failures.items())
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"Mail Delivery System <MAILER-DAEMON@{settings.hostname}>"
    msg["To"] = mail_from
    msg["Subject"] = ("配送不能通知 / Undelivered Mail Returned to Sender")
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=settings.hostname)
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(_HUMAN[settings.language].format(lines=lines, host=settings.hostname))
    msg.make_mixed()
    msg.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    msg.set_boundary(f"=_dsn_{queue_id}")

    status = EmailMessage(policy=email.policy.SMTP)
    status.set_payload(_delivery_status(queue_id, failures, arrival, remote, settings))
    status["Content-Type"] = "message/delivery-status"
    msg.attach(status)

    headers = EmailMessage(policy=email.policy.SMTP)
    headers.set_payload(original_headers.decode("ascii", "replace"))
    headers["Content-Type"] = "text/rfc822-headers"
    msg.attach(headers)
    return msg.as_bytes()


def _fields(pairs: list[tuple[str, str]]) -> Message:
    block = Message(policy=email.policy.SMTP)
    for name, value in pairs:
        block[name] = value
    return block


def _delivery_status(queue_id: str, failures: dict[str, str], arrival: float, remote: str,
                     settings: Settings) -> list[Message | str]:
    """The per-message block, then one block per failed recipient (RFC 3464 section 2)."""
    blocks: list[Message | str] = [_fields([
        ("Reporting-MTA", f"dns; {settings.hostname}"),
        ("X-Mugaika-Queue-ID", queue_id),
        ("Arrival-Date", formatdate(arrival)),
    ])]
    for rcpt, reply in failures.items():
        pairs = [("Final-Recipient", f"rfc822; {rcpt}"), ("Action", "failed"),
                 ("Status", _status(reply))]
        if ":" in remote and not remote.startswith("maildir:"):
            pairs.append(("Remote-MTA", f"dns; {remote.rsplit(':', 1)[0]}"))
        pairs.append(("Diagnostic-Code", f"smtp; {' '.join(reply.split())}"))
        blocks.append(_fields(pairs))
    return blocks
