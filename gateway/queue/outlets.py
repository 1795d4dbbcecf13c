"""What the worker hands its results to: the next hop, the message log and the quarantine.

The queue defines these protocols and the wings above implement them: `gateway.relay.egress`
delivers (`Forwarder`), `gateway.custody.stores.open_stores` returns the message log and
the quarantine (`Stores`; SQLite by default, PostgreSQL with `MUGAIKA_DATABASE_URL`). So
the worker runs the stages in order without importing SMTP or the database layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from gateway.pipeline.attachments import HeldOriginal
from gateway.pipeline.report import Report
from gateway.queue.envelope import Envelope
from gateway.settings import Settings


@dataclass(frozen=True)
class DeliveryResult:
    delivered: tuple[str, ...] = ()
    #: recipient → the reply that refused it for now (retry later)
    temporary: dict[str, str] = field(default_factory=dict)
    #: recipient → the reply that refused it for good (bounce)
    permanent: dict[str, str] = field(default_factory=dict)
    remote: str = ""


class Forwarder(Protocol):
    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult: ...

    async def close(self) -> None: ...


def retry_delay(attempts: int, settings: Settings) -> float:
    """Postfix-like backoff: the first retry after minutes, doubling up to about an hour."""
    delay = settings.retry_first_seconds * (2 ** max(0, attempts - 1))
    return float(min(delay, settings.retry_max_seconds))


class StoreUnavailable(Exception):
    """The database is away (a connection lost or refused, a server restarting): the
    message is not at fault. The worker tries it again later without counting it towards
    the poison limit, until the queue lifetime ends (`Worker._park`)."""


DeliveryStatus = Literal["queued", "delivered", "deferred", "bounced", "quarantined"]


class MessageLog(Protocol):
    def record_received(self, queue_id: str, envelope: Envelope, size: int) -> None: ...

    def record_processed(self, queue_id: str, subject: str | None, report: Report) -> None: ...

    def record_delivery(
        self, queue_id: str, status: DeliveryStatus, attempts: int, detail: str
    ) -> None: ...

    def flush(self) -> None:
        """Wait until every row recorded so far is in the database."""
        ...

    def sender_seen(self, sender: str, tenant: str | None, since: datetime,
                    before: str) -> bool:
        """Whether the tenant received mail from `sender` since `since` (`before`: the
        message asking, which does not count)."""
        ...


class QuarantineStore(Protocol):
    def hold(
        self,
        queue_id: str,
        envelope: Envelope,
        raw: bytes,
        report: Report,
        held: tuple[HeldOriginal, ...],
        delivered: bytes | None = None,
    ) -> None:
        """Keep the whole original message and each held part (content-addressed), and
        what the recipient was delivered instead (for review)."""
        ...


class Stores(Protocol):
    @property
    def messages(self) -> MessageLog: ...

    @property
    def quarantine(self) -> QuarantineStore: ...

    def close(self) -> None: ...
