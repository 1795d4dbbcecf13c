"""The recipients' daily digest: one mail a day to each recipient with mail held for them.

Each recipient of an entry still `held` (nobody asked for it yet) gets one mail listing
those entries, oldest first, with each entry's signed request link when links are
configured (`gateway.pipeline.release_links`). Entries already requested, released or
denied are not listed: someone is acting on them, or has.

Once a day, whatever the number of nodes: `SqlQuarantine.run_digest` inserts the local
day's row in `digest_runs` first, in the same transaction that spools the mails, so a
second node, a second run or a cron job the same day finds the row and sends nothing;
and a run that fails leaves no row, so the next check tries again.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from gateway.custody.audit import Actor
from gateway.custody.quarantine import SpoolWriter, notice_envelope
from gateway.custody.stores import SqlStores
from gateway.pipeline.notice import load_templates
from gateway.pipeline.recipient_mail import HeldMail, digest_mail
from gateway.pipeline.release_links import release_link
from gateway.queue.spool import new_queue_id
from gateway.settings import Settings
from gateway.store.common import Clock, utcnow
from gateway.store.records import QuarantineEntry


@dataclass(frozen=True)
class DigestOutcome:
    day: str  # the local date, ISO 8601
    #: None: not due yet, or sent already today (`reason` says which).
    queued: tuple[str, ...] | None
    reason: str = ""


class Digest:
    def __init__(self, stores: SqlStores, spool: SpoolWriter, settings: Settings,
                 clock: Clock = utcnow) -> None:
        self._stores = stores
        self._spool = spool
        self._settings = settings
        self._clock = clock
        #: Written into the day's row: which node sent it, for operators.
        self.node = f"{socket.gethostname()}:{os.getpid()}"

    def send(self, actor: Actor, ignore_hour: bool = False) -> DigestOutcome:
        """Send today's digest if due (the local hour reached, `ignore_hour` to skip that
        check) and not sent yet today; the server calls this every minute."""
        local = self._clock().astimezone(ZoneInfo(self._settings.digest_timezone))
        day = local.date().isoformat()
        if not ignore_hour and local.hour < self._settings.digest_hour:
            return DigestOutcome(day, None, "not due before "
                                 f"{self._settings.digest_hour:02d}:00 {local.tzname()}")
        if self._stores.quarantine.digest_sent(day):
            return DigestOutcome(day, None, "sent already today")
        mails = self._build()
        queued = self._stores.quarantine.run_digest(day, self.node,
                                                    self._deliver(mails, actor, day))
        if queued is None:
            return DigestOutcome(day, None, "sent already today")
        for queue_id in queued:  # only after the commit, as a release
            self._spool.wake(queue_id)
        return DigestOutcome(day, tuple(queued))

    def _build(self) -> list[tuple[str, bytes, list[str]]]:
        """(recipient, mail, entry ids) for each recipient with held entries, built before
        the transaction so that it only writes."""
        templates = load_templates(self._settings)
        out = []
        for rcpt, entries in by_recipient(self._stores.quarantine.held_entries()).items():
            items = [_held_mail(e, self._settings) for e in entries]
            out.append((rcpt, digest_mail(rcpt, items, self._settings, templates),
                        [e.id for e in entries]))
        return out

    def _deliver(self, mails: list[tuple[str, bytes, list[str]]], actor: Actor,
                 day: str) -> Callable[[Connection], list[str]]:
        def deliver(conn: Connection) -> list[str]:
            queued = [self._spool_one(conn, rcpt, raw) for rcpt, raw, _ids in mails]
            self._stores.audit.record_in(conn, actor, "quarantine.digest", day,
                                         recipients=len(mails),
                                         entries=len({i for *_, ids in mails for i in ids}))
            return queued

        return deliver

    def _spool_one(self, conn: Connection, rcpt: str, raw: bytes) -> str:
        """Logged in the message log in the transaction, as a release is: its delivery
        status always finds the row."""
        envelope = notice_envelope(rcpt, "digest")
        queue_id = new_queue_id()
        self._stores.messages.record_received(queue_id, envelope, len(raw), conn=conn)
        return self._spool.put(raw, envelope, queue_id)


def by_recipient(entries: list[QuarantineEntry]) -> dict[str, list[QuarantineEntry]]:
    """Entries per recipient address (compared without case), in the given order."""
    groups: dict[str, tuple[str, list[QuarantineEntry]]] = {}
    for entry in entries:
        seen: set[str] = set()
        for rcpt in entry.recipients:
            if rcpt.lower() not in seen:  # listed once, however the envelope spelled it
                seen.add(rcpt.lower())
                groups.setdefault(rcpt.lower(), (rcpt, []))[1].append(entry)
    return {rcpt: listed for rcpt, listed in groups.values()}


def _held_mail(entry: QuarantineEntry, settings: Settings) -> HeldMail:
    return HeldMail(entry.id, entry.created_at, entry.mail_from, entry.subject, entry.reasons,
                    release_link(settings, entry.id, now=time.time()))


__all__ = ["Digest", "DigestOutcome", "by_recipient"]
