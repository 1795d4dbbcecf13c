"""Outlook containers: .msg (extract-msg) and TNEF winmail.dat (tnefparse).

Both are mail inside a file. The body becomes a UTF-8 .txt rendering we write ourselves
(a short header block, then the plain text: HTML bodies reduced to text), and every
attachment comes back as a member, so that it is sanitized like a top-level attachment
one level deeper (a .docx in a winmail.dat is rendered like any .docx). An RTF-only body,
common in winmail.dat, is handed on as a member "body.rtf" for the Office converter.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

import extract_msg
import tnefparse
from extract_msg.enums import AttachmentType, ErrorBehavior
from selectolax.lexbor import LexborHTMLParser

from converters import errors
from converters.archive_common import clean_path
from converters.base import Conversion, Member, Rendering
from converters.charset import decode_bytes
from converters.limits import ConversionPolicy

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
TNEF_MAGIC = b"\x78\x9f\x3e\x22"
#: extract-msg's tolerance switches: a broken or unknown attachment is reported, not fatal.
_TOLERANT = (ErrorBehavior.ATTACH_NOT_IMPLEMENTED | ErrorBehavior.ATTACH_BROKEN
             | ErrorBehavior.STANDARDS_VIOLATION | ErrorBehavior.OLE_DEFECT_INCORRECT
             | ErrorBehavior.RTFDE_MALFORMED | ErrorBehavior.RTFDE_UNKNOWN_ERROR)


def html_to_text(untrusted_html: str) -> str:
    """Visible text of an HTML body, scripts and styles dropped, one block per line."""
    tree = LexborHTMLParser(untrusted_html)
    for node in tree.css("script, style, head"):
        node.decompose()
    body = tree.body or tree.root
    return body.text(separator="\n", strip=True) if body is not None else ""


def _header_block(fields: list[tuple[str, str]]) -> str:
    return "".join(f"{label}: {value}\n" for label, value in fields if value) + "\n"


class OutlookConverter:
    name = "outlook"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        stem = PurePosixPath(filename.replace("\\", "/")).stem or "message"
        if untrusted.startswith(OLE_MAGIC):
            text, members, notes = _from_msg(untrusted)
        elif untrusted.startswith(TNEF_MAGIC):
            text, members, notes = _from_tnef(untrusted)
        else:
            raise errors.Unsupported("not an Outlook file")
        if len(members) > policy.limits.archive_max_members:
            raise errors.LimitExceeded("too many attachments")
        if sum(len(m.data) for m in members) > policy.limits.archive_max_total_bytes:
            raise errors.LimitExceeded("attachments too large")
        body = Rendering(f"{stem}.txt", "text/plain", text.encode("utf-8"))
        return Conversion(outputs=(body,), members=tuple(members), notes=tuple(notes))


def _from_msg(untrusted: bytes) -> tuple[str, list[Member], list[str]]:
    # extract-msg logs at CRITICAL for ordinary oddities; the report says what matters.
    logging.getLogger("extract_msg").setLevel(logging.ERROR)
    try:
        msg = extract_msg.openMsg(untrusted, errorBehavior=_TOLERANT, delayAttachments=False)
    except Exception as exc:  # extract-msg raises many unrelated types on bad input
        raise errors.Corrupt("Outlook message unreadable") from exc
    try:
        # Not every MSG class (appointment, task, contact) has every field: getattr.
        fields = [(label, str(getattr(msg, attr, None) or "")) for label, attr in
                  (("From", "sender"), ("To", "to"), ("Cc", "cc"), ("Date", "date"),
                   ("Subject", "subject"))]
        members, notes = _msg_attachments(msg)
        text = _header_block(fields) + _msg_body(msg, members)
    finally:
        msg.close()
    return text, members, notes


def _msg_body(msg: Any, members: list[Member]) -> str:
    body, html, rtf = (getattr(msg, a, None) for a in ("body", "htmlBody", "rtfBody"))
    if body:
        return str(body)
    if html:
        return html_to_text(decode_bytes(html)[0])
    if rtf:
        members.append(Member("body.rtf", bytes(rtf)))
    return ""


def _msg_attachments(msg: Any) -> tuple[list[Member], list[str]]:
    members: list[Member] = []
    notes: list[str] = []
    for n, att in enumerate(msg.attachments, 1):
        name = clean_path(str(att.getFilename() if hasattr(att, "getFilename") else "")) or (
            f"attachment-{n}")
        if att.type is AttachmentType.DATA and isinstance(att.data, bytes):
            members.append(Member(name, att.data))
        elif att.type is AttachmentType.MSG and att.data is not None:
            inner = name if name.lower().endswith(".msg") else f"{name}.msg"
            members.append(Member(inner, att.data.exportBytes()))
        else:
            notes.append(f"attachment not extracted: {name}")
    return members, notes


def _from_tnef(untrusted: bytes) -> tuple[str, list[Member], list[str]]:
    try:
        tnef = tnefparse.TNEF(untrusted)
    except Exception as exc:  # tnefparse raises struct/index/value errors on bad input
        raise errors.Corrupt("winmail.dat unreadable") from exc
    codepage = tnef.codepage or "cp1252"
    subject = next((str(o.data) for o in tnef.msgprops
                    if o.name == tnefparse.TNEF.ATTSUBJECT), "")
    members: list[Member] = []
    for n, att in enumerate(tnef.attachments, 1):
        name = clean_path(_tnef_name(att, codepage))
        members.append(Member(name or f"attachment-{n}", bytes(att.data)))
    text = _header_block([("Subject", subject)]) + _tnef_body(tnef, codepage, members)
    return text, members, []


def _tnef_name(att: Any, codepage: str) -> str:
    """tnefparse decodes 8-bit titles as UTF-8 and fails on CP932: decode them ourselves."""
    try:
        name = att.long_filename()
    except UnicodeDecodeError:
        raw = getattr(att, "_name", b"")
        name = decode_bytes(raw, codepage)[0] if isinstance(raw, bytes) else str(raw)
    return str(name or "").strip("\x00")


def _tnef_body(tnef: Any, codepage: str, members: list[Member]) -> str:
    for value, is_html in ((tnef.body, False), (tnef.htmlbody, True)):
        if not value:
            continue
        text = value if isinstance(value, str) else decode_bytes(value, codepage)[0]
        return html_to_text(text) if is_html else text.rstrip("\x00")
    rtf = tnef.rtfbody
    if rtf:
        members.append(Member("body.rtf", bytes(rtf)))
    return ""
