"""Operator actions on the quarantine: review, download, delete, release, PPAP release.

The policy lives here, the same for the HTTP API and the CLI:
- every change and every download of an original is written to the audit log;
- a release is requested, then carried out only when someone other than the requester
  approves (four eyes), unless `release_requires_approval` is off; the same someone-else
  may deny it instead, with a reason (the entry becomes `denied`);
- a request filed through the notice link is answered: its decision is mailed to the
  message's recipients in the decision's transaction (`gateway.pipeline.recipient_mail`);
  staff who file a request see the answer in the API, so nobody else is mailed;
- a released original goes back into the spool unchanged (`kind="release"`), to the
  envelope recipients it was sent to and no one else, with a header naming the approver;
- PPAP: with the password of an encrypted attachment, the part is decrypted by the
  injected `Decrypter` (in the sandbox) and the message, with the decrypted part in
  place, re-enters the spool as an ordinary inbound message: it is sanitized like any
  other, so no approval is needed. Wrong passwords are counted per entry and limited.
"""

from __future__ import annotations

import email
import email.encoders
import email.policy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.message import Message
from hashlib import sha256
from typing import Protocol

from sqlalchemy import Connection

from converters.errors import ConversionError
from gateway.custody.audit import Actor
from gateway.custody.stores import SqlStores
from gateway.pipeline.recipient_mail import HeldMail, decision_mail
from gateway.pipeline.release_links import LINK_ACTOR
from gateway.queue.envelope import Envelope
from gateway.queue.spool import new_queue_id
from gateway.settings import Settings
from gateway.store.common import Page
from gateway.store.quarantine import DENIED, HELD, RELEASED, Spooler
from gateway.store.records import QuarantineEntry, QuarantineQuery, ReleaseRequest

RELEASED_BY_HEADER = "X-Mugaika-Released-By"
REQUESTED_BY_HEADER = "X-Mugaika-Release-Requested-By"
PASSWORD_RELEASE_HEADER = "X-Mugaika-Password-Release-By"  # noqa: S105 - a header name


class SpoolWriter(Protocol):
    """What release needs: `gateway.queue.spool.Spool.put`, and a way to wake the worker once
    the release is committed (`gateway.api.serve.NotifyingSpool`)."""

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str: ...

    def wake(self, queue_id: str) -> None: ...


class WrongPassword(Exception):
    """Raised by a `Decrypter` when the password does not open the part."""


#: (encrypted part bytes, its file name, password) -> the decrypted bytes, same kind of file
#: (a ZIP without encryption, an Office document without a password). Must run the work
#: in the sandbox; raises WrongPassword, or a ConversionError for anything else.
Decrypter = Callable[[bytes, str | None, str], bytes]


class QuarantineError(Exception):
    """A refused operator action, with a stable code and a message safe to show."""

    code = "quarantine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(QuarantineError):
    code = "not_found"


class Conflict(QuarantineError):
    code = "conflict"


class FourEyes(QuarantineError):
    code = "four_eyes"


class BadPassword(QuarantineError):
    code = "wrong_password"


class PasswordLimit(QuarantineError):
    code = "password_attempts_exhausted"


class PpapUnavailable(QuarantineError):
    code = "password_release_unavailable"


class ReasonRequired(QuarantineError):
    code = "reason_required"


_DECIDER = {"approve": "approver", "deny": "denier"}
#: Longest decision reason kept (the API refuses longer ones before they get here).
MAX_DECISION_REASON = 1000


@dataclass(frozen=True)
class ReleaseOutcome:
    entry_id: str
    status: str  # "pending" (waits for an approver), "released" or "denied"
    request_id: int | None = None
    queue_id: str | None = None


