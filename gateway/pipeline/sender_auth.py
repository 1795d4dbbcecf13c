"""Sender authentication on the original, before the rebuild (issue 21, docs/sender-auth.md).

After 無害化 the original's DKIM signatures can no longer be verified downstream, so the
gateway checks the original bytes as they arrived, with the SMTP envelope and the client's
address: SPF (RFC 7208) for MAIL FROM (HELO for a null sender), every DKIM signature
(RFC 6376, up to `MAX_SIGNATURES`), DMARC (RFC 7489) and an ARC chain already present
(RFC 8617). The verdict travels on as `AuthResults`; what the gateway does about it is
`gateway.pipeline.auth_policy`'s business.

The libraries do the protocols (dkimpy: DKIM, ARC and tag lists; pyspf: SPF; authres: the
RFC 8601 header; publicsuffixlist: the organisational domain, from the list bundled in the
pinned package). All DNS goes through one `Resolver` (`gateway.pipeline.auth_dns`:
dnspython, timeouts, a TTL-bounded LRU cache) under a per-message budget. Nothing here
raises on what a sender controls: a DNS failure is `temperror`, a malformed message or
record `permerror` (or `fail`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import authres
import authres.arc
import authres.dmarc
import dkim
import dkim.util
import spf
from publicsuffixlist import PublicSuffixList

from gateway.pipeline import dkimpy_speed

# Resolver and TempError are part of this module's interface (the worker builds one
# Resolver from the settings); they live with the rest of the DNS.
from gateway.pipeline.auth_dns import Lookups, Resolver, TempError, serving_pyspf
from gateway.pipeline.parse import top_field_values

__all__ = ["AuthResults", "Resolver", "TempError", "authenticate", "authenticate_cached",
           "field_cache", "normalized_domain", "organisational_domain"]

P = ParamSpec("P")
T = TypeVar("T")

#: DKIM signatures verified per message (each costs a lookup and a body hash). Up to
#: MAX_SIGNATURES_READ are read first (cheap) and those whose d= aligns with the From
#: domain verified first, so junk put above the author's signature does not hide it.
MAX_SIGNATURES = 5
#: (dkimpy rescans the header list for each one read: quadratic, ~10 ms at 200.)
MAX_SIGNATURES_READ = 200
#: ARC sets validated; a longer chain is `arc=fail` unread (RFC 8617 allows 50, real ones
#: have a few, and each set costs two lookups and a body hash).
MAX_ARC_SETS = 10
#: DKIM signatures the event loop verifies (`authenticate_cached`); a message with more,
#: or with an ARC chain, is checked in a sanitize thread: each verification hashes the
#: body again, and the loop's SMTP sessions wait meanwhile.
LOOP_MAX_SIGNATURES = 2
#: Nor a header section above this: dkimpy's reading of a long folded field is quadratic
#: (a 60 KB signature field took 5 ms), and real headers are a few KB.
LOOP_MAX_HEADER_BYTES = 16 * 1024
#: A header section above either limit is not handed to the parsers (dkimpy joins folded
#: lines by repeated concatenation: quadratic in a long field): signatures in it are
#: `permerror`, DMARC without a readable From is `permerror`.
MAX_HEADER_BYTES = 256 * 1024
MAX_HEADER_LINES = 2000
#: A message may wait on DNS at most this many lookup timeouts in all; then every further
#: lookup is a temperror at once (a hostile message cannot hold a worker for long).
DNS_BUDGET_TIMEOUTS = 4
#: Authentication-Results stays one line under SMTP's 998 octets with its field name.
MAX_HEADER_VALUE = 900
MIN_RSA_BITS = 1024  # RFC 8301
#: From: fields up to this many characters have their readings cached (`field_cache`).
MAX_CACHED_FROM = 512


SPF_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})
DKIM_RESULTS = frozenset({"pass", "fail", "neutral", "none", "temperror", "permerror", "policy"})
DMARC_RESULTS = frozenset({"pass", "fail", "none", "temperror", "permerror"})
ARC_RESULTS = frozenset({"pass", "fail", "none"})
POLICIES = frozenset({"none", "quarantine", "reject"})

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"(?=[a-z0-9_.-]{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
_DMARC1 = re.compile(rb"v[ \t]*=[ \t]*DMARC1[ \t]*(;|\Z)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_SIGNATURE_FIELD = re.compile(rb"(?im)^dkim-signature[ \t]*:")
_ARC_SEAL_FIELD = re.compile(rb"(?im)^arc-seal[ \t]*:")
#: dkimpy logs untrusted header text at error level; our verdict says it all.
_QUIET = logging.Logger("mugaika.sender_auth.dkimpy", logging.CRITICAL + 1)
dkimpy_speed.install()  # dkimpy's hot spots, by equivalents (same results)


@dataclass(frozen=True)
class AuthResults:
    """What the checks found; every string is one of the RFC's result words or a domain."""

    spf: str             # pass|fail|softfail|neutral|none|temperror|permerror (RFC 7208)
    spf_domain: str      # the domain SPF checked: MAIL FROM's, or HELO's for a null sender
    dkim: tuple[tuple[str, str], ...]   # (result, d= domain) per signature; () = none
    dmarc: str           # pass|fail|none|temperror|permerror (RFC 7489)
    dmarc_policy: str    # "none"|"quarantine"|"reject" that applies; "" when no record
    from_domain: str     # the RFC5322.From domain ("" when there is none / several)
    arc: str             # pass|fail|none (RFC 8617, a chain already present)
    spf_scope: str = "mailfrom"  # "helo" when SPF checked HELO (a null sender)

    def header_value(self, authserv_id: str) -> str:
        """One RFC 8601 Authentication-Results value: no CR/LF, at most MAX_HEADER_VALUE
        characters (fewer DKIM results, then no domains, when it would be longer)."""
        return _header_value(self, authserv_id)


