"""Each attachment to harmless renderings, or removed with its original held.

Until the converter registry exists every attachment is removed and held in quarantine:
failing closed is the only safe default for a boundary gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

from converters.base import Rendering
from gateway.parse import Leaf
from gateway.report import Action, ActionKind


@dataclass(frozen=True)
class HeldOriginal:
    """An original part kept in quarantine, under a generated id, never the sender's name."""

    part: str
    filename: str | None
    content_type: str
    data: bytes
    reason: str


@dataclass(frozen=True)
class AttachmentOutcome:
    actions: tuple[Action, ...]
    outputs: tuple[Rendering, ...] = ()
    held: tuple[HeldOriginal, ...] = ()


def sanitize_attachment(leaf: Leaf) -> AttachmentOutcome:
    """Remove `leaf` and hold its original (no converters yet)."""
    action = Action(
        part=leaf.part,
        filename=leaf.filename,
        declared_type=leaf.content_type,
        detected_type=leaf.content_type,
        action=ActionKind.REMOVED,
        reason="no converter for this kind of file",
        code="unsupported_type",
        quarantined=True,
    )
    held = HeldOriginal(leaf.part, leaf.filename, leaf.content_type, leaf.payload, action.code)
    return AttachmentOutcome(actions=(action,), held=(held,))
