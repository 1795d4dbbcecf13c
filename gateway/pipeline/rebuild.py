"""A new message built from scratch: allow-listed headers, plain text, clean renderings.

Nothing of the original's bytes is copied. Each allow-listed header is decoded by the
parser and rebuilt here from parts we checked: addresses from the stdlib address parser
(so an encoded display name can never smuggle in a second address), message ids from a
strict `<id>` pattern, dates re-formatted, subjects stripped of control characters.

The bytes are written by `gateway.pipeline.mimewrite` (encoding and folding only; the stdlib
generator re-parsed every value and cost two thirds of this stage). Header injection
(CVE-2024-6923 in the 3.11.7 stdlib serializer): every value loses its control characters
here first, and `assert_safe_headers` checks the bytes written, so a regression in either
place fails closed instead of delivering.
"""

from __future__ import annotations

import email.policy
import re
from email.headerregistry import BaseHeader, HeaderRegistry
from email.utils import format_datetime, formatdate, make_msgid, parsedate_to_datetime

from converters.registry import CLEANED_TYPES
from gateway.pipeline import mimewrite
from gateway.pipeline.headers import decode_words
from gateway.pipeline.message import Sanitized
from gateway.pipeline.mimewrite import is_crlf
from gateway.pipeline.notice import NoticeTemplates, render_notice
from gateway.pipeline.sanitized_header import sanitized_tokens
from gateway.settings import Settings

