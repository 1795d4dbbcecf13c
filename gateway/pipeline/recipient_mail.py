"""Mail mugaika writes to recipients itself: the answer to a release request, the digest.

Both are built from scratch by the gateway's own MIME writer (`mimewrite`), like the
rebuilt mail: one text/plain part, UTF-8 or ISO-2022-JP as `output_charset` says, the
wording from the notice templates (`notice.<language>.toml`, overridable entry by entry
in `templates_dir`). Values that came with the held mail (its subject and sender) are
untrusted: they are cut short and stripped of control characters, and they go into the
body only, never into a header field. The pipeline knows no store: callers hand over
plain `HeldMail` values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email.utils import formatdate, make_msgid
from zoneinfo import ZoneInfo

from gateway.pipeline import mimewrite
from gateway.pipeline.notice import NoticeTemplates, load_templates
from gateway.settings import Settings

#: A digest lists at most this many entries (the oldest, which expire first), then a count.
DIGEST_MAX_ITEMS = 100
#: The display name in From: of every mail built here.
SENDER_NAME = "mugaika"


@dataclass(frozen=True)
class HeldMail:
    """What a recipient is told about one quarantined mail."""

    qid: str
    received_at: datetime
    sender: str
    subject: str | None
    reasons: tuple[str, ...]
    #: The signed request link (`release_links.release_link`), None when not configured.
    link: str | None = None


def notice_sender(settings: Settings) -> str:
    """The From: address: the postmaster, as mail to the bare `postmaster` is delivered."""
    return settings.postmaster or f"postmaster@{settings.accepted_domains[0]}"


def decision_mail(held: HeldMail, to: str, released: bool, reason: str | None,
                  settings: Settings, templates: NoticeTemplates | None = None) -> bytes:
    """Released or denied, which mail (its subject), and the approver's reason."""
    t = _templates(settings, templates, held.qid)
    key = "released" if released else "denied"
    lines = [t.line(f"decision_{key}"), "",
             t.line("item_received", received=_local(held.received_at, settings)),
             t.line("item_sender", sender=held.sender or "<>"), *_details(held, t)]
    if reason and reason.strip():
        lines += ["", t.line("decision_reason", reason=_one_line(reason, 1000))]
    return _compose(settings, to, t.line(f"decision_subject_{key}"), _finish(lines, t))


def digest_mail(to: str, items: Sequence[HeldMail], settings: Settings,
                templates: NoticeTemplates | None = None) -> bytes:
    """One recipient's held mail, oldest first, each with its request link when there is one."""
    t = _templates(settings, templates, "")
    shown = items[:DIGEST_MAX_ITEMS]
    head = "digest_head" if any(i.link for i in shown) else "digest_head_no_link"
    lines = [t.line(head, count=len(items))]
    for item in shown:
        lines += ["", t.line("digest_item", received=_local(item.received_at, settings),
                             sender=item.sender or "<>"),
                  *_details(item, t)]
        if item.link:
            lines.append(t.line("item_link", url=item.link))
    if len(items) > len(shown):
        lines += ["", t.line("digest_more", count=len(items) - len(shown))]
    return _compose(settings, to, t.line("digest_subject", count=len(items)), _finish(lines, t))


def _templates(settings: Settings, templates: NoticeTemplates | None, qid: str) -> NoticeTemplates:
    return dataclasses.replace(templates or load_templates(settings), common={
        "contact": _one_line(settings.notice_contact), "qid": _one_line(qid, 64)})


def _details(held: HeldMail, t: NoticeTemplates) -> list[str]:
    """Subject, why it is held (in the notice's plain words), the quarantine id."""
    reasons = " / ".join(t.reason(code, code) for code in held.reasons)
    lines = [t.line("item_subject", subject=held.subject or t.line("no_subject")),
             t.line("item_reasons", reason=reasons) if reasons else "",
             t.line("item_qid", qid=held.qid)]
    return [line for line in lines if line]


def _finish(lines: list[str], t: NoticeTemplates) -> str:
    return "\n".join([*lines, "", t.line("contact"), t.line("auto_footer")]) + "\n"


def _local(when: datetime, settings: Settings) -> str:
    zone: tzinfo = ZoneInfo(settings.digest_timezone)
    return f"{when.astimezone(zone):%Y-%m-%d %H:%M} ({settings.digest_timezone})"


def _one_line(value: str, limit: int = 200) -> str:
    """Control characters (line ends included) become spaces: one line, never a header."""
    flat = "".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in value).strip()
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _compose(settings: Settings, to: str, subject: str, body: str) -> bytes:
    charset = "iso-2022-jp" if settings.output_charset == "iso-2022-jp" else "utf-8"
    fields = "".join([
        mimewrite.address_field("From", [mimewrite.mailbox_tokens(SENDER_NAME,
                                                                  notice_sender(settings))]),
        mimewrite.address_field("To", [mimewrite.mailbox_tokens("", to)]),
        mimewrite.fold("Subject", mimewrite.text_tokens(_one_line(subject, 300), charset)),
        mimewrite.fold("Date", formatdate(localtime=True).split(" ")),
        mimewrite.fold("Message-ID", [make_msgid(domain=settings.hostname)]),
        # RFC 3834: an automatic message; well-behaved responders do not answer it.
        "Auto-Submitted: auto-generated\r\n",
    ])
    if not fields.isascii() or not mimewrite.is_crlf(fields.encode("ascii")):
        raise ValueError("a header field of a recipient mail is not clean")
    return mimewrite.message(fields, [mimewrite.text_part(body, charset == "iso-2022-jp")])
