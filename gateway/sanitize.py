"""The pipeline: raw bytes → parse → body text + attachment renderings → report.

No I/O here: the worker feeds bytes in and takes a `Sanitized` value out, so the same
code serves SMTP, `mugaika sanitize` and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from converters.base import Rendering
from converters.charset import decode_bytes
from gateway.attachments import AttachmentContext, HeldOriginal, sanitize_attachment
from gateway.parse import Leaf, ParsedMessage, parse
from gateway.report import Action, ActionKind, Report, Verdict, verdict_for
from gateway.settings import Settings


@dataclass(frozen=True)
class Sanitized:
    parsed: ParsedMessage
    report: Report
    body: str
    outputs: tuple[Rendering, ...] = ()
    held: tuple[HeldOriginal, ...] = ()


def sanitize(untrusted: bytes, queue_id: str, settings: Settings,
             ctx: AttachmentContext | None = None) -> Sanitized:
    """`ctx` is built once by the caller (the worker); without one, a context lives for this
    message only (the CLI and tests), paying the converter start-up if it converts."""
    if ctx is None:
        with AttachmentContext.from_settings(settings) as own:
            return sanitize(untrusted, queue_id, settings, own)
    parsed = parse(untrusted, settings.max_mime_depth, settings.max_mime_parts)
    if parsed.too_complex:
        report = Report(queue_id, Verdict.QUARANTINED, defects=parsed.defects,
                        reason=parsed.too_complex)
        whole = HeldOriginal("0", None, "message/rfc822", untrusted, parsed.too_complex)
        return Sanitized(parsed, report, "", held=(whole,))
    body_leaf = _body_leaf(parsed.leaves)
    actions: list[Action] = []
    outputs: list[Rendering] = []
    held: list[HeldOriginal] = []
    body = ""
    for leaf in parsed.leaves:
        if leaf is body_leaf:
            body = decode_bytes(leaf.payload, leaf.charset)[0]
            actions.append(_kept(leaf))
            continue
        outcome = sanitize_attachment(leaf, ctx)
        actions.extend(outcome.actions)
        outputs.extend(outcome.outputs)
        held.extend(outcome.held)
    report = Report(queue_id, verdict_for(tuple(actions)), tuple(actions), parsed.defects)
    return Sanitized(parsed, report, body, tuple(outputs), tuple(held))


def _body_leaf(leaves: tuple[Leaf, ...]) -> Leaf | None:
    for leaf in leaves:
        if leaf.content_type == "text/plain" and leaf.disposition != "attachment":
            return leaf
    return None


def _kept(leaf: Leaf) -> Action:
    return Action(leaf.part, leaf.filename, leaf.content_type, leaf.content_type,
                  ActionKind.KEPT, "plain text body")
