"""Accounting: every message the gateway accepted must turn up at the sink, as expected.

A message is matched to what arrived by the gateway's queue id (from "250 ... queued as
ID" and the X-Mugaika-Queue-Id header) or else by the correlation token in its
Message-ID. Each accepted message ends as exactly one of delivered, quarantined_notice or
bounced; none is "lost". Duplicates are reported (at-least-once delivery allows them) but
are not failures. A verdict or action that contradicts the manifest is a mismatch.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.loadtest.mix import Outgoing
from gateway.loadtest.sink import Arrival

_ACTION_WORD = re.compile(r"\b(kept|converted|removed)\b(?:/([\w.-]+))?", re.I)


@dataclass
class Sent:
    """The client's record of one submission."""

    outgoing: Outgoing
    code: int = 0  # final SMTP reply code, 0 for a connection failure
    reply: str = ""
    queue_id: str | None = None
    accepted_at: float | None = None
    attempts: int = 0

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


@dataclass
class Accounting:
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    unmatched: int = 0
    mismatches: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    delivered_attachments: int = 0
    delivered_pages: int = 0
    actions_verified: int = 0
    last_arrival: float | None = None

    @property
    def ok(self) -> bool:
        return not self.lost and not self.mismatches and not self.unmatched


def match(sent: list[Sent], arrivals: list[Arrival]) -> tuple[dict[str, list[Arrival]], int]:
    """Arrivals grouped by the token of the message they answer, and the count unmatched."""
    by_queue = {s.queue_id: s.outgoing.token for s in sent if s.queue_id}
    groups: dict[str, list[Arrival]] = {}
    unmatched = 0
    for arrival in arrivals:
        token = by_queue.get(arrival.queue_id or "") or arrival.token
        if token is None:
            unmatched += 1
            continue
        groups.setdefault(token, []).append(arrival)
    return groups, unmatched


def pending(sent: list[Sent], arrivals: list[Arrival]) -> int:
    """How many accepted messages have not arrived yet (for the drain wait)."""
    groups, _ = match(sent, arrivals)
    return sum(1 for s in sent if s.accepted and s.outgoing.token not in groups)


def _check_smtp(s: Sent, expect: dict[str, Any] | None) -> str | None:
    wanted = int(expect["smtp"]) if expect else 250
    if s.code // 100 == wanted // 100:
        return None
    return f"{s.outgoing.token} {s.outgoing.template.name}: SMTP {s.code or 'error'} " \
        f"({s.reply[:80]!r}), expected {wanted}"


def _check_actions(arrival: Arrival, expect: dict[str, Any]) -> tuple[str | None, bool]:
    """Compare the attachment fates; returns (problem, verified from the gateway's header)."""
    wanted = Counter(a["action"] for a in expect["attachments"])
    if arrival.actions_header:
        found = [(w.lower(), code) for w, code in _ACTION_WORD.findall(arrival.actions_header)]
        seen = Counter(w for w, _ in found)
        short = [k for k in ("converted", "removed") if seen[k] < wanted[k]]
        if short:
            return f"actions {dict(seen)} lack {short} (expected {dict(wanted)})", True
        return _missing_codes(expect, [c for w, c in found if w == "removed" and c]), True
    if wanted["converted"] == 0 and arrival.attachments:
        return f"{arrival.attachments} attachment(s) delivered, none expected", False
    if wanted["converted"] and not arrival.attachments:
        return f"no rendering delivered, {wanted['converted']} expected", False
    return None, False


def _missing_codes(expect: dict[str, Any], codes: list[str]) -> str | None:
    """Each removal the manifest gives reasons for must show one of them (when the gateway
    names reasons at all); each reported code is used once."""
    if not codes:
        return None
    pool = Counter(codes)
    wanted = [a for a in expect["attachments"] if a["action"] == "removed" and a["codes"]]
    for att in sorted(wanted, key=lambda a: len(a["codes"])):
        code = next((c for c in att["codes"] if pool[c] > 0), None)
        if code is None:
            return f"{att['filename']!r} removed for {sorted(pool.elements())}, expected " \
                f"one of {att['codes']}"
        pool[code] -= 1
    return None


def _check_arrival(s: Sent, arrival: Arrival, acc: Accounting) -> bool:
    """Record any contradiction with the manifest; True when the arrival matches it."""
    expect = s.outgoing.template.expect
    if expect is None or arrival.kind == "bounced":
        return expect is None
    name = f"{s.outgoing.token} {s.outgoing.template.name}"
    if arrival.verdict not in expect["verdicts"]:
        acc.mismatches.append(f"{name}: verdict {arrival.verdict!r}, "
                              f"expected one of {expect['verdicts']}")
        return False
    if arrival.kind == "quarantined_notice":
        return True
    problem, verified = _check_actions(arrival, expect)
    acc.actions_verified += verified
    if problem:
        acc.mismatches.append(f"{name}: {problem}")
    return problem is None


def account(sent: list[Sent], arrivals: list[Arrival]) -> Accounting:
    """The verdict on a run: outcomes, losses, duplicates and manifest mismatches."""
    acc = Accounting()
    groups, acc.unmatched = match(sent, arrivals)
    for s in sent:
        problem = _check_smtp(s, s.outgoing.template.expect)
        if problem:
            acc.mismatches.append(problem)
        if not s.accepted:
            continue
        got = sorted(groups.get(s.outgoing.token, []), key=lambda a: a.received_at)
        if not got:
            acc.lost.append(s.outgoing.token)
            continue
        first = got[0]
        acc.outcomes[first.kind] += 1
        acc.duplicates += len(got) - 1
        if s.accepted_at is not None:
            acc.latencies.append(first.received_at - s.accepted_at)
        acc.last_arrival = max(acc.last_arrival or 0.0, first.received_at)
        as_expected = _check_arrival(s, first, acc)
        if first.kind == "delivered":
            # Attachments handled, whatever their fate; pages only when they were rendered
            # as the manifest says (a removed PDF has no pages to count).
            acc.delivered_attachments += s.outgoing.template.attachments
            acc.delivered_pages += s.outgoing.template.pages if as_expected else 0
    return acc
