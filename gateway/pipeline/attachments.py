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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from converters.archive_pack import pack_renderings
from converters.base import Conversion, Converter, Rendering
from converters.errors import ConversionError, Encrypted, LimitExceeded, SandboxFailure
from converters.limits import ConversionPolicy, Limits, OcrPolicy
from converters.names import clean_name, stem
from converters.office_pool import OfficeConfig, OfficePool
from converters.package import Packager
from converters.registry import (
    ARCHIVE_TYPES,
    DETECTOR,
    OFFICE_TYPES,
    OUTLOOK_TYPES,
    UNKNOWN_TYPE,
    Classification,
    Registry,
    checked_type,
)
from converters.sandbox import SandboxConfig, SandboxPool, decide_sandboxing
from gateway.pipeline.cdr import clean_and_check
from gateway.pipeline.parse import Leaf
from gateway.pipeline.report import Action, ActionKind
from gateway.settings import Settings

if TYPE_CHECKING:
    from converters.office import OfficeConverter

#: Declared type given to container members: they carry no type of their own.
MEMBER_DECLARED_TYPE = "application/octet-stream"
#: Mail inside mail is sanitized by the whole pipeline again (gateway.pipeline.forwarded).
FORWARDED_TYPE = "message/rfc822"
#: Declared types that are taken as mail inside mail whatever the content sniffs as.
MAIL_TYPES = frozenset({"message/rfc822", "message/global"})


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


#: Forwarded mail (a message/rfc822 leaf), the queue id and the message's settings → its
#: outcome. Handed down by `gateway.pipeline.sanitize`, which owns the recursion.
NestedMail = Callable[[Leaf, str, Settings], AttachmentOutcome]


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
                            extract_text=settings.pdf_extract_text, links=settings.links,
                            ocr=OcrPolicy(enabled=settings.ocr, text_layer=settings.ocr_text_layer,
                                          page_seconds=settings.ocr_page_seconds,
                                          languages=settings.ocr_languages))


@dataclass(frozen=True)
class AttachmentContext:
    """Built once at start-up from Settings and shared by every message: policy + pools."""

    policy: ConversionPolicy
    registry: Registry
    pool: SandboxPool
    settings: Settings | None = None
    #: Converters that run in the gateway process because they sandbox themselves and
    #: keep state across documents (Office: a warm LibreOffice pool), by registry name.
    local: Mapping[str, Converter] = field(default_factory=dict)
    office: OfficePool | None = None

    @classmethod
    def from_settings(cls, settings: Settings, registry: Registry | None = None
                      ) -> AttachmentContext:
        """Check bubblewrap (raise `SandboxUnavailable` unless unsandboxed is allowed).

        Workers and LibreOffice instances start on first use; `pool.warm()` starts the
        converter workers at once."""
        registry = registry or Registry()
        sandboxed = decide_sandboxing(settings.allow_unsandboxed)
        size = settings.converter_workers or settings.workers
        config = SandboxConfig(registry.targets(), sandboxed=sandboxed,
                               hidden=hidden_paths(settings),
                               max_documents=settings.converter_max_documents)
        pool = SandboxPool(config, size)
        policy = policy_from_settings(settings)
        office = OfficePool(OfficeConfig(
            pool_size=settings.office_pool_size, max_documents=settings.office_max_documents,
            timeout_seconds=settings.office_timeout_seconds, sandboxed=sandboxed))
        local = {"office": _office_converter(office, pool, policy)}
        return cls(policy, registry, pool, settings, local, office)

    def detect(self, untrusted: bytes) -> str:
        """The content's type, told in the sandbox (libmagic and the ZIP reader parse the
        original); anything that is not a plain MIME type counts as unknown."""
        conversion = self.pool.convert(DETECTOR[0], untrusted, "", self.policy)
        return checked_type(conversion.extra.get("detected_type", ""))

    def close(self) -> None:
        self.pool.close()
        if self.office is not None:
            self.office.close()

    def __enter__(self) -> AttachmentContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _office_converter(office: OfficePool, pool: SandboxPool, policy: ConversionPolicy
                      ) -> OfficeConverter:
    """LibreOffice in its own pool; the macro scan and the PDF rendering in the sandbox."""
    # Imported here: the Office modules pull in oletools and pdfium, which a message
    # without attachments (and `mugaika sanitize` of one) never needs.
    from converters.office import OfficeConverter
    from converters.office_scan import scan_result_from

    return OfficeConverter(
        office,
        scanner=lambda data: scan_result_from(pool.convert("office", data, "document", policy)),
        renderer=lambda pdf, name, pol: pool.convert("pdf", pdf, name, pol),
    )


