"""One message at one level of nesting: opened, its attachments converted, reported.

No I/O here: the worker feeds bytes in and takes a `Sanitized` value out, so the same
code serves SMTP, `mugaika sanitize` and the tests. Mail inside mail is not this
module's business: `convert` hands it to the `nested` function it is given
(`gateway.pipeline.sanitize` owns that recursion), so no module of the pipeline imports
one that imports it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from converters.base import Rendering
from converters.emoji import sender_carrier
from gateway.pipeline.attachments import (
    AttachmentContext,
    HeldOriginal,
    NestedMail,
    sanitize_attachment,
)
from gateway.pipeline.bodies import Body, extract_body
from gateway.pipeline.parse import ParsedMessage, parse
from gateway.pipeline.report import Action, Report, Verdict, verdict_for
from gateway.settings import Settings


@dataclass(frozen=True)
class Sanitized:
    parsed: ParsedMessage
    report: Report
    body: str
    outputs: tuple[Rendering, ...] = ()
    held: tuple[HeldOriginal, ...] = ()


@dataclass(frozen=True)
class Opened:
    """A message parsed and its body text extracted: all of sanitize that runs no
    converter. The worker does this much on its event loop for a small message, and goes
    on there when nothing needs the sandbox (`gateway.queue.worker.begin_here`)."""

    untrusted: bytes
    queue_id: str
    parsed: ParsedMessage
    #: None: the message is too complex to read (`parsed.too_complex` says why).
    body: Body | None

    @property
    def needs_sandbox(self) -> bool:
        return self.body is not None and bool(self.body.attachments)


def open_message(untrusted: bytes, queue_id: str, settings: Settings) -> Opened:
    """Parse and extract the body: pure computation on the bytes, no converter."""
    parsed = parse(untrusted, settings.max_mime_depth, settings.max_mime_parts)
    with sender_carrier(parsed.carrier):
        body = None if parsed.too_complex else extract_body(parsed.leaves, settings)
    return Opened(untrusted, queue_id, parsed, body)


def held_whole(opened: Opened, reason: str) -> Sanitized:
    """The whole message held (nothing of it delivered but the notice), for `reason`."""
    report = Report(opened.queue_id, Verdict.QUARANTINED, defects=opened.parsed.defects,
                    reason=reason)
    whole = HeldOriginal("0", None, "message/rfc822", opened.untrusted, reason)
    return Sanitized(opened.parsed, report, "", held=(whole,))


def convert(opened: Opened, settings: Settings, ctx: AttachmentContext | None,
            nested: NestedMail) -> Sanitized:
    """Convert the attachments of an opened message and say what was done.

    `ctx` (the converter sandbox pool) must be given when the message has attachments;
    forwarded mail among them goes to `nested`. A message too complex to read is held
    whole.
    """
    parsed, body, queue_id = opened.parsed, opened.body, opened.queue_id
    if body is None:
        return held_whole(opened, parsed.too_complex)
    actions: list[Action] = list(body.actions)
    outputs: list[Rendering] = []
    held: list[HeldOriginal] = []
    names: set[str] = set()
    for leaf in body.attachments:
        assert ctx is not None, "a message with attachments needs a converter context"
        outcome = sanitize_attachment(leaf, ctx, queue_id, settings, names, nested)
        actions.extend(outcome.actions)
        outputs.extend(outcome.outputs)
        held.extend(outcome.held)
    actions.sort(key=lambda a: [int(x) if x.isdigit() else 0 for x in a.part.split(".")])
    report = Report(queue_id, verdict_for(tuple(actions)), tuple(actions),
                    parsed.defects + body.defects, body.link_warnings)
    return Sanitized(parsed, report, body.text, tuple(outputs), tuple(held))
