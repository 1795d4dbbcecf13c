"""DNS for sender authentication (issue 21, docs/sender-auth.md): one resolver with
timeouts and a cache for the whole process, a per-message budget on top of it, and the
seams through which dkimpy and pyspf look their records up.

dnspython does the protocol (UDP, TCP on truncation, SERVFAIL and NXDOMAIN, the
TTL-bounded LRU cache); this module only decides what an answer means for the checks:
records, nothing (`[]`: the name or record does not exist, or cannot), or `TempError`
(ask again later).
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import dkim
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
import spf

K = TypeVar("K")
V = TypeVar("V")
#: Longest a record (or its absence) is kept in our cache, whatever its TTL says.
MAX_CACHE_SECONDS = 300.0
#: How long "no such name" and "no record" are kept (RFC 2308 would read the SOA).
NEGATIVE_SECONDS = 60.0


class ExpiringCache(Generic[K, V]):
    """A small LRU of values that expire; thread-safe (the sanitize threads share it)."""

    def __init__(self, size: int, seconds: float = 60.0) -> None:
        self.size, self.seconds = size, seconds
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if found[0] < time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: K, value: V, seconds: float | None = None) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + (seconds or self.seconds), value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class TempError(Exception):
    """A DNS answer that may be different later: timeout, SERVFAIL, no server reachable."""


class Resolver:
    """DNS through dnspython: timeouts, a small TTL-bounded LRU cache, configurable servers.

    `servers`: "host" or "host:port" ("[v6]:port"), IP addresses (MUGAIKA_DNS_SERVERS);
    empty: the system's resolv.conf (none there: every lookup is a temperror). Safe to
    share between threads (dnspython's cache takes a lock).
    """

    def __init__(self, servers: Sequence[str] = (), timeout: float = 2.0,
                 cache_size: int = 2048) -> None:
        self.timeout = timeout
        self._dns = _stub_resolver(servers)
        self._dns.timeout = timeout
        self._dns.lifetime = timeout
        self._dns.cache = dns.resolver.LRUCache(cache_size)
        #: Answers by (name, type) in front of dnspython's cache, which parses the name
        #: and builds a query key for every hit (a third of a cached message's checks).
        self._answers: ExpiringCache[tuple[str, str], list[dns.rdata.Rdata]] = \
            ExpiringCache(cache_size)
        #: SPF results by (client, sender, HELO), a minute (`sender_auth._spf`).
        self.spf_results: ExpiringCache[tuple[str, str, str], tuple[str, str, str]] = \
            ExpiringCache(cache_size, 60.0)

    def records(self, name: str, rdtype: str, lifetime: float | None = None) -> list[dns.rdata.Rdata]:
        """The `rdtype` records at `name` (CNAMEs followed); [] for NXDOMAIN/NODATA or a
        name that cannot exist; TempError on timeout, SERVFAIL or no server."""
        key = (name.lower().rstrip("."), rdtype)
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        found, ttl = self._lookup(name, rdtype, lifetime)
        self._answers.put(key, found, min(ttl, MAX_CACHE_SECONDS))
        return found

    def cached(self, name: str, rdtype: str) -> list[dns.rdata.Rdata] | None:
        """The `rdtype` records at `name` if our cache has them (unexpired), else None."""
        return self._answers.get((name.lower().rstrip("."), rdtype))

    def _lookup(self, name: str, rdtype: str,
                lifetime: float | None) -> tuple[list[dns.rdata.Rdata], float]:
        """(records, seconds they may be kept)."""
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            # not a DNS name (hostile d=, s=, From): nothing can be published there
            return [], NEGATIVE_SECONDS
        try:
            answer = self._dns.resolve(qname, rdtype, search=False, raise_on_no_answer=False,
                                       lifetime=lifetime or self.timeout)
        except dns.resolver.NXDOMAIN:
            return [], NEGATIVE_SECONDS
        except dns.exception.DNSException as e:
            raise TempError(f"{rdtype} lookup failed: {type(e).__name__}") from e
        if answer.rrset is None:
            return [], NEGATIVE_SECONDS
        return list(answer.rrset), float(answer.rrset.ttl)

    def txt(self, name: str, lifetime: float | None = None) -> list[bytes]:
        """Each TXT record at `name`, its strings joined; [] for NXDOMAIN/NODATA."""
        return [b"".join(getattr(r, "strings", ())) for r in self.records(name, "TXT", lifetime)]


def _stub_resolver(servers: Sequence[str]) -> dns.resolver.Resolver:
    if not servers:
        try:
            return dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            return dns.resolver.Resolver(configure=False)  # no servers: lookups temperror
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*_host_port(s)) for s in servers]
    return resolver


def _host_port(server: str) -> tuple[str, int]:
    """"192.0.2.1", "192.0.2.1:5353", "2001:db8::1", "[2001:db8::1]:5353"; ValueError else."""
    host, port = server.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    ipaddress.ip_address(host)  # dnspython wants addresses; a name here is a config error
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad DNS server port in {server!r}")
    return host, int(port)


@dataclass
class Lookups:
    """One message's DNS: the resolver under a deadline; a name that timed out once
    fails at once for the rest of the message instead of costing its timeout again."""

    resolver: Resolver
    deadline: float
    failed: set[tuple[str, str]] = field(default_factory=set)
    #: Answer from the cache only, never from the network (the event loop's checks):
    #: a miss fails the lookup as a TempError and sets `missed`, whatever the library
    #: that asked does with the error; the caller then throws the results away.
    cache_only: bool = False
    missed: bool = False

    def records(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        if self.cache_only:
            return self._from_cache(name, rdtype)
        key = (name.lower().rstrip("."), rdtype)
        remaining = self.deadline - time.monotonic()
        if key in self.failed or remaining <= 0:
            raise TempError(f"{rdtype} lookup skipped: budget spent or the name failed before")
        try:
            return self.resolver.records(name, rdtype, min(self.resolver.timeout, remaining))
        except TempError:
            self.failed.add(key)
            raise

    def _from_cache(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        found = self.resolver.cached(name, rdtype)
        if found is None:
            self.missed = True
            raise TempError(f"{rdtype} not in the cache")
        return found

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(getattr(r, "strings", ())) for r in self.records(name, "TXT")]

    def dkim_txt(self, name: bytes, timeout: float = 0) -> bytes | None:
        """dkimpy's `dnsfunc`: the first TXT record, None for none; a DNS failure is
        dkimpy's DnsTimeoutError (which ARC validation turns into a failed set)."""
        try:
            found = self.txt(name.decode("ascii"))
        except UnicodeDecodeError:
            return None
        except TempError as e:
            raise dkim.DnsTimeoutError(str(e)) from e
        return found[0] if found else None


# pyspf looks its records up through the module function spf.DNSLookup; ours serves the
# `serving_pyspf` block running in this thread (a context variable: sanitize threads check
# several messages at once) and leaves any other use of pyspf to pyspf's own function.
_SPF_LOOKUPS: contextvars.ContextVar[Lookups | None] = contextvars.ContextVar(
    "mugaika_spf_lookups", default=None)
_PYSPF_LOOKUP: Callable[..., Any] = spf.DNSLookup


@contextlib.contextmanager
def serving_pyspf(lookups: Lookups) -> Iterator[None]:
    """pyspf's lookups inside the block go through `lookups`."""
    token = _SPF_LOOKUPS.set(lookups)
    try:
        yield
    finally:
        _SPF_LOOKUPS.reset(token)


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> Any:
    lookups = _SPF_LOOKUPS.get()
    if lookups is None:
        return _PYSPF_LOOKUP(name, qtype, strict, timeout)
    try:
        found = lookups.records(name, qtype)
    except TempError as e:
        raise spf.TempError(f"DNS {e}") from e
    return [((name, qtype), _spf_value(qtype, r)) for r in found]


def _spf_value(qtype: str, r: Any) -> Any:
    """Each record the way pyspf's own dnspython lookup hands it on."""
    if qtype in ("A", "AAAA"):
        return r.address
    if qtype == "MX":
        return r.preference, r.exchange.to_text(omit_final_dot=True)
    if qtype == "PTR":
        return r.target.to_text(omit_final_dot=True)
    if qtype in ("TXT", "SPF"):
        return tuple(r.strings)
    return r.to_text()


spf.DNSLookup = _spf_lookup