class PpapRefused(ConversionError):
    """An encrypted file under `MUGAIKA_PPAP=refuse`: held, but no password releases it."""

    code = "ppap_refused"
    message = "password-protected files are not accepted by policy (PPAP)"


def _under_ppap_policy(err: ConversionError, settings: Settings | None) -> ConversionError:
    if err.code == Encrypted.code and settings is not None and settings.ppap == "refuse":
        return PpapRefused(err.detail)
    return err


@dataclass(frozen=True)
class _Part:
    """One file to handle: a top-level attachment or a container member."""

    part: str
    untrusted_name: str | None
    declared: str
    untrusted: bytes
    #: Where a member sat inside its container(s), e.g. "見積/2025": goes into output names.
    folder: str = ""


@dataclass
class _Budget:
    """Members still allowed under one top-level attachment (nested bombs stop here)."""

    members: int
    names: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Walk:
    """What every level of one attachment's tree shares."""

    ctx: AttachmentContext
    queue_id: str
    settings: Settings | None
    budget: _Budget
    nested: NestedMail | None


def sanitize_attachment(leaf: Leaf, ctx: AttachmentContext, queue_id: str = "",
                        settings: Settings | None = None,
                        used_names: set[str] | None = None,
                        nested: NestedMail | None = None) -> AttachmentOutcome:
    """Convert `leaf` in the sandbox, or remove it; hold its original either way.

    `settings` are the current message's (forwarded mail lowers its depth budget); they
    default to the context's. `used_names`, shared by all attachments of one message,
    keeps output names unique across them (`報告 (2).pdf`).
    """
    budget = _Budget(ctx.policy.limits.archive_max_members,
                     used_names if used_names is not None else set())
    walk = _Walk(ctx, queue_id, settings or ctx.settings, budget, nested)
    top = _Part(leaf.part, leaf.filename, leaf.content_type, leaf.payload)
    return _handle(top, walk, 0)


def _handle(item: _Part, walk: _Walk, depth: int) -> AttachmentOutcome:
    ctx = walk.ctx
    try:
        found = ctx.registry.classify(item.untrusted, item.untrusted_name, item.declared,
                                      ctx.detect)
    except ConversionError as err:  # detection itself failed (timeout, crash): fail closed
        return _removed(item, Classification(UNKNOWN_TYPE, clean_name(item.untrusted_name)), err)
    if _is_mail(item, found) and walk.nested is not None and walk.settings is not None:
        return _forwarded(item, walk)
    refused = _not_rendered(item, found, walk.settings)
    if refused is not None:
        return refused
    treatment = _treatment(found.detected_type, walk.settings)
    if treatment in EDITABLE:
        return _kept_editable(item, found, walk, depth, treatment)
    return _rendered(item, found, walk, depth)


def _kept_editable(item: _Part, found: Classification, walk: _Walk, depth: int,
                   treatment: str) -> AttachmentOutcome:
    """The cleaned file (and, for `both`, the page images); page images alone, with the
    reason, when it cannot be cleaned or does not pass the second key."""
    links = walk.settings.links if walk.settings is not None else "defang"
    try:
        cleaned = clean_and_check(item.untrusted, found.clean_name, walk.ctx.pool,
                                  walk.ctx.policy, links, walk.ctx.office)
    except ConversionError as err:
        if err.code == Encrypted.code:
            return _removed(item, found, _under_ppap_policy(err, walk.settings))
        return _rendered(item, found, walk, depth, notes=(f"cdr_fallback={err.code}",))
    kept = _unique(_in_folder(cleaned.rendering, item.folder), walk.budget.names)
    notes = ("cdr_resaved",) * cleaned.resaved + tuple(
        f"cdr_removed={kind}:{count}" for kind, count in cleaned.removed)
    if treatment == "both":
        both = _rendered(item, found, walk, depth, notes=notes, first=(kept,))
        if both.actions[0].action is ActionKind.CONVERTED:
            return both
        notes += (f"render_failed={both.actions[0].code}",)
    action = Action(
        part=item.part, filename=found.clean_name, declared_type=item.declared,
        detected_type=found.detected_type, action=ActionKind.CONVERTED,
        reason="active content removed, kept editable", outputs=(kept.filename,), code="cdr",
        quarantined=True, notes=found.notes + notes)
    held = HeldOriginal(item.part, item.untrusted_name, found.detected_type, item.untrusted,
                        "converted")
    return AttachmentOutcome((action,), (kept,), (held,))