ADDRESS_HEADERS = ("From", "To", "Cc", "Reply-To")
ALLOWED_HEADERS = (
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID",
    "In-Reply-To", "References",
)
#: What a rebuilt message may carry: the allow-list, MIME structure, and our own fields.
OUTPUT_HEADERS = frozenset(
    h.lower() for h in (*ALLOWED_HEADERS, "MIME-Version", "Content-Type",
                        "Content-Transfer-Encoding", "Content-Disposition",
                        "Authentication-Results")
)


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header registry, but each header class is made once per name.

    `HeaderRegistry.__getitem__` builds a new class with `type()` on every call; the
    classes depend only on the name, so the memo is a pure cache (a handful of names).
    """

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


#: How input address headers are parsed: the stdlib's parser (with the class memo), so
#: that an encoded display name can never become a second address.
_PARSE_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())
#: Renderings we attach. Anything else a converter might return (HTML, SVG, scripts) is
#: not delivered, whatever produced it.
SAFE_OUTPUT_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp",
                     "application/pdf", "text/plain", "text/csv",
                     # our own containers: a rebuilt forwarded mail (gateway.pipeline.forwarded) and
                     # a ZIP of renderings (archive_output = "zip", converters.archive_pack)
                     "message/rfc822", "application/zip",
                     # cleaned Office files that passed both keys (issue 20, docs/cdr.md)
                     *CLEANED_TYPES)

#: Control characters, and lone surrogates: the parser's stand-ins for undecodable 8-bit
#: header bytes, which no charset can write (UnicodeEncodeError in rebuild, found by fuzz/,
#: issue 17: the message was quarantined as a processing error instead of delivered).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
_ID_ATOMS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
#: RFC 5322 3.6.4's msg-id: `<dot-atom-text@dot-atom-text>` or `@[no-fold-literal]`.
#: Printable ASCII alone was not enough: `<a@b.]c>`, `<abc>`, `<a..b@c>` were copied and
#: the stdlib's strict parser finds them defective (found by fuzz/, issue 17). Such an
#: id is dropped (a Message-ID is then made anew), as any other malformed one.
_MSG_ID = re.compile(rf"<(?=[!-=?-~]{{3,250}}>){_ID_ATOMS}@(?:{_ID_ATOMS}|\[[!-Z^-~]*\])>")
_ADDR_SPEC = re.compile(r"[^\s<>()\[\]\\,;:\"@]{1,64}@[A-Za-z0-9.-]{1,253}")
_MAX_SUBJECT = 500
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: One mailbox in the forms nearly all mail uses: `a@b`, `Name <a@b>`, `"Name" <a@b>`,
#: `=?charset?B?...?= <a@b>`. The stdlib address parser reads these to the same name and
#: addr-spec, at a tenth of the cost; anything else (lists, comments, routes, odd quoting)
#: goes to it. Encoded text may not hold `<>,"` here, so it cannot hide a second address.
_SIMPLE_MAILBOX = re.compile(
    rf"(?:(?P<name>[A-Za-z0-9 .'_-]*|\"[^\"\\]*\"|(?:=\?[^?\s]+\?[BbQq]\?[^?\s<>,\"]*\?=[ \t]*)+)"
    rf"[ \t]*<(?P<spec>{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    rf"|(?P<bare>{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*))")


def clean(value: str) -> str:
    """Drop control characters so that a decoded CR/LF can never start a new header."""
    return _CONTROL.sub(" ", value).strip()


def rebuild(s: Sanitized, settings: Settings, templates: NoticeTemplates | None = None) -> bytes:
    """Serialize the sanitized message; raises ValueError only if our own output is unsafe.

    `templates` (from `gateway.pipeline.notice.load_templates`) lets a long-running worker load
    the notice wording once instead of per message.
    """
    charset = "iso-2022-jp" if settings.output_charset == "iso-2022-jp" else "utf-8"
    fields = [_addresses(name, s.parsed.raw_header(name), charset) for name in ADDRESS_HEADERS]
    fields.append(_subject(s.parsed.header("Subject"), settings, charset))
    fields.append(mimewrite.fold("Date", [_date(s.parsed.header("Date"))]))
    ids = _msg_ids(s.parsed.header("Message-ID"))
    fields.append(mimewrite.fold("Message-ID",
                                 [ids[0] if ids else make_msgid(domain=settings.hostname)]))
    for name in ("In-Reply-To", "References"):
        ids = _msg_ids(s.parsed.header(name))[:50]
        if ids:
            fields.append(mimewrite.fold(name, ids))
    fields.append(f"X-Mugaika-Verdict: {s.report.verdict.value}\r\n")
    fields.append(mimewrite.fold("X-Mugaika-Sanitized", sanitized_tokens(s.report, s.body)))
    fields.append(_authentication_results(s))
    actions = actions_summary(s) or (
        f"0=quarantined/{clean(s.report.reason)[:60]}" if s.report.reason else "none")
    fields.append(mimewrite.fold("X-Mugaika-Actions", actions.split(" ")))
    fields.append(mimewrite.fold("X-Mugaika-Queue-Id", [_ascii(s.report.queue_id)[:64]]))
    if s.report.link_warnings:
        fields.append(f"X-Mugaika-Link-Warnings: {len(s.report.link_warnings)}\r\n")
    parts = [_body(s, settings, templates), *_attachments(s)]
    data = mimewrite.message("".join(fields), parts)
    assert_safe_headers(data)
    return data


def _authentication_results(s: Sanitized) -> str:
    """RFC 8601's header with the checks made on the original (`gateway.pipeline.sender_auth`);
    the original's own Authentication-Results are never copied (nor anything else not on
    the allow-list), so none can claim our authserv-id."""
    auth = s.report.extra.get("auth")
    value = clean(str(auth.get("header", ""))) if isinstance(auth, dict) else ""
    value = value.encode("ascii", "replace").decode("ascii")[:2000]
    return mimewrite.fold("Authentication-Results", value.split(" ")) if value else ""


def _attachments(s: Sanitized) -> list[mimewrite.Part]:
    parts = []
    for out in s.outputs:
        base_type = out.content_type.split(";", 1)[0].strip().lower()
        if base_type not in SAFE_OUTPUT_TYPES:
            continue
        name = clean(out.filename).replace("/", "_").replace("\\", "_")[:150] or "file"
        if base_type == "message/rfc822":
            _assert_own_message(out.data)
        parts.append(mimewrite.attachment(base_type, name, out.data))
    return parts


def _assert_own_message(data: bytes) -> None:
    """A forwarded mail is attached as a message (clients show it as one), unencoded: so
    it must be one we wrote (7-bit, CRLF only, our headers), never a converter's bytes."""
    if not data.isascii() or re.search(rb"\r(?!\n)|(?<!\r)\n", data):
        raise ValueError("attached message is not 7-bit CRLF")
    assert_safe_headers(data)


