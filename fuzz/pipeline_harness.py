"""parse → sanitize → rebuild under test: untrusted bytes in, a safe message out.

`check(raw, settings, ctx)` runs the pipeline the way the worker does
(`gateway.pipeline.sanitize.sanitize`, then `gateway.pipeline.rebuild.rebuild`) and says
what is wrong with the result ([] when nothing is):
- neither stage raises (the worker would turn it into a "processing_error" quarantine:
  the recipient loses the mail over a bug);
- the output is 7-bit, CRLF only (no bare CR or LF), lines of at most 998 octets;
- it re-parses with the stdlib's strict SMTP policy, with no defect in any part or field;
- top-level fields are the allow-list (`rebuild.OUTPUT_HEADERS`, `X-Mugaika-*`), each
  part's fields only Content-Type/-Transfer-Encoding/-Disposition;
- only multipart/mixed containers, no text/html, and every leaf a rendering type
  (`rebuild.SAFE_OUTPUT_TYPES`); a forwarded mail inside is checked the same way.

Attachments need converters. `FakeConverters` answers in-process instead of the sandbox:
the content's type by libmagic (what the sandboxed detector runs) and, for a type the
registry would convert, a small text rendering. So the gateway's own attachment code
(names, block lists, nested mail, removal, the notice) runs at fuzzing speed; the real
sandbox is `real_context()`, for a smaller budget.
"""

from __future__ import annotations

import email
import email.policy
import traceback
from email.message import Message
from typing import Any

from converters.base import Conversion, Rendering
from converters.errors import SandboxFailure
from converters.limits import ConversionPolicy
from converters.names import stem
from converters.registry import DETECTOR, Registry, detect_type
from gateway.pipeline.attachments import AttachmentContext, policy_from_settings
from gateway.pipeline.rebuild import OUTPUT_HEADERS, SAFE_OUTPUT_TYPES, rebuild
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings

SETTINGS = Settings()
SETTINGS_JIS = Settings(output_charset="iso-2022-jp")
#: Fields a part of the rebuilt message may have (mimewrite.text_part / attachment).
PART_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
_STRICT = email.policy.SMTP.clone(raise_on_defect=True)


class FakeConverters:
    """The sandbox pool's `convert`, in-process and cheap (see the module docstring)."""

    def convert(self, name: str, untrusted: bytes, filename: str, policy: ConversionPolicy,
                on_image: object = None) -> Conversion:
        if name == DETECTOR[0]:
            return Conversion(extra={"detected_type": detect_type(untrusted)})
        if untrusted[:1] == b"\x00":  # some conversions fail, as real ones do
            raise SandboxFailure("fuzz: converter failed")
        text = untrusted[:300].decode("utf-8", "replace")
        return Conversion(outputs=(Rendering(f"{stem(filename)}.txt", "text/plain",
                                             text.encode("utf-8")),))

    def close(self) -> None:
        pass


def fake_context(settings: Settings = SETTINGS) -> AttachmentContext:
    """Converters answered by `FakeConverters`, nothing local (no LibreOffice)."""
    pool: Any = FakeConverters()
    return AttachmentContext(policy_from_settings(settings), Registry(), pool, settings)


def real_context(settings: Settings = SETTINGS) -> AttachmentContext:
    """The real sandbox pool: converters as the gateway runs them (slow: a budget)."""
    return AttachmentContext.from_settings(settings)


def check(raw: bytes, settings: Settings, ctx: AttachmentContext) -> list[str]:
    """What is wrong with the pipeline's handling of `raw` ([] when nothing is)."""
    try:
        out = rebuild(sanitize(raw, "Q-FUZZ", settings, ctx), settings)
    except Exception:
        return ["pipeline raised:\n" + traceback.format_exc()]
    return output_problems(out)


def output_problems(out: bytes) -> list[str]:
    """Why `out` is not a safe rebuilt message ([] when it is)."""
    if not out.isascii():
        return ["output is not 7-bit"]
    if out.count(b"\r\n") != out.count(b"\n") or out.count(b"\r\n") != out.count(b"\r"):
        return ["output has a bare CR or LF"]
    if max(len(line) for line in out.split(b"\r\n")) > 998:
        return ["output has a line over 998 octets"]
    try:
        msg = email.message_from_bytes(out, policy=_STRICT)
        return message_problems(msg)
    except Exception as error:  # strict: a defect raises
        return [f"output does not re-parse strictly: {type(error).__name__}: {error}"]


def message_problems(msg: Message, depth: int = 0) -> list[str]:
    """The allow-lists and the part types, for a message and its forwarded mail."""
    problems = [f"header {name} outside the allow-list" for name in msg
                if name.lower() not in OUTPUT_HEADERS and not name.lower().startswith("x-mugaika-")]
    return problems + _field_defects(msg) + _entity_problems(msg, depth)


def _entity_problems(part: Message, depth: int) -> list[str]:
    """One entity's type and body, and its children (`Message.walk` would go into a
    forwarded mail as if it were a part of ours: it is checked as a message instead)."""
    ctype = part.get_content_type()
    problems = [f"{ctype} defect {d!r}" for d in part.defects]
    if ctype == "message/rfc822":
        inner = part.get_payload(0)
        if depth > 5 or not isinstance(inner, Message):
            return [*problems, "forwarded mail not a message"]
        return problems + message_problems(inner, depth + 1)
    if part.is_multipart():
        if ctype != "multipart/mixed":
            problems.append(f"container {ctype}")
        for child in part.get_payload():
            if not isinstance(child, Message):
                return [*problems, f"{ctype} holds a string"]
            problems += [f"part header {name}" for name in child
                         if name.lower() not in PART_HEADERS]
            problems += _field_defects(child) + _entity_problems(child, depth)
        return problems
    if ctype not in SAFE_OUTPUT_TYPES:
        return [*problems, f"part of type {ctype}"]
    try:
        part.get_content()  # type: ignore[attr-defined]
    except Exception as error:
        problems.append(f"{ctype} part does not decode: {type(error).__name__}")
    return problems


def _field_defects(msg: Message) -> list[str]:
    """Defects the strict parser found in a field's value (kept on the field, not raised)."""
    problems = []
    for name, value in msg.items():
        for defect in getattr(value, "defects", ()):
            problems.append(f"{name}: {type(defect).__name__}")
    return problems
