"""What the worker needs from persistence: a message log and a quarantine.

`gateway.store.open_stores(settings)` returns the implementation (SQLite by default,
PostgreSQL with `MUGAIKA_DATABASE_URL`). The worker sees only these protocols.
"""

from __future__ import annotations

from typing import Literal, Protocol

from gateway.attachments import HeldOriginal
from gateway.envelope import Envelope
from gateway.report import Report

DeliveryStatus = Literal["queued", "delivered", "deferred", "bounced", "quarantined"]


class MessageLog(Protocol):
    def record_received(self, queue_id: str, envelope: Envelope, size: int) -> None: ...

    def record_processed(self, queue_id: str, subject: str | None, report: Report) -> None: ...

    def record_delivery(
        self, queue_id: str, status: DeliveryStatus, attempts: int, detail: str
    ) -> None: ...


class QuarantineStore(Protocol):
    def hold(
        self,
        queue_id: str,
        envelope: Envelope,
        raw: bytes,
        report: Report,
        held: tuple[HeldOriginal, ...],
    ) -> None:
        """Keep the whole original message and each held part (content-addressed)."""
        ...


class Stores(Protocol):
    @property
    def messages(self) -> MessageLog: ...

    @property
    def quarantine(self) -> QuarantineStore: ...

    def close(self) -> None: ...