@functools.lru_cache(maxsize=1024)  # a sender's mail gets the same results, message after message
def _header_value(r: AuthResults, authserv_id: str) -> str:
    serv = re.sub(r"[^A-Za-z0-9._-]", "", authserv_id)[:253] or "unknown"
    value = ""
    for keep_dkim, with_domains in _shrinking(len(r.dkim)):
        results = _clauses(r, keep_dkim, with_domains)
        value = str(authres.all_features().header(authserv_id=serv, results=results)
                    .header_value())
        if len(value) <= MAX_HEADER_VALUE:
            break
    return value


def _shrinking(dkim_count: int) -> Iterator[tuple[int, bool]]:
    """(DKIM results kept, domains shown): everything first, then less and less."""
    kept = max(min(dkim_count, MAX_SIGNATURES), 1)
    yield from ((n, True) for n in range(kept, 0, -1))
    yield 1, False


def _clauses(r: AuthResults, keep_dkim: int, with_domains: bool) -> list[Any]:
    def prop(value: str) -> str | None:
        return _safe_domain(value) if with_domains else None

    scope = "smtp_helo" if r.spf_scope == "helo" else "smtp_mailfrom"
    clauses: list[Any] = [authres.SPFAuthenticationResult(
        result=_word(r.spf, SPF_RESULTS), **{scope: prop(r.spf_domain)})]
    clauses += [authres.DKIMAuthenticationResult(result=_word(res, DKIM_RESULTS), header_d=prop(d))
                for res, d in r.dkim[:keep_dkim]]
    if not r.dkim:
        clauses.append(authres.DKIMAuthenticationResult(result="none"))
    clauses.append(authres.dmarc.DMARCAuthenticationResult(
        result=_word(r.dmarc, DMARC_RESULTS), header_from=prop(r.from_domain),
        policy=r.dmarc_policy if r.dmarc_policy in POLICIES else None))
    clauses.append(authres.arc.ARCAuthenticationResult(result=_word(r.arc, ARC_RESULTS)))
    return clauses


