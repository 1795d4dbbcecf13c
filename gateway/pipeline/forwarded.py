"""Mail inside mail (message/rfc822 parts, .eml files): sanitized by the whole pipeline again.

A forwarded message is a message: it gets the same parse, the same attachment converters
and the same rebuild as the outer one, and arrives as a sanitized `.eml` built from
scratch (or, by policy, as plain text inlined into a .txt rendering). What happened
inside is reported as actions of the outer message, with parts "2/1.3" style, and the
inner originals that were removed are held in quarantine with the outer message.

Recursion is bounded by `Settings.forward_max_depth`: each level runs with a copy of the
settings whose budget is one lower, so no global state is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from converters.base import Rendering
from gateway.pipeline.attachments import AttachmentOutcome, HeldOriginal
from gateway.pipeline.message import Sanitized
from gateway.pipeline.notice import render_notice
from gateway.pipeline.parse import Leaf
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.report import Action, ActionKind, Verdict
from gateway.settings import Settings

FORWARD_REASON = "forwarded mail sanitized"


Resanitize = Callable[[bytes, str, Settings], Sanitized]


def sanitize_forwarded(leaf: Leaf, queue_id: str, settings: Settings,
                       resanitize: Resanitize) -> AttachmentOutcome:
    """The forwarded message in `leaf.payload`, sanitized; the original held in quarantine.

    `resanitize` is the pipeline to run on the inner message: `gateway.pipeline.sanitize`
    passes its own, bound to the outer message's converter context, so that nested mail
    reuses the warm sandbox pool.
    """
    if settings.forward_max_depth <= 0:
        return _held(leaf, "limit_exceeded", "forwarded mail nested too deeply")
    inner_settings = settings.model_copy(
        update={"forward_max_depth": settings.forward_max_depth - 1})
    inner = resanitize(leaf.payload, queue_id, inner_settings)
    if inner.report.verdict is Verdict.QUARANTINED:
        return _held(leaf, "too_complex", inner.report.reason or "forwarded mail unreadable")
    rendering = _render(inner, _stem(leaf), inner_settings)
    own = Action(
        part=leaf.part, filename=leaf.filename, declared_type=leaf.content_type,
        detected_type="message/rfc822", action=ActionKind.CONVERTED, reason=FORWARD_REASON,
        outputs=(rendering.filename,), quarantined=True,
    )
    nested = tuple(_nested_action(leaf, a) for a in inner.report.actions
                   if a.action is not ActionKind.KEPT)
    original = HeldOriginal(leaf.part, leaf.filename, leaf.content_type, leaf.payload,
                            "forwarded")
    held = (original, *(_nested_held(leaf, h) for h in inner.held))
    extra = () if settings.forward_output == "eml" else inner.outputs
    return AttachmentOutcome(actions=(own, *nested), outputs=(rendering, *extra), held=held)


def _render(inner: Sanitized, stem: str, settings: Settings) -> Rendering:
    if settings.forward_output == "eml":
        return Rendering(f"{stem}.eml", "message/rfc822", rebuild(inner, settings))
    return Rendering(f"{stem}.txt", "text/plain", inline_text(inner, settings).encode())


def inline_text(inner: Sanitized, settings: Settings) -> str:
    """The forwarded message as text: a header block, the inner notice, the body."""
    lines = [f"{name}: {value}" for name in ("From", "To", "Cc", "Date", "Subject")
             if (value := inner.parsed.header(name))]
    notice = render_notice(inner.report, settings)
    return "\n".join([*lines, "", *([notice, ""] if notice else []), inner.body])


def _stem(leaf: Leaf) -> str:
    name = (leaf.filename or "").replace("\\", "/")
    stem = PurePosixPath(name).stem if name else ""
    return stem or f"forwarded-{leaf.part}"


def _nested_action(leaf: Leaf, action: Action) -> Action:
    return Action(
        part=f"{leaf.part}/{action.part}", filename=action.filename,
        declared_type=action.declared_type, detected_type=action.detected_type,
        action=action.action, reason=action.reason, outputs=action.outputs, code=action.code,
        quarantined=action.quarantined, releasable=action.releasable,
        findings=action.findings, notes=action.notes, pages=action.pages,
    )


def _nested_held(leaf: Leaf, held: HeldOriginal) -> HeldOriginal:
    return HeldOriginal(f"{leaf.part}/{held.part}", held.filename, held.content_type,
                        held.data, held.reason)


def _held(leaf: Leaf, code: str, reason: str) -> AttachmentOutcome:
    action = Action(
        part=leaf.part, filename=leaf.filename, declared_type=leaf.content_type,
        detected_type="message/rfc822", action=ActionKind.REMOVED, reason=reason, code=code,
        quarantined=True,
    )
    held = HeldOriginal(leaf.part, leaf.filename, leaf.content_type, leaf.payload, code)
    return AttachmentOutcome(actions=(action,), held=(held,))