class QuarantineService:
    def __init__(
        self,
        stores: SqlStores,
        spool: SpoolWriter,
        settings: Settings,
        decrypt: Decrypter | None = None,
    ) -> None:
        self._stores = stores
        self._q = stores.quarantine
        self._spool = spool
        self._settings = settings
        self._decrypt = decrypt

    # --- reading ----------------------------------------------------------------------
    def search(self, query: QuarantineQuery, actor: Actor | None = None
               ) -> Page[QuarantineEntry]:
        """`query`, narrowed to the actor's tenant when the actor has one."""
        if actor is not None and actor.tenant is not None:
            query = replace(query, tenant=actor.tenant)
        return self._q.search(query)

    def show(self, entry_id: str, actor: Actor | None = None) -> QuarantineEntry:
        """The entry; NotFound also when it is another tenant's than the actor's (404, not
        403: ids of other municipalities do not leak)."""
        entry = self._q.get(entry_id)
        if entry is None or (actor is not None and not actor.sees(entry.tenant)):
            raise NotFound("no such quarantine entry")
        return entry

    def original(self, entry_id: str, actor: Actor) -> bytes:
        """The original message as received; every download is audited."""
        entry = self.show(entry_id, actor)
        data = self._q.original(entry_id)
        if data is None:
            raise NotFound("no such quarantine entry")
        self._stores.audit.record(actor, "quarantine.download", entry_id, size=len(data),
                                  scope=entry.tenant)
        return data

    # --- changes ----------------------------------------------------------------------
    def delete(self, entry_id: str, actor: Actor) -> None:
        entry = self.show(entry_id, actor)
        if not self._q.delete(entry_id, self._stores.audit.hook(
                actor, "quarantine.delete", entry_id, scope=entry.tenant)):
            raise NotFound("no such quarantine entry")

    def purge(self, actor: Actor) -> list[str]:
        """Remove expired entries (the scheduled task and `mugaika quarantine purge`)."""
        audit = self._stores.audit
        # One hook per entry: the audit row's target is the entry purged, as for a delete.
        return self._q.purge(audit=lambda entry_id: audit.hook(actor, "quarantine.purge",
                                                               entry_id))

    def scheduled_purge(self, actor: Actor, node: str) -> list[str] | None:
        """The server's timed purge: run only when this node claims the interval's lease
        (`task_leases`), so that with several nodes on one database it runs once per
        interval, not once per node; None when another node has it."""
        if not self._q.claim_purge(node, self._settings.quarantine_purge_interval_seconds):
            return None
        return self.purge(actor)

    def request_release(
        self, entry_id: str, actor: Actor, reason: str = "", force_approval: bool = False
    ) -> ReleaseOutcome:
        """File a release request; carried out at once only when approval is switched off
        and the caller is staff (`force_approval` keeps a recipient's link request pending)."""
        entry = self.show(entry_id, actor)
        allowed = _requestable_from(actor)
        if entry.status not in allowed:
            raise Conflict(f"entry is {entry.status}, not {' or '.join(allowed)}")
        audit = self._stores.audit.hook(actor, "quarantine.release_request", entry_id,
                                        scope=entry.tenant, reason=reason)
        request_id = self._q.add_request(entry_id, actor.name, actor.remote, reason, audit,
                                         from_statuses=allowed)
        if request_id is None:
            raise Conflict("entry is no longer held")
        if not (self._settings.release_requires_approval or force_approval):
            return self._carry_out(entry, request_id, actor, requester=actor.name)
        return ReleaseOutcome(entry_id, "pending", request_id)

    def approve(self, entry_id: str, actor: Actor, reason: str | None = None) -> ReleaseOutcome:
        """Carry out the pending request; the approver must not be the requester. `reason`
        is kept with the decision and told to a recipient who asked through the link."""
        entry = self.show(entry_id, actor)
        request = self._pending(entry, actor, "approve")
        reason = _clean_reason(reason) or None
        return self._carry_out(entry, request.id, actor, requester=request.requested_by,
                               reason=reason, notify=self._notifier(entry, request, reason))

    def deny(self, entry_id: str, actor: Actor, reason: str) -> ReleaseOutcome:
        """Refuse the pending request with a reason (four eyes as for approve); the entry
        becomes `denied`, and a recipient who asked through the link is told why."""
        reason = _clean_reason(reason)
        if not reason:
            raise ReasonRequired("a denial needs a reason")
        entry = self.show(entry_id, actor)
        request = self._pending(entry, actor, "deny")
        audit = self._stores.audit.hook(
            actor, "quarantine.release_deny", entry_id, scope=entry.tenant,
            requested_by=request.requested_by,
            reason=reason, notified=list(_notified(entry, request)))
        queued = self._q.deny_request(entry_id, request.id, actor.name, reason,
                                      self._notifier(entry, request, reason, released=False),
                                      audit)
        if queued is None:
            raise Conflict("the release request was decided meanwhile")
        for queue_id in queued:
            self._spool.wake(queue_id)
        return ReleaseOutcome(entry_id, DENIED, request.id)

    def _pending(self, entry: QuarantineEntry, actor: Actor, verb: str) -> ReleaseRequest:
        """The request to decide; refused (and audited) when `actor` filed it."""
        pending = [r for r in entry.requests if r.status == "pending"]
        if not pending:
            raise Conflict("no pending release request")
        request = pending[-1]
        if request.requested_by == actor.name:
            self._stores.audit.record(actor, f"quarantine.{verb}_refused", entry.id,
                                      scope=entry.tenant, reason=f"{_DECIDER[verb]} is the requester")
            raise FourEyes(f"a release must be {verb}d by someone other than its requester")
        return request

    def _notifier(self, entry: QuarantineEntry, request: ReleaseRequest, reason: str | None,
                  released: bool = True) -> Spooler:
        """Spools the decision mail for each recipient to tell (built now, outside the
        transaction, so that a template error cannot fail a decision half-way)."""
        held = HeldMail(entry.id, entry.created_at, entry.mail_from, entry.subject,
                        entry.reasons)
        mails = [(rcpt, decision_mail(held, rcpt, released, reason, self._settings))
                 for rcpt in _notified(entry, request)]
        kind = "released" if released else "denied"

        def notify(conn: Connection) -> list[str]:
            return [self._spooler(raw, notice_envelope(rcpt, kind, quarantine_id=entry.id,
                                                         **_tenant_of(entry)))(conn)
                    for rcpt, raw in mails]

        return notify

    def _carry_out(
        self, entry: QuarantineEntry, request_id: int, approver: Actor, requester: str,
        reason: str | None = None, notify: Spooler | None = None,
    ) -> ReleaseOutcome:
        original = self._q.original(entry.id)
        if original is None:
            raise NotFound("no such quarantine entry")
        envelope = Envelope(
            mail_from=entry.mail_from, rcpt_tos=entry.recipients, received_at=time.time(),
            kind="release",
            add_headers=((RELEASED_BY_HEADER, approver.name), (REQUESTED_BY_HEADER, requester)),
            extra={"quarantine_id": entry.id, **_tenant_of(entry)},
        )
        detail = {"reason": reason} if reason else {}
        audit = self._stores.audit.hook(approver, "quarantine.release", entry.id,
                                        scope=entry.tenant, request_id=request_id, requested_by=requester,
                                        recipients=list(entry.recipients), **detail)
        notices: list[str] = []
        release = self._spooler(original, envelope)

        def deliver(conn: Connection) -> str:
            queue_id = release(conn)
            notices.extend(notify(conn) if notify is not None else ())
            return queue_id

        queue_id = self._q.complete_release(entry.id, request_id, approver.name, deliver,
                                            audit, reason)
        if queue_id is None:
            raise Conflict("the release request was decided meanwhile")
        for woken in (queue_id, *notices):  # only now: the worker must see the committed rows
            self._spool.wake(woken)
        return ReleaseOutcome(entry.id, "released", request_id, queue_id)

    def release_with_password(
        self, entry_id: str, actor: Actor, password: str, part: str | None = None
    ) -> ReleaseOutcome:
        """PPAP: decrypt the held encrypted part(s) and send the message to be sanitized."""
        entry = self.show(entry_id, actor)
        if self._decrypt is None:
            raise PpapUnavailable("password release is not available on this gateway")
        if entry.status == RELEASED:
            raise Conflict("entry was released already")
        targets = [p for p in entry.parts if p.releasable and (part is None or p.part == part)]
        if not targets:
            raise Conflict("no password-protected part to release")
        # Counted before decrypting, in one conditional update: parallel guesses cannot
        # all pass a check made before any of them is counted.
        attempts = self._q.reserve_password_attempt(entry_id,
                                                    self._settings.ppap_max_password_attempts)
        if attempts is None:
            self._stores.audit.record(actor, "quarantine.password_refused", entry_id,
                                      scope=entry.tenant)
            raise PasswordLimit("too many wrong passwords for this entry")
        decrypted = {p.part: Replacement(p.sha256, self._decrypt_part(entry, p.part, p.filename,
                                                                      password, actor, attempts))
                     for p in targets}
        original = self._q.original(entry_id)
        assert original is not None  # the entry exists and originals live as long as entries
        envelope = Envelope(
            mail_from=entry.mail_from, rcpt_tos=entry.recipients, received_at=time.time(),
            kind="inbound", add_headers=((PASSWORD_RELEASE_HEADER, actor.name),),
            extra={"ppap_release_of": entry_id, **_tenant_of(entry)},
        )
        try:
            message = replace_parts(original, decrypted)
        except ValueError:
            raise Conflict("the encrypted part could not be located in the original") from None
        audit = self._stores.audit.hook(actor, "quarantine.release_password", entry_id,
                                        scope=entry.tenant, parts=sorted(decrypted))
        queue_id = self._q.release_now(entry_id, actor.name, self._spooler(message, envelope),
                                       audit)
        if queue_id is None:
            raise Conflict("entry was released meanwhile")
        self._spool.wake(queue_id)
        return ReleaseOutcome(entry_id, "released", None, queue_id)

    def _spooler(self, raw: bytes, envelope: Envelope) -> Callable[[Connection], str]:
        """The store's `deliver` step: log the new message in the release transaction and
        spool it under that id, so its delivery status always finds the row."""

        def deliver(conn: Connection) -> str:
            queue_id = new_queue_id()
            self._stores.messages.record_received(queue_id, envelope, len(raw), conn=conn)
            return self._spool.put(raw, envelope, queue_id)

        return deliver

    def _decrypt_part(
        self, entry: QuarantineEntry, part: str, filename: str | None, password: str,
        actor: Actor, attempts: int,
    ) -> bytes:
        assert self._decrypt is not None
        data = self._q.part_data(entry.id, part)
        if data is None:
            raise NotFound("the held part is gone")
        try:
            return self._decrypt(data, filename, password)
        except WrongPassword:
            self._stores.audit.record(actor, "quarantine.password_wrong", entry.id,
                                      scope=entry.tenant,
                                      part=part, failures=attempts)
            left = max(0, self._settings.ppap_max_password_attempts - attempts)
            raise BadPassword(f"wrong password ({left} attempts left)") from None
        except ConversionError as exc:
            raise Conflict(f"the part could not be decrypted: {exc.code}") from None