def _rendered(item: _Part, found: Classification, walk: _Walk, depth: int,
              notes: tuple[str, ...] = (), first: tuple[Rendering, ...] = ()
              ) -> AttachmentOutcome:
    """Page images (today's treatment), after `first` (a cleaned file, for `both`)."""
    ctx, budget = walk.ctx, walk.budget
    try:
        conversion, renderings = _convert(item, found, ctx)
    except ConversionError as err:
        return _removed(item, found, _under_ppap_policy(err, walk.settings))
    except Exception:  # a bug must not deliver the file: map it to a closed failure
        return _removed(item, found, SandboxFailure("internal error"))
    outputs = first + tuple(_unique(_in_folder(r, item.folder), budget.names)
                            for r in renderings)
    action = Action(
        part=item.part, filename=found.clean_name, declared_type=item.declared,
        detected_type=found.detected_type, action=ActionKind.CONVERTED,
        reason=f"converted by {found.converter}", outputs=tuple(r.filename for r in outputs),
        code="cdr_both" if first else "",
        quarantined=True, findings=conversion.findings,
        notes=found.notes + notes + conversion.notes, pages=conversion.pages,
    )
    held = HeldOriginal(item.part, item.untrusted_name, found.detected_type, item.untrusted,
                        "converted")
    outcome = AttachmentOutcome((action,), outputs, (held,))
    merged = _merge(outcome, _members(item, conversion, walk, depth))
    zipped = walk.settings is not None and walk.settings.archive_output == "zip"
    if depth == 0 and found.converter == "archive" and zipped:
        # One plain ZIP of the renderings (originals never go in), named after the archive.
        packed = pack_renderings(found.clean_name, merged.outputs)
        merged = AttachmentOutcome(merged.actions, (packed,) if merged.outputs else (),
                                   merged.held)
    return merged


def _is_mail(item: _Part, found: Classification) -> bool:
    """Mail inside mail: sniffed as such, or declared so (the returned message of a
    delivery report is often sniffed as text/plain, and must not arrive as raw MIME).
    What the content says is blocked stays blocked, whatever was declared."""
    declared = item.declared.lower() in MAIL_TYPES
    sniffed = found.detected_type == FORWARDED_TYPE
    return (declared or sniffed) and (found.refusal is None
                                      or found.refusal.code == "unsupported_type")


def _convert(item: _Part, found: Classification, ctx: AttachmentContext
             ) -> tuple[Conversion, tuple[Rendering, ...]]:
    """Convert in the sandbox; the files delivered are written here, by trusted code, from
    the pixels and text that came back (each page encoded as it arrives)."""
    assert found.converter is not None
    local = ctx.local.get(found.converter)
    with Packager(stem(found.clean_name), ctx.policy) as packager:
        if local is not None:
            conversion = local.convert(item.untrusted, found.clean_name, ctx.policy)
        else:
            conversion = ctx.pool.convert(found.converter, item.untrusted, found.clean_name,
                                          ctx.policy, packager.add)
        return conversion, packager.finish(conversion)


def _forwarded(item: _Part, walk: _Walk) -> AttachmentOutcome:
    """Mail inside mail: the whole pipeline again, through the function handed down."""
    assert walk.settings is not None and walk.nested is not None
    leaf = Leaf(item.part, FORWARDED_TYPE, item.untrusted_name, "attachment", None,
                item.untrusted)
    outcome = walk.nested(leaf, walk.queue_id, walk.settings)
    outputs = tuple(_unique(r, walk.budget.names) for r in outcome.outputs)
    return AttachmentOutcome(outcome.actions, outputs, outcome.held)