def _word(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "permerror" if "permerror" in allowed else "fail"


def _safe_domain(value: str) -> str | None:
    """`value` if it is a plain domain (nothing that could end or add a clause), else None."""
    domain = value.lower()
    return domain if _DOMAIN.match(domain) and len(domain) <= 100 else None


# --- the checks ------------------------------------------------------------------------


def authenticate(raw: bytes, mail_from: str, helo: str, client_ip: str,
                 resolver: Resolver) -> AuthResults:
    """SPF, every DKIM signature (up to MAX_SIGNATURES), DMARC and ARC for one original.

    Never raises and never waits on DNS longer than DNS_BUDGET_TIMEOUTS lookup timeouts.
    """
    lookups = Lookups(resolver, time.monotonic() + DNS_BUDGET_TIMEOUTS * resolver.timeout)
    return _checks(raw, _header_section(raw), mail_from, helo, client_ip, lookups)


def authenticate_cached(raw: bytes, mail_from: str, helo: str, client_ip: str,
                        resolver: Resolver) -> AuthResults | None:
    """`authenticate` from the resolver's cache alone, never waiting on the network (for
    the event loop); None when any record it needed was not cached, or when the message
    carries more than the loop should spend on it (`LOOP_MAX_SIGNATURES`, an ARC chain,
    a header section over `LOOP_MAX_HEADER_BYTES`)."""
    head = _header_section(raw)
    if (len(head) > LOOP_MAX_HEADER_BYTES
            or len(_SIGNATURE_FIELD.findall(head)) > LOOP_MAX_SIGNATURES
            or _ARC_SEAL_FIELD.search(head)):
        return None
    lookups = Lookups(resolver, time.monotonic() + DNS_BUDGET_TIMEOUTS * resolver.timeout,
                      cache_only=True)
    found = _checks(raw, head, mail_from, helo, client_ip, lookups)
    return None if lookups.missed else found


def _checks(raw: bytes, head: bytes, mail_from: str, helo: str, client_ip: str,
            lookups: Lookups) -> AuthResults:
    """The checks on `raw`, whose header section is `head`."""
    spf_result, spf_domain, scope = _spf(mail_from, helo, client_ip, lookups)
    if len(head) > MAX_HEADER_BYTES or head.count(b"\n") >= MAX_HEADER_LINES:
        # too large to parse: a signature or chain in it cannot pass, From is unread
        from_domain = ""
        signatures = _unread_signatures(head)
        arc = "fail" if _ARC_SEAL_FIELD.search(head) else "none"
    else:
        from_domain = _from_domain(head)
        signatures = _dkim(raw, head, from_domain, lookups)
        arc = _arc(raw, head, lookups)
    dmarc, policy = _dmarc(from_domain, spf_result, spf_domain, signatures, lookups)
    return AuthResults(spf_result, spf_domain, signatures, dmarc, policy, from_domain, arc,
                       scope)


def _spf(mail_from: str, helo: str, client_ip: str,
         lookups: Lookups) -> tuple[str, str, str]:
    """(result, domain checked, "mailfrom" or "helo"), from the resolver's `spf_results`
    when the same client, sender and HELO were checked in the last minute (pyspf's
    evaluation was a third of a message's checks; a temperror is never kept)."""
    key = (client_ip, mail_from.lower(), helo.lower())
    cached = lookups.resolver.spf_results.get(key)
    if cached is not None:
        return cached
    found = _spf_checked(mail_from, helo, client_ip, lookups)
    if found[0] != "temperror" and not lookups.missed:
        lookups.resolver.spf_results.put(key, found)
    return found


def _spf_checked(mail_from: str, helo: str, client_ip: str,
                 lookups: Lookups) -> tuple[str, str, str]:
    scope = "mailfrom" if mail_from else "helo"
    ip = _client_address(client_ip)
    if ip is None:
        return "none", "", scope  # no client address (a local injection): nothing to check
    try:
        with serving_pyspf(lookups):
            query = spf.query(i=ip, s=mail_from, h=helo, timeout=lookups.resolver.timeout)
            domain = normalized_domain(str(query.o or "")) or ""
            result = str(query.check()[0]) if domain else "none"
    except Exception:  # a pyspf bug on hostile input must not stop the message
        return "permerror", "", scope
    return (result if result in SPF_RESULTS else "permerror"), domain, scope


def _client_address(client_ip: str) -> str | None:
    """The client's address as pyspf wants it (an IPv4 peer seen on a v6 socket as v4)."""
    try:
        address = ipaddress.ip_address(client_ip.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def normalized_domain(value: str) -> str | None:
    """`value` lower-cased, IDNA-encoded, without a final dot, if it is a domain; else None."""
    domain = value.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return domain if _DOMAIN.match(domain) else None


def _header_section(raw: bytes) -> bytes:
    """The original's header section (the whole message when it has no blank line)."""
    end = _HEADER_END.search(raw)  # a regex scan: linear, whatever the size
    return raw[:end.start()] if end else raw


def _from_domain(head: bytes) -> str:
    """The one RFC5322.From domain; "" for no From, several From fields or domains, or
    one that is not a domain (RFC 7489 6.6.1: DMARC cannot be applied then). Read by the
    pipeline's own header reader, as the rebuild and the spoofing rule read it."""
    fields = top_field_values(head + b"\n\n", "from")
    return _domain_of(fields[0]) if len(fields) == 1 else ""


def field_cache(fn: Callable[Concatenate[str, P], T]) -> Callable[Concatenate[str, P], T]:
    """`fn` cached per arguments (the last 4,096) when its first, a header field's text,
    is at most MAX_CACHED_FROM characters: a sender's From: is the same message after
    message. Longer fields are computed every time: the cache holds at most 4,096 of
    512 characters."""
    # (lru_cache's wrapper takes fn's arguments, which must be hashable: ours are)
    cached = cast(Callable[Concatenate[str, P], T], functools.lru_cache(maxsize=4096)(fn))

    @functools.wraps(fn)
    def call(text: str, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if len(text) > MAX_CACHED_FROM:
            return fn(text, *args, **kwargs)
        return cached(text, *args, **kwargs)
    return call


@field_cache  # the stdlib's address parser was half of an unsigned message's checks
def _domain_of(field: str) -> str:
    try:
        addresses = [addr for _, addr in getaddresses([field])]
    except Exception:  # the stdlib address parser on hostile input: no readable From
        return ""
    if not addresses or any("@" not in a for a in addresses):
        return ""
    domains = {normalized_domain(a.rpartition("@")[2]) for a in addresses}
    only = domains.pop() if len(domains) == 1 else None
    return only or ""


# --- DKIM ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signature:
    index: int
    domain: str           # d=, "" when the field is unreadable
    prepared: Any = None  # dkimpy's verify_headerprep() result; None: malformed (permerror)


def _dkim(raw: bytes, head: bytes, from_domain: str,
          lookups: Lookups) -> tuple[tuple[str, str], ...]:
    """(result, d=) for each signature checked, those aligned with From first.

    A missing key record is `permerror` (RFC 6376 6.1.2: PERMFAIL, "no key for
    signature"), as is a malformed signature or key; a signature that does not verify
    (changed body or headers, another key) is `fail`.
    """
    if not _SIGNATURE_FIELD.search(head):
        return ()  # dkimpy would split the whole message first (0.15 ms a message)
    try:
        signer = dkim.DKIM(raw, logger=_QUIET, minkey=MIN_RSA_BITS, timeout=lookups.resolver.timeout)
    except Exception:  # dkimpy cannot split the header section: no signature is readable
        return _unread_signatures(head)
    count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
    read = [_read_signature(signer, i) for i in range(min(count, MAX_SIGNATURES_READ))]
    read.sort(key=lambda s: not (from_domain and _aligned(s.domain, from_domain, "r")))
    return tuple((_verify(signer, s, lookups), s.domain) for s in read[:MAX_SIGNATURES])


def _unread_signatures(head: bytes) -> tuple[tuple[str, str], ...]:
    return (("permerror", ""),) if _SIGNATURE_FIELD.search(head) else ()


def _read_signature(signer: Any, index: int) -> _Signature:
    try:
        prepared = signer.verify_headerprep(index)
        return _Signature(index, _tag_domain(prepared[0].get(b"d", b"")), prepared)
    except Exception:  # missing or bad tags, expired: the signature cannot pass
        return _Signature(index, "")


def _tag_domain(value: bytes) -> str:
    return normalized_domain(value.decode("ascii", "replace")) or ""


def _verify(signer: Any, sig: _Signature, lookups: Lookups) -> str:
    if sig.prepared is None:
        return "permerror"
    tags, include_headers, sig_headers = sig.prepared
    name = b"%s._domainkey.%s" % (tags[b"s"], tags[b"d"])
    try:
        record = lookups.dkim_txt(name)
        dkim.evaluate_pk(name, record)  # raises for no key or a bad one: permerror
        # dkimpy's own lookup would turn a missing key into a plain False; it gets the
        # record fetched above instead.
        ok = signer.verify_sig(tags, include_headers, sig_headers[sig.index],
                               lambda _name, timeout=0: record)
    except dkim.DnsTimeoutError:
        return "temperror"
    except dkim.ValidationError:
        return "fail"  # the body hash does not match
    except Exception:  # no key, a bad key or one too short, tags dkimpy cannot use
        return "permerror"
    return "pass" if ok else "fail"


# --- DMARC -----------------------------------------------------------------------------


@functools.cache
def _suffixes() -> PublicSuffixList:
    """The Public Suffix List bundled in the pinned publicsuffixlist package (ICANN and
    private sections: a.github.io and b.github.io are different organisations)."""
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)  # 5 calls a message, for a handful of domains
def organisational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (the domain itself when it is one)."""
    return str(_suffixes().privatesuffix(domain) or domain)


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    if not domain:
        return False
    if mode == "s":
        return domain == from_domain
    return organisational_domain(domain) == organisational_domain(from_domain)


@dataclass(frozen=True)
class _Policy:
    request: str   # p= or sp=, whichever applies
    adkim: str     # "r" or "s"
    aspf: str


def _dmarc(from_domain: str, spf_result: str, spf_domain: str,
           signatures: tuple[tuple[str, str], ...], lookups: Lookups) -> tuple[str, str]:
    """(result, policy that applies). pct= is ignored: a failure always gets the policy."""
    if not from_domain:
        return "permerror", ""
    try:
        policy = _discover(from_domain, lookups)
    except TempError:
        return "temperror", ""
    except ValueError:
        return "permerror", ""
    if policy is None:
        return "none", ""
    passed = any(r == "pass" and _aligned(d, from_domain, policy.adkim) for r, d in signatures)
    passed = passed or (spf_result == "pass" and _aligned(spf_domain, from_domain, policy.aspf))
    return ("pass" if passed else "fail"), policy.request


def _discover(from_domain: str, lookups: Lookups) -> _Policy | None:
    """RFC 7489 6.6.3: the From domain's record, else its organisational domain's (whose
    sp= then applies); None when neither has exactly one; ValueError for a bad one."""
    tags = _record(lookups, from_domain)
    organisational = organisational_domain(from_domain)
    below = tags is None and organisational != from_domain
    if below:
        tags = _record(lookups, organisational)
    if tags is None:
        return None
    p = tags.get(b"p", b"").lower()
    sp = tags.get(b"sp", p).lower()
    if p.decode("ascii", "replace") not in POLICIES or sp.decode("ascii", "replace") not in POLICIES:
        if not tags.get(b"rua"):
            raise ValueError("DMARC record without a valid p= or sp=")
        p = sp = b"none"  # RFC 7489 6.6.3: with rua=, act as if p=none
    return _Policy((sp if below else p).decode(), _mode(tags, b"adkim"), _mode(tags, b"aspf"))


def _record(lookups: Lookups, domain: str) -> dict[bytes, bytes] | None:
    found = [r for r in lookups.txt(f"_dmarc.{domain}") if _DMARC1.match(r)]
    if len(found) != 1:
        return None  # none, or several: DMARC is not applied (RFC 7489 6.6.3)
    try:
        return dict(_tag_list(found[0]))
    except Exception as e:
        raise ValueError("DMARC record is not a tag list") from e


@functools.lru_cache(maxsize=256)  # records repeat; a bad one raises every time
def _tag_list(record: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(dkim.util.parse_tag_value(record).items())


def _mode(tags: dict[bytes, bytes], name: bytes) -> str:
    return "s" if tags.get(name, b"r").lower() == b"s" else "r"


# --- ARC -------------------------------------------------------------------------------


def _arc(raw: bytes, head: bytes, lookups: Lookups) -> str:
    """RFC 8617 validation of the chain the message arrived with: pass, fail or none.
    DNS trouble fails the set it hit (RFC 8617 has no temperror for arc=)."""
    sets = len(_ARC_SEAL_FIELD.findall(head))
    if sets == 0:
        return "none"
    if sets > MAX_ARC_SETS:
        return "fail"
    try:
        cv, _, _ = dkim.arc_verify(raw, logger=_QUIET, dnsfunc=lookups.dkim_txt,
                                   minkey=MIN_RSA_BITS)
    except Exception:  # dkimpy indexes into hostile headers (IndexError, KeyError)
        return "fail"
    return {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
