"""Signed links in the notice that let a recipient ask for the original.

A link carries the quarantine id, an expiry and an HMAC-SHA256 over both with
`release_link_key`, so it cannot be forged or pointed at another entry. Opening it
(GET) only shows a confirmation page — mail scanners and link previews fetch URLs — and
the button (POST) files an ordinary release request, which an approver must still
approve. The link is the same for every recipient of the message, because the sanitized
message is one message; the audit log records the request as `notice-link` with the
client address.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from gateway.settings import Settings

LINK_ACTOR = "notice-link"
LINK_ROLE = "recipient"


def _signature(secret: bytes, entry_id: str, expires: int) -> str:
    return hmac.new(secret, f"{entry_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def release_link(settings: Settings, entry_id: str, now: float | None = None) -> str | None:
    """The URL to put in the notice, or None when links are not configured."""
    if not settings.release_link_base_url or settings.release_link_key is None:
        return None
    days = settings.quarantine_retention_days
    expires = int((now if now is not None else time.time()) + days * 86400)
    secret = settings.release_link_key.get_secret_value().encode()
    query = urlencode({"e": expires, "s": _signature(secret, entry_id, expires)})
    return f"{settings.release_link_base_url.rstrip('/')}/release/{entry_id}?{query}"


def link_is_valid(
    settings: Settings, entry_id: str, untrusted_expires: int, untrusted_sig: str,
    now: float | None = None,
) -> bool:
    if settings.release_link_key is None:
        return False
    if untrusted_expires < (now if now is not None else time.time()):
        return False
    secret = settings.release_link_key.get_secret_value().encode()
    expected = _signature(secret, entry_id, untrusted_expires)
    return hmac.compare_digest(expected, untrusted_sig)
