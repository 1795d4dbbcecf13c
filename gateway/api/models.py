"""Request and response models: the OpenAPI schema is generated from these.

Input text is checked before it reaches the database: no NUL (PostgreSQL refuses it), no
lone surrogates (not encodable), bounded length; times are normalised to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from gateway.custody.audit import AuditEvent
from gateway.store.messages import MessageRecord
from gateway.store.records import QuarantineEntry, QuarantinePart, ReleaseRequest


def _safe_text(untrusted: str) -> str:
    if "\x00" in untrusted:
        raise ValueError("NUL is not allowed")
    try:
        untrusted.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode") from None
    return untrusted


def _utc(untrusted: datetime) -> datetime:
    try:
        aware = untrusted if untrusted.tzinfo else untrusted.replace(tzinfo=UTC)
        return aware.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None


#: Documented in the schema too, so clients (and schemathesis) know NUL is refused.
_NO_NUL = r"^[^\x00]*$"
SearchText = Annotated[
    str, Field(min_length=1, max_length=200, pattern=_NO_NUL), AfterValidator(_safe_text)
]
FreeText = Annotated[str, Field(max_length=2000, pattern=_NO_NUL), AfterValidator(_safe_text)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]
EntryId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
PartId = Annotated[str, Field(pattern=r"^[0-9]{1,4}(\.[0-9]{1,4}){0,20}$")]
QuarantineStatus = Literal["held", "release_requested", "released", "denied"]


def _not_blank(untrusted: str) -> str:
    if not untrusted.strip():
        raise ValueError("the reason must not be blank")
    return untrusted


#: No NUL and at least one character that is not white space, stated in the schema too:
#: schemathesis sent a white-space-only reason as schema-valid when it said only "no NUL".
#: (Python's \s, which generators read, covers all the Rust engine's \s that validates.)
_NOT_BLANK = r"^[^\x00]*[^\x00\s][^\x00]*$"

#: An approver's reason: told to the recipient who asked, so bounded like a short letter.
DecisionReason = Annotated[
    str, Field(min_length=1, max_length=1000, pattern=_NOT_BLANK), AfterValidator(_safe_text),
    AfterValidator(_not_blank),
]


class Problem(BaseModel):
    """Every error response: a stable code to act on and a message to show."""

    code: str
    message: str


class ActionOut(BaseModel):
    part: str
    filename: str | None
    declared_type: str
    detected_type: str
    action: str
    reason: str
    code: str = ""
    quarantined: bool = False
    releasable: bool = False
    outputs: list[str] = []
    findings: list[str] = []
    notes: list[str] = []
    pages: int = 0


class MessageOut(BaseModel):
    queue_id: str
    received_at: datetime
    kind: str
    sender: str
    recipients: list[str]
    client_addr: str
    size: int
    subject: str | None
    verdict: str | None
    processed_at: datetime | None
    status: str
    attempts: int
    status_detail: str
    status_at: datetime | None
    #: The tenant the message (this copy of it) is for; None: the default tenant.
    tenant: str | None = None
    #: For a copy made for one tenant: the id of the message the client sent.
    split_of: str | None = None
    #: Sender authentication on the original, e.g. "spf=pass dkim=pass dmarc=pass arc=none".
    auth: str | None = None

    @classmethod
    def of(cls, r: MessageRecord) -> MessageOut:
        return cls(
            queue_id=r.queue_id, received_at=r.received_at, kind=r.kind, sender=r.mail_from,
            recipients=list(r.recipients), client_addr=r.client_addr, size=r.size,
            subject=r.subject, verdict=r.verdict, processed_at=r.processed_at, status=r.status,
            attempts=r.attempts, status_detail=r.status_detail, status_at=r.status_at,
            tenant=r.tenant, split_of=r.split_of, auth=r.auth,
        )


class MessageDetail(MessageOut):
    actions: list[ActionOut]
    defects: list[str]
    reason: str

    @classmethod
    def of(cls, r: MessageRecord) -> MessageDetail:
        report: dict[str, Any] = r.report or {}
        return cls(
            **MessageOut.of(r).model_dump(),
            actions=[ActionOut.model_validate(a) for a in report.get("actions", [])],
            defects=list(report.get("defects", [])),
            reason=str(report.get("reason", "")),
        )


class MessagePage(BaseModel):
    items: list[MessageOut]
    total: int
    limit: int
    offset: int


class PartOut(BaseModel):
    part: str
    filename: str | None
    content_type: str
    sha256: str
    size: int
    reason: str
    releasable: bool

    @classmethod
    def of(cls, p: QuarantinePart) -> PartOut:
        return cls(part=p.part, filename=p.filename, content_type=p.content_type,
                   sha256=p.sha256, size=p.size, reason=p.reason, releasable=p.releasable)


class ReleaseRequestOut(BaseModel):
    id: int
    requested_by: str
    requested_at: datetime
    requested_from: str
    reason: str
    status: str
    decided_by: str | None
    decided_at: datetime | None
    queue_id: str | None
    decision_reason: str | None = None

    @classmethod
    def of(cls, r: ReleaseRequest) -> ReleaseRequestOut:
        return cls(id=r.id, requested_by=r.requested_by, requested_at=r.requested_at,
                   requested_from=r.requested_from, reason=r.reason, status=r.status,
                   decided_by=r.decided_by, decided_at=r.decided_at, queue_id=r.queue_id,
                   decision_reason=r.decision_reason)


class QuarantineOut(BaseModel):
    id: str
    time: datetime
    expires_at: datetime
    sender: str
    recipients: list[str]
    subject: str | None
    size: int
    verdict: str
    reasons: list[str]
    status: QuarantineStatus

    @classmethod
    def of(cls, e: QuarantineEntry) -> QuarantineOut:
        return cls(id=e.id, time=e.created_at, expires_at=e.expires_at, sender=e.mail_from,
                   recipients=list(e.recipients), subject=e.subject, size=e.size,
                   verdict=e.verdict, reasons=list(e.reasons), status=e.status)  # type: ignore[arg-type]


class QuarantineDetail(QuarantineOut):
    original_sha256: str
    released_at: datetime | None
    released_by: str | None
    release_queue_id: str | None
    password_failures: int
    parts: list[PartOut]
    requests: list[ReleaseRequestOut]

    @classmethod
    def of(cls, e: QuarantineEntry) -> QuarantineDetail:
        return cls(
            **QuarantineOut.of(e).model_dump(), original_sha256=e.original_sha256,
            released_at=e.released_at, released_by=e.released_by,
            release_queue_id=e.release_queue_id, password_failures=e.password_failures,
            parts=[PartOut.of(p) for p in e.parts],
            requests=[ReleaseRequestOut.of(r) for r in e.requests],
        )


class QuarantinePage(BaseModel):
    items: list[QuarantineOut]
    total: int
    limit: int
    offset: int


class ReleaseIn(BaseModel):
    """A release request; with `password`, a PPAP release of the encrypted part(s)."""

    reason: FreeText = ""
    password: Annotated[str, Field(min_length=1, max_length=256, pattern=_NO_NUL),
                        AfterValidator(_safe_text)] | None = None
    part: PartId | None = Field(default=None, description="Only this encrypted part")


class ApproveIn(BaseModel):
    """An approval; the reason is optional, kept with the decision and told to a recipient
    who asked through the notice link."""

    reason: DecisionReason | None = None


class DenyIn(BaseModel):
    """A denial always says why: the requester is told."""

    reason: DecisionReason


class ReleaseOut(BaseModel):
    id: str
    status: Literal["pending", "released", "denied"]
    request_id: int | None
    queue_id: str | None


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    remote: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEvent) -> AuditOut:
        return cls(id=e.id, at=e.at, actor=e.actor, role=e.role, action=e.action,
                   target=e.target, remote=e.remote, detail=e.detail)


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