def _tenant_of(entry: QuarantineEntry) -> dict[str, str]:
    """Envelope extras that send a release (or a notification) through the entry's tenant:
    its downstream, its policy."""
    return {"tenant": entry.tenant} if entry.tenant else {}


def _requestable_from(actor: Actor) -> tuple[str, ...]:
    """Staff may request a denied entry again, so that a mistaken denial can be undone
    (by another request and another approver). The notice link may not: the recipient was
    told why, and a public link must not turn each decision into a new request."""
    return (HELD,) if actor.name == LINK_ACTOR else (HELD, DENIED)


def _notified(entry: QuarantineEntry, request: ReleaseRequest) -> tuple[str, ...]:
    """Whom a decision is mailed to: the message's recipients when the request came
    through their notice link (the link is the same for all, so who clicked is not
    known); nobody for staff, who see the decision in the API and the audit log."""
    if request.requested_by != LINK_ACTOR:
        return ()
    seen: dict[str, str] = {}
    for rcpt in entry.recipients:
        seen.setdefault(rcpt.lower(), rcpt)
    return tuple(seen.values())


def _clean_reason(reason: str | None) -> str:
    return (reason or "").strip()[:MAX_DECISION_REASON]


def notice_envelope(rcpt: str, notice: str, **extra: str) -> Envelope:
    """Mail mugaika writes to a recipient: delivered as it is (`kind="notice"`), from the
    null sender so that a failure never bounces back into the gateway (RFC 3834 5.1)."""
    return Envelope(mail_from="", rcpt_tos=(rcpt,), received_at=time.time(), kind="notice",
                    extra={"notice": notice, **extra})


