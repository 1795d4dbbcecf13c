"""The outcome of sanitizing one message: what was done to each part, and why.

This is the JSON report of `mugaika sanitize --report`, the source of the notice and of
the `X-Mugaika-*` headers, and what the message log stores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    CLEAN = "clean"  # nothing needed changing beyond the rebuild
    SANITIZED = "sanitized"  # something was converted or removed
    QUARANTINED = "quarantined"  # the whole message is held; the recipient gets a notice


class ActionKind(StrEnum):
    KEPT = "kept"
    CONVERTED = "converted"
    REMOVED = "removed"


@dataclass(frozen=True)
class Action:
    """What happened to one leaf part (or one archive member, `part` like "2/memo.docx")."""

    part: str
    filename: str | None
    declared_type: str
    detected_type: str
    action: ActionKind
    reason: str
    outputs: tuple[str, ...] = ()
    #: Reason code from the converters' error catalogue, or "" when converted fine.
    code: str = ""
    #: The original is kept in quarantine (removed, converted, or held for release).
    quarantined: bool = False
    #: Held for release by password or approval (PPAP, unknown type), not refused outright.
    releasable: bool = False
    findings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    pages: int = 0


@dataclass(frozen=True)
class LinkWarning:
    """A link whose visible text shows another URL than its target (possible phishing)."""

    text: str
    target: str


@dataclass(frozen=True)
class Report:
    queue_id: str
    verdict: Verdict
    actions: tuple[Action, ...] = ()
    defects: tuple[str, ...] = ()
    link_warnings: tuple[LinkWarning, ...] = ()
    #: Why the whole message was quarantined, when it was.
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)


def auth_summary(report: Report) -> str | None:
    """`spf=pass dkim=pass dmarc=pass arc=none` of the sender authentication the report
    carries (issue 21; DKIM: each signature's result), or None when none ran."""
    auth = report.extra.get("auth")
    if not isinstance(auth, dict):
        return None
    dkim = ",".join(str(d[0]) for d in auth.get("dkim") or [] if isinstance(d, list | tuple))
    return (f"spf={auth.get('spf')} dkim={dkim or 'none'} dmarc={auth.get('dmarc')} "
            f"arc={auth.get('arc')}")[:200]


def verdict_for(actions: tuple[Action, ...]) -> Verdict:
    """CLEAN when every part was kept as it was, SANITIZED otherwise."""
    if all(a.action is ActionKind.KEPT for a in actions):
        return Verdict.CLEAN
    return Verdict.SANITIZED
