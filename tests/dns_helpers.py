"""An authoritative DNS server on 127.0.0.1 for the sender-authentication tests.

dnslib's `DNSServer` answers over UDP and TCP on one free port from a dict of records
that a test fills (`dns_server.add("example.jp", "TXT", "v=spf1 -all")`). Names a test
`silence()`s get no answer at all, so a resolver sees a real timeout. Negative answers
carry an SOA, as a real server's do, so the resolver under test caches them.

The server lives for the test module (one socket pair, no restart per test); the
`dns_server` fixture empties it before each test. Keys, signing and publishing for the
tests' own DKIM mail are here too (`new_rsa_key`, `signed`, `publish`).
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dkim
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSError, DNSLabel, DNSRecord
from dnslib.server import DNSServer

#: Seconds a negative answer may be cached (the SOA's minimum).
NEGATIVE_TTL = 60
_SOA = RR("test.", QTYPE.SOA, ttl=NEGATIVE_TTL,
          rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, NEGATIVE_TTL)))


def _rdata(rtype: str, value: str) -> Any:
    if rtype == "TXT":  # one TXT record, its text split into strings of at most 255 octets
        raw = value.encode()
        return TXT([raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""])
    if rtype == "MX":
        preference, exchange = value.split()
        return MX(exchange, int(preference))
    kinds = {"A": A, "AAAA": AAAA, "PTR": PTR, "CNAME": CNAME}
    return kinds[rtype](value)


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class _QuietLogger:
    """dnslib's logger interface, saying nothing (the tests assert on answers)."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *_args, **_kwargs: None


@dataclass
class ZoneServer:
    """The records served, the names left unanswered and every query seen."""

    records: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def servers(self) -> list[str]:
        """What `Resolver(servers=...)` and MUGAIKA_DNS_SERVERS take."""
        return [f"127.0.0.1:{self.port}"]

    def add(self, name: str, rtype: str, value: str, ttl: int = 300) -> None:
        """One more record: TXT text, an A/AAAA address, MX "10 mx.example.jp", …"""
        _rdata(rtype, value)  # a typo fails in the test, not as a silent SERVFAIL
        with self.lock:
            self.records.setdefault((_key(name), rtype), []).append((value, ttl))

    def silence(self, name: str) -> None:
        """Never answer queries for `name` (any type): the client times out."""
        with self.lock:
            self.silent.add(_key(name))

    def reset(self) -> None:
        with self.lock:
            self.records.clear()
            self.silent.clear()
            self.queries.clear()

    def resolve(self, request: DNSRecord, _handler: Any) -> DNSRecord:
        """dnslib's resolver interface; raising DNSError makes the server drop the query."""
        qname = str(request.q.qname)
        name, rtype = _key(qname), QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((name, rtype))
            if name in self.silent:
                raise DNSError("silenced for the test")
            found = list(self.records.get((name, rtype), ()))
            exists = any(n == name or n.endswith("." + name) for n, _ in self.records)
        reply = request.reply()
        for value, ttl in found:
            reply.add_answer(RR(DNSLabel(qname), QTYPE.reverse[rtype], ttl=ttl,
                                rdata=_rdata(rtype, value)))
        if not found:
            reply.add_auth(_SOA)
            if not exists:
                reply.header.rcode = RCODE.NXDOMAIN
        return reply


def _serve(zone: ZoneServer) -> list[DNSServer]:
    """UDP and TCP servers on one free port (retried if TCP's half is taken)."""
    for _attempt in range(20):
        udp = DNSServer(zone, address="127.0.0.1", port=0, logger=_QuietLogger())
        port = udp.server.server_address[1]
        try:
            tcp = DNSServer(zone, address="127.0.0.1", port=port, tcp=True, logger=_QuietLogger())
        except OSError:
            udp.server.server_close()
            continue
        zone.port = port
        return [udp, tcp]
    raise RuntimeError("no free port for both UDP and TCP")


@contextlib.contextmanager
def serving(zone: ZoneServer) -> Iterator[ZoneServer]:
    """`zone` answered on 127.0.0.1 (UDP and TCP) until the block ends (tests, bench)."""
    servers = _serve(zone)
    threads = [threading.Thread(target=s.server.serve_forever, kwargs={"poll_interval": 0.05},
                                daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield zone
    finally:
        for s in servers:
            s.server.shutdown()
            s.server.server_close()
        for t in threads:
            t.join(timeout=5)


@pytest.fixture(scope="module")
def _dns_module() -> Iterator[ZoneServer]:
    with serving(ZoneServer()) as zone:
        yield zone


@pytest.fixture
def dns_server(_dns_module: ZoneServer) -> ZoneServer:
    """The module's DNS server, emptied for this test."""
    _dns_module.reset()
    return _dns_module


# --- the tests' own DKIM keys and mail -------------------------------------------------

SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


@dataclass(frozen=True)
class Key:
    private: bytes  # what dkimpy signs with (RSA: PKCS#1 PEM, Ed25519: the base64 seed)
    record: str     # its selector._domainkey TXT record
    algorithm: bytes = b"rsa-sha256"


def new_rsa_key(bits: int = 2048) -> Key:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key(private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")


def new_ed25519_key() -> Key:
    key = nacl.signing.SigningKey.generate()
    public = key.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return Key(key.encode(encoder=nacl.encoding.Base64Encoder), f"v=DKIM1; k=ed25519; p={public}",
               b"ed25519-sha256")


def signed(raw: bytes, key: Key, domain: str = "example.jp", selector: str = "s1",
           headers: Sequence[bytes] = SIGNED) -> bytes:
    """`raw` with a DKIM-Signature of `domain` on top (by default over From, To, Subject,
    Date and Message-ID)."""
    return dkim.sign(raw, selector.encode(), domain.encode(), key.private,
                     include_headers=list(headers), signature_algorithm=key.algorithm) + raw


def publish(zone: ZoneServer, key: Key, domain: str = "example.jp", selector: str = "s1") -> None:
    zone.add(f"{selector}._domainkey.{domain}", "TXT", key.record)