def _ascii(value: str) -> str:
    return clean(value).encode("ascii", "replace").decode("ascii")


def actions_summary(s: Sanitized) -> str:
    """`part=action/code` for each action, ASCII only: what a filter downstream can read."""
    items = [f"{a.part}={a.action.value}" + (f"/{a.code}" if a.code else "")
             for a in s.report.actions[:30]]
    return clean(" ".join(items)).encode("ascii", "replace").decode("ascii")


def _addresses(name: str, untrusted: str | None, charset: str) -> str:
    """The field with every valid mailbox of the original, or "" when none is left."""
    if untrusted is None:
        return ""
    boxes = [mimewrite.mailbox_tokens(_display_name(display), spec, charset)
             for display, spec in _mailboxes(name, clean(untrusted))[:200]
             if spec.isascii() and _ADDR_SPEC.fullmatch(spec)]
    return mimewrite.address_field(name, boxes) if boxes else ""


def _mailboxes(name: str, value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) of each mailbox; [] when the header does not parse."""
    simple = _SIMPLE_MAILBOX.fullmatch(value)
    if simple is not None:
        display = (simple["name"] or "").strip()
        if display.startswith('"'):
            display = display[1:-1]
        return [(display, simple["spec"] or simple["bare"])]
    try:
        header = _PARSE_POLICY.header_factory(name, value)
        parsed = getattr(header, "addresses", ())
    except Exception:  # an unparsable address header is dropped
        return []
    return [(a.display_name, a.addr_spec or "") for a in parsed]


def _display_name(untrusted: str) -> str:
    """The stdlib leaves words it cannot decode (CP50220, CP932) encoded: we decode them."""
    if "=?" in untrusted:
        untrusted = decode_words(untrusted)
    return " ".join(clean(untrusted).split())[:200]


def _subject(untrusted: str | None, settings: Settings, charset: str) -> str:
    subject = clean(untrusted or "")[:_MAX_SUBJECT]
    tag = settings.subject_tag
    if tag and not subject.startswith(tag):
        subject = f"{tag} {subject}".strip()
    return mimewrite.fold("Subject", mimewrite.text_tokens(subject, charset)) if subject else ""


def _date(untrusted: str | None) -> str:
    try:
        return format_datetime(parsedate_to_datetime(clean(untrusted or "")))
    except (TypeError, ValueError, IndexError, OverflowError):
        return formatdate(localtime=True)


def _msg_ids(untrusted: str | None) -> list[str]:
    return _MSG_ID.findall(untrusted or "")


def _body(s: Sanitized, settings: Settings,
          templates: NoticeTemplates | None) -> mimewrite.Part:
    notice = render_notice(s.report, settings, templates)
    text = f"{notice}\n\n{s.body}" if notice and s.body else (notice or s.body)
    text = text.rstrip("\n") + "\n"
    if settings.output_charset == "iso-2022-jp":  # falls back to UTF-8 rather than lose text
        return mimewrite.text_part(_wrap_long_lines(text), iso2022jp=True)
    return mimewrite.text_part(text, iso2022jp=False)


def _wrap_long_lines(text: str, width: int = 300) -> str:
    """Split lines that would exceed SMTP's 998-octet limit once 7-bit encoded."""
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(line[i:i + width] for i in range(0, max(len(line), 1), width))
    return "\n".join(out)


def assert_safe_headers(data: bytes) -> None:
    """Every header line is an output field or a fold; no bare CR or LF anywhere."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]  # not partition(): that copied the body too
    if not is_crlf(head):
        raise ValueError("rebuilt header has a bare CR or LF")
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].decode("ascii", "replace").lower()
        if name not in OUTPUT_HEADERS and not name.startswith("x-mugaika-"):
            raise ValueError("rebuilt message has a header outside the allow-list")
