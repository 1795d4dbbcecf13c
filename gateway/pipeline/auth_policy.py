"""What sender authentication decides for a message (issue 21, docs/sender-auth.md).

The checks themselves (`gateway.pipeline.sender_auth`) say what passed; this says what the
gateway does about it, in one place:

- DMARC `fail` where the From: domain publishes `p=quarantine` or `p=reject`: the
  `dmarc_fail_action` (quarantine the whole message by default, or tag it);
- mail from the Internet whose From: uses one of our own domains (any tenant's, or a
  subdomain of one), or whose display name shows one of our addresses, without passing
  DMARC for one of our domains: the `spoof_action` (quarantine by default, or tag),
  "なりすましの疑い";
- a DNS failure (`temperror`) is never a reason on its own.

A quarantined message is held whole and released through the normal flow; a tagged one
is delivered with `auth_fail_subject_tag` before its subject and a line in the notice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from email.utils import getaddresses

from gateway.pipeline.message import Sanitized
from gateway.pipeline.sender_auth import AuthResults, field_cache
from gateway.settings import Settings

#: Report reason codes (the notice words them; `[reasons]` in the templates).
DMARC_FAIL = "dmarc_fail"
SPOOFED = "spoofed_own_domain"
_ADDRESS = re.compile(r"[^\s<>\"'@,;:()]+@([A-Za-z0-9.-]+)")


@dataclass(frozen=True)
class Judgement:
    """`action`: deliver, tag or quarantine; `reasons`: why (codes above)."""

    action: str = "deliver"
    reasons: tuple[str, ...] = ()


def judge(auth: AuthResults, from_header: str | None, settings: Settings) -> Judgement:
    """The strictest action any rule calls for, with every rule's reason."""
    found: list[tuple[str, str]] = []
    if (auth.dmarc == "fail" and auth.dmarc_policy in ("quarantine", "reject")
            and settings.dmarc_fail_action != "none"):
        found.append((settings.dmarc_fail_action, DMARC_FAIL))
    own = own_domains(settings)
    # DMARC clears a claim to be us only when it passed for one of our own domains: a
    # partner's passing mail whose display name shows our address is still a spoof.
    ours_passed = auth.dmarc == "pass" and _within(auth.from_domain, own)
    if not ours_passed and _claims_own_domain(from_header or "", own):
        found.append((settings.spoof_action, SPOOFED))
    if not found:
        return Judgement()
    action = "quarantine" if any(a == "quarantine" for a, _ in found) else "tag"
    return Judgement(action, tuple(reason for _, reason in found))


def own_domains(settings: Settings) -> frozenset[str]:
    """Every domain the deployment accepts mail for: the global ones and each tenant's."""
    domains = {d.lower() for d in settings.accepted_domains}
    for tenant in settings.tenants:
        domains.update(d.lower() for d in tenant.domains)
    return frozenset(domains)


def _claims_own_domain(from_header: str, own: frozenset[str]) -> bool:
    """The From: address, or an address written in its display name, is ours."""
    return bool(own) and _claims(from_header, own)


@field_cache  # the stdlib's address parser is the cost
def _claims(from_header: str, own: frozenset[str]) -> bool:
    claimed = {addr.rpartition("@")[2] for _, addr in getaddresses([from_header]) if "@" in addr}
    claimed.update(m[1] for m in _ADDRESS.finditer(from_header))  # "部長 <boss@city…>" shown
    return any(_within(domain.lower().rstrip("."), own) for domain in claimed)


def _within(domain: str, own: frozenset[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in own)


def with_results(result: Sanitized, auth: AuthResults, judgement: Judgement,
                 settings: Settings) -> Sanitized:
    """The report carries the results (message log, API, console), the header the rebuilt
    message gets (`Authentication-Results`, our hostname as authserv-id) and what the
    policy did."""
    extra = {**result.report.extra, "auth": {
        **vars(auth), "header": auth.header_value(settings.hostname),
        "action": judgement.action, "reasons": list(judgement.reasons)}}
    return replace(result, report=replace(result.report, extra=extra))


def tagged(settings: Settings, judgement: Judgement) -> Settings:
    """The settings a tagged message is rebuilt under: the warning tag before the subject."""
    if judgement.action != "tag" or not settings.auth_fail_subject_tag:
        return settings
    tag = f"{settings.auth_fail_subject_tag}{settings.subject_tag}"
    return settings.model_copy(update={"subject_tag": tag})