@dataclass(frozen=True)
class Replacement:
    """The new bytes for one leaf, and the sha256 of the bytes it must be replacing."""

    expected_sha256: str
    data: bytes


def replace_parts(untrusted_raw: bytes, replacements: dict[str, Replacement]) -> bytes:
    """The message with the leaves numbered as `gateway.pipeline.parse` numbers them replaced.

    Everything else (headers, other parts) stays as received: the result goes through the
    normal sanitizing pipeline afterwards. The stdlib parser used here may split a
    malformed message differently from `gateway.pipeline.parse`, so a leaf is replaced only when
    its decoded content is exactly the held part (same sha256); otherwise ValueError.
    """
    msg = email.message_from_bytes(untrusted_raw, policy=email.policy.compat32)
    done: set[str] = set()
    for node, path in _leaves(msg):
        wanted = replacements.get(path)
        if wanted is None:
            continue
        current = node.get_payload(decode=True)
        if not isinstance(current, bytes) or sha256(current).hexdigest() != wanted.expected_sha256:
            raise ValueError(f"part {path} is not the held part")
        del node["Content-Transfer-Encoding"]
        node.set_payload(wanted.data)
        email.encoders.encode_base64(node)
        done.add(path)
    if done != set(replacements):
        raise ValueError("a held part was not found in the original")
    # The spool keeps CRLF line ends (ingress normalises them); so must this message.
    return msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def _leaves(msg: Message) -> list[tuple[Message, str]]:
    out: list[tuple[Message, str]] = []
    stack: list[tuple[Message, str, int]] = [(msg, "1", 0)]
    while stack:
        node, path, depth = stack.pop()
        if node.is_multipart():
            children = node.get_payload()
            assert isinstance(children, list)
            for i, child in enumerate(children, 1):
                stack.append((child, f"{path}.{i}" if depth else str(i), depth + 1))
        else:
            out.append((node, path))
    return out
