"""The quarantine's records as the service and the API see them, and their row mappers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store.common import split_addresses


@dataclass(frozen=True)
class QuarantinePart:
    part: str
    filename: str | None
    content_type: str
    sha256: str
    size: int
    reason: str
    releasable: bool


@dataclass(frozen=True)
class ReleaseRequest:
    id: int
    entry_id: str
    requested_by: str
    requested_at: datetime
    requested_from: str
    reason: str
    status: str
    decided_by: str | None
    decided_at: datetime | None
    queue_id: str | None
    #: The approver's words with the decision (required for a denial).
    decision_reason: str | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    id: str
    created_at: datetime
    expires_at: datetime
    mail_from: str
    recipients: tuple[str, ...]
    subject: str | None
    size: int
    verdict: str
    reasons: tuple[str, ...]
    original_sha256: str
    status: str
    released_at: datetime | None
    released_by: str | None
    release_queue_id: str | None
    password_failures: int
    #: The tenant it was held for (None: the default tenant).
    tenant: str | None = None
    parts: tuple[QuarantinePart, ...] = ()
    requests: tuple[ReleaseRequest, ...] = ()


@dataclass(frozen=True)
class QuarantineQuery:
    sender: str | None = None
    recipient: str | None = None
    subject: str | None = None
    reason: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Only this tenant's entries (a tenant's staff); None: all.
    tenant: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class QuarantineStats:
    entries: int
    bytes: int


def entry_of(row: Any) -> QuarantineEntry:
    return QuarantineEntry(
        id=row["id"], created_at=row["created_at"], expires_at=row["expires_at"],
        mail_from=row["mail_from"], recipients=split_addresses(row["recipients"]),
        subject=row["subject"], size=row["size"], verdict=row["verdict"],
        reasons=tuple(json.loads(row["reasons"])), original_sha256=row["original_sha256"],
        status=row["status"], released_at=row["released_at"], released_by=row["released_by"],
        release_queue_id=row["release_queue_id"], password_failures=row["password_failures"],
        tenant=row["tenant"],
    )


def part_of(row: Any) -> QuarantinePart:
    return QuarantinePart(
        part=row["part"], filename=row["filename"], content_type=row["content_type"],
        sha256=row["sha256"], size=row["size"], reason=row["reason"],
        releasable=bool(row["releasable"]),
    )


def request_of(row: Any) -> ReleaseRequest:
    return ReleaseRequest(
        id=row["id"], entry_id=row["entry_id"], requested_by=row["requested_by"],
        requested_at=row["requested_at"], requested_from=row["requested_from"],
        reason=row["reason"], status=row["status"], decided_by=row["decided_by"],
        decided_at=row["decided_at"], queue_id=row["queue_id"],
        decision_reason=row["decision_reason"],
    )
