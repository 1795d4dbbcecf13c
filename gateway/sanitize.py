"""The pipeline: raw bytes → parse → body text + attachment renderings → report.

No I/O here: the worker feeds bytes in and takes a `Sanitized` value out, so the same
code serves SMTP, `mugaika sanitize` and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from converters.base import Rendering
from gateway.attachments import AttachmentContext, HeldOriginal, sanitize_attachment
from gateway.bodies import extract_body
from gateway.parse import ParsedMessage, parse
from gateway.report import Action, Report, Verdict, verdict_for
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
    """Sanitize one message; quarantine it whole when it cannot be read safely.

    `ctx` (the converter sandbox pool) is built once by the caller (the worker); without
    one, a context lives for this message only (the CLI and tests), paying the converter
    start-up if it converts.
    """
    if ctx is None:
        with AttachmentContext.from_settings(settings) as own:
            return sanitize(untrusted, queue_id, settings, own)
    parsed = parse(untrusted, settings.max_mime_depth, settings.max_mime_parts)
    if parsed.too_complex:
        report = Report(queue_id, Verdict.QUARANTINED, defects=parsed.defects,
                        reason=parsed.too_complex)
        whole = HeldOriginal("0", None, "message/rfc822", untrusted, parsed.too_complex)
        return Sanitized(parsed, report, "", held=(whole,))
    body = extract_body(parsed.leaves, settings)
    actions: list[Action] = list(body.actions)
    outputs: list[Rendering] = []
    held: list[HeldOriginal] = []
    names: set[str] = set()
    for leaf in body.attachments:
        outcome = sanitize_attachment(leaf, ctx, queue_id, settings, names)
        actions.extend(outcome.actions)
        outputs.extend(outcome.outputs)
        held.extend(outcome.held)
    actions.sort(key=lambda a: [int(x) if x.isdigit() else 0 for x in a.part.split(".")])
    report = Report(queue_id, verdict_for(tuple(actions)), tuple(actions),
                    parsed.defects + body.defects, body.link_warnings)
    return Sanitized(parsed, report, body.text, tuple(outputs), tuple(held))