def _members(parent: _Part, conversion: Conversion, walk: _Walk, depth: int
             ) -> list[AttachmentOutcome]:
    ctx, budget = walk.ctx, walk.budget
    outcomes = []
    # A nested container's name belongs in its members' folder; the top-level one is
    # already named in the notice line of the attachment itself.
    base = parent.folder
    if depth > 0 and parent.untrusted_name:
        base = posixpath.join(base, stem(parent.untrusted_name))
    for member in conversion.members:
        path = member.path.strip("/")
        name = posixpath.basename(path) or None
        folder = posixpath.join(base, posixpath.dirname(path)).strip("/")
        item = _Part(f"{parent.part}/{path}", name, MEMBER_DECLARED_TYPE, member.data, folder)
        budget.members -= 1
        if depth + 1 > ctx.policy.limits.archive_max_depth or budget.members < 0:
            found = Classification("application/octet-stream", clean_name(name))
            why = "nesting" if depth + 1 > ctx.policy.limits.archive_max_depth else "members"
            outcomes.append(_removed(item, found, LimitExceeded(f"container {why} cap")))
            continue
        outcomes.append(_handle(item, walk, depth + 1))
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


def kind_of(detected_type: str) -> str:
    """The content kind a treatment is chosen for (`gateway.tenancy.KINDS`)."""
    if detected_type == "application/pdf":
        return "pdf"
    if detected_type in OFFICE_TYPES or detected_type in OUTLOOK_TYPES:
        return "office"
    if detected_type in ARCHIVE_TYPES:
        return "archive"
    major = detected_type.partition("/")[0]
    return {"image": "image", "text": "text"}.get(major, "unknown")


def _not_rendered(item: _Part, found: Classification,
                  settings: Settings | None) -> AttachmentOutcome | None:
    """Refused by detection (blocked, no converter) or by the policy; None: render it."""
    if found.refusal is not None or found.converter is None:
        refusal = found.refusal or SandboxFailure("no converter")
        return _removed(item, found, _under_ppap_policy(refusal, settings))
    treatment = _treatment(found.detected_type, settings)
    return None if treatment in RENDERED else _by_policy(item, found, treatment)


#: The treatments that deliver a cleaned, editable file (issue 20, gateway/pipeline/cdr.py).
EDITABLE = ("cdr", "both")
#: The treatments that convert (the others remove or hold).
RENDERED = ("render", *EDITABLE)


def _treatment(detected_type: str, settings: Settings | None) -> str:
    if settings is None:
        return "render"
    return str(getattr(settings, f"treatment_{kind_of(detected_type)}"))


def _by_policy(item: _Part, found: Classification, treatment: str) -> AttachmentOutcome:
    """The tenant's (or the global) policy says this kind is not rendered: removed from
    what is delivered, the original held like any other (`quarantine`: the notice says it
    can be asked for; `remove`: it says the kind is not accepted; `first_contact`: the
    first-contact rule held it, `gateway.queue.worker.first_contact`)."""
    code = "first_contact" if treatment == "first_contact" else f"policy_{treatment}"
    action = Action(
        part=item.part, filename=found.clean_name if item.untrusted_name else None,
        declared_type=item.declared, detected_type=found.detected_type,
        action=ActionKind.REMOVED, reason=f"{kind_of(found.detected_type)}: {treatment} "
                                          "by policy", code=code, quarantined=True,
        notes=found.notes)
    held = HeldOriginal(item.part, item.untrusted_name, found.detected_type, item.untrusted,
                        code)
    return AttachmentOutcome((action,), held=(held,))


def _in_folder(rendering: Rendering, folder: str) -> Rendering:
    """A member's rendering carries its archive folder: 見積/見積書.docx → 見積_見積書.pdf."""
    if not folder:
        return rendering
    name = clean_name(f"{folder.replace('/', '_')}_{rendering.filename}")
    return Rendering(name, rendering.content_type, rendering.data)


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


def hidden_paths(settings: Settings) -> tuple[str, ...]:
    """What a sandbox must not read even where our code is bound in: the data directory
    (every other message, the database; by default `./var` inside the checkout) and the
    configuration."""
    return (str(settings.data_dir.resolve()), "/etc/mugaika")
