"""A new message built from scratch: allow-listed headers, plain text, clean renderings.

Nothing of the original's bytes is copied: every header value was decoded by the parser
and is re-encoded here by the stdlib serializer, and the body is our own text.
"""

from __future__ import annotations

import email.policy
import re
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from gateway.notice import render_notice
from gateway.sanitize import Sanitized
from gateway.settings import Settings

ALLOWED_HEADERS = (
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID",
    "In-Reply-To", "References",
)

#: CRLF line endings, 78-column folding, RFC 2047 for non-ASCII: safe for any downstream.
OUTPUT_POLICY = email.policy.SMTP.clone(max_line_length=78)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(value: str) -> str:
    """Drop control characters so that a decoded CR/LF can never start a new header."""
    return _CONTROL.sub(" ", value).strip()


def rebuild(s: Sanitized, settings: Settings) -> bytes:
    msg = EmailMessage(policy=OUTPUT_POLICY)
    for name in ALLOWED_HEADERS:
        value = s.parsed.header(name)
        if value is None:
            continue
        value = _clean(value)
        if name == "Subject" and settings.subject_tag and not value.startswith(settings.subject_tag):
            value = f"{settings.subject_tag} {value}"
        try:
            msg[name] = value
        except (ValueError, IndexError, TypeError):
            msg[f"X-Mugaika-Invalid-{name}"] = "dropped"
    if "Date" not in msg:
        msg["Date"] = formatdate(localtime=True)
    if "Message-ID" not in msg:
        msg["Message-ID"] = make_msgid(domain=settings.hostname)
    msg["X-Mugaika-Verdict"] = s.report.verdict.value
    msg["X-Mugaika-Queue-Id"] = s.report.queue_id
    notice = render_notice(s.report, settings)
    text = f"{notice}\n\n{s.body}" if notice else s.body
    msg.set_content(text, subtype="plain", charset="utf-8", cte="base64")
    for out in s.outputs:
        maintype, _, subtype = out.content_type.partition("/")
        msg.add_attachment(out.data, maintype=maintype, subtype=subtype, filename=out.filename)
    return msg.as_bytes()
