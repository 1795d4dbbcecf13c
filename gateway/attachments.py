"""Each attachment to harmless renderings, or removed with its original held.

The registry decides by content (never by name or declared type) whether a file is
blocked, unsupported or converted; conversion runs in the sandbox pool. Whatever goes
wrong, the attachment is removed and its original held: fail closed. Members of
containers (archives, forwarded mail) are handled like top-level attachments one level
deeper, with part names like "2/dir/file.docx", up to `archive_max_depth`.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field

from converters.base import Conversion, Rendering
from converters.errors import ConversionError, LimitExceeded, SandboxFailure
from converters.limits import ConversionPolicy, Limits
from converters.names import clean_name
from converters.registry import Classification, Registry
from converters.sandbox import SandboxConfig, SandboxPool, decide_sandboxing
from gateway.parse import Leaf
from gateway.report import Action, ActionKind
from gateway.settings import Settings

#: Declared type given to container members: they carry no type of their own.
MEMBER_DECLARED_TYPE = "application/octet-stream"


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


def policy_from_settings(settings: Settings) -> ConversionPolicy:
    """The operator's settings as the one frozen value the converters read."""
    limits = Limits(
        wall_seconds=settings.converter_timeout_seconds,
        cpu_seconds=max(1, math.ceil(settings.converter_timeout_seconds)),
        memory_bytes=settings.converter_memory_bytes,
        max_pages=settings.pdf_max_pages,
        archive_max_depth=settings.archive_max_depth,
        archive_max_members=settings.archive_max_members,
        archive_max_total_bytes=settings.archive_max_total_bytes,
        archive_max_ratio=settings.archive_max_ratio,
    )
    return ConversionPolicy(limits=limits, dpi=settings.pdf_dpi, pdf_output=settings.pdf_output,
                            extract_text=settings.pdf_extract_text)


@dataclass(frozen=True)
class AttachmentContext:
    """Built once at start-up from Settings and shared by every message: policy + pool."""

    policy: ConversionPolicy
    registry: Registry
    pool: SandboxPool

    @classmethod
    def from_settings(cls, settings: Settings, registry: Registry | None = None
                      ) -> AttachmentContext:
        """Check bubblewrap (raise `SandboxUnavailable` unless unsandboxed is allowed)."""
        registry = registry or Registry()
        sandboxed = decide_sandboxing(settings.allow_unsandboxed)
        size = settings.converter_workers or settings.workers
        pool = SandboxPool(SandboxConfig(registry.targets(), sandboxed=sandboxed), size)
        return cls(policy_from_settings(settings), registry, pool)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> AttachmentContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Part:
    """One file to handle: a top-level attachment or a container member."""

    part: str
    untrusted_name: str | None
    declared: str
    untrusted: bytes


@dataclass
class _Budget:
    """Members still allowed under one top-level attachment (nested bombs stop here)."""

    members: int
    names: set[str] = field(default_factory=set)


def sanitize_attachment(leaf: Leaf, ctx: AttachmentContext) -> AttachmentOutcome:
    """Convert `leaf` in the sandbox, or remove it; hold its original either way."""
    budget = _Budget(ctx.policy.limits.archive_max_members)
    top = _Part(leaf.part, leaf.filename, leaf.content_type, leaf.payload)
    return _handle(top, ctx, 0, budget)


def _handle(item: _Part, ctx: AttachmentContext, depth: int, budget: _Budget
            ) -> AttachmentOutcome:
    found = ctx.registry.classify(item.untrusted, item.untrusted_name, item.declared)
    if found.refusal is not None or found.converter is None:
        return _removed(item, found, found.refusal or SandboxFailure("no converter"))
    try:
        conversion = ctx.pool.convert(found.converter, item.untrusted, found.clean_name,
                                      ctx.policy)
    except ConversionError as err:
        return _removed(item, found, err)
    except Exception:  # a bug must not deliver the file: map it to a closed failure
        return _removed(item, found, SandboxFailure("internal error"))
    outputs = tuple(_unique(r, budget.names) for r in conversion.outputs)
    action = Action(
        part=item.part, filename=found.clean_name, declared_type=item.declared,
        detected_type=found.detected_type, action=ActionKind.CONVERTED,
        reason=f"converted by {found.converter}", outputs=tuple(r.filename for r in outputs),
        quarantined=True, findings=conversion.findings,
        notes=found.notes + conversion.notes, pages=conversion.pages,
    )
    held = HeldOriginal(item.part, item.untrusted_name, found.detected_type, item.untrusted,
                        "converted")
    outcome = AttachmentOutcome((action,), outputs, (held,))
    return _merge(outcome, _members(item.part, conversion, ctx, depth, budget))


def _members(part: str, conversion: Conversion, ctx: AttachmentContext, depth: int,
             budget: _Budget) -> list[AttachmentOutcome]:
    outcomes = []
    for member in conversion.members:
        name = posixpath.basename(member.path) or None
        item = _Part(f"{part}/{member.path.lstrip('/')}", name, MEMBER_DECLARED_TYPE, member.data)
        budget.members -= 1
        if depth + 1 > ctx.policy.limits.archive_max_depth or budget.members < 0:
            found = Classification("application/octet-stream", clean_name(name))
            why = "nesting" if depth + 1 > ctx.policy.limits.archive_max_depth else "members"
            outcomes.append(_removed(item, found, LimitExceeded(f"container {why} cap")))
            continue
        outcomes.append(_handle(item, ctx, depth + 1, budget))
    return outcomes


def _removed(item: _Part, found: Classification, err: ConversionError) -> AttachmentOutcome:
    action = Action(
        part=item.part, filename=found.clean_name if item.untrusted_name else None,
        declared_type=item.declared, detected_type=found.detected_type,
        action=ActionKind.REMOVED, reason=err.message, code=err.code,
        quarantined=True, releasable=err.holdable, notes=found.notes,
    )
    held = HeldOriginal(item.part, item.untrusted_name, found.detected_type, item.untrusted,
                        err.code)
    return AttachmentOutcome((action,), held=(held,))


def _unique(rendering: Rendering, used: set[str]) -> Rendering:
    """Two members called report.pdf must not become two attachments with one name."""
    name, n = rendering.filename, 1
    while name in used:
        n += 1
        base, dot, ext = rendering.filename.rpartition(".")
        name = f"{base} ({n}).{ext}" if dot else f"{rendering.filename} ({n})"
    used.add(name)
    return Rendering(name, rendering.content_type, rendering.data)


def _merge(first: AttachmentOutcome, rest: list[AttachmentOutcome]) -> AttachmentOutcome:
    outcomes = [first, *rest]
    return AttachmentOutcome(
        actions=tuple(a for o in outcomes for a in o.actions),
        outputs=tuple(r for o in outcomes for r in o.outputs),
        held=tuple(h for o in outcomes for h in o.held),
    )
