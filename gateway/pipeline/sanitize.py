"""The pipeline: raw bytes → parse → body text + attachment renderings → report.

This module owns the one recursion of the pipeline: mail inside mail
(`gateway.pipeline.forwarded`) is sanitized by the whole pipeline again, through a
function handed down to the attachment stage, on the same converter context.
"""

from __future__ import annotations

from gateway.pipeline.attachments import AttachmentContext, AttachmentOutcome, NestedMail
from gateway.pipeline.forwarded import sanitize_forwarded
from gateway.pipeline.message import Opened, Sanitized, convert, open_message
from gateway.pipeline.parse import Leaf
from gateway.settings import Settings


def sanitize(untrusted: bytes, queue_id: str, settings: Settings,
             ctx: AttachmentContext | None = None) -> Sanitized:
    """Sanitize one message; quarantine it whole when it cannot be read safely."""
    return finish(open_message(untrusted, queue_id, settings), settings, ctx)


def finish(opened: Opened, settings: Settings, ctx: AttachmentContext | None) -> Sanitized:
    """Convert the attachments of an opened message and say what was done.

    `ctx` (the converter sandbox pool) is built once by the caller (the worker); without
    one, a context lives for this message only (the CLI and tests), paying the converter
    start-up, and only when there is something to convert.
    """
    if ctx is None and opened.needs_sandbox:
        with AttachmentContext.from_settings(settings) as own:
            return finish(opened, settings, own)
    return convert(opened, settings, ctx, _nested(ctx))


def _nested(ctx: AttachmentContext | None) -> NestedMail:
    """Forwarded mail sanitized again on `ctx`, so that nested mail reuses the warm pools."""

    def again(untrusted: bytes, queue_id: str, settings: Settings) -> Sanitized:
        return sanitize(untrusted, queue_id, settings, ctx)

    def nested(leaf: Leaf, queue_id: str, settings: Settings) -> AttachmentOutcome:
        return sanitize_forwarded(leaf, queue_id, settings, again)

    return nested
