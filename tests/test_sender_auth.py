"""SPF, DKIM, DMARC and ARC on the original (gateway.pipeline.sender_auth, issue 21),
against a real authoritative DNS server on 127.0.0.1 (tests/dns_helpers.py).

The tests sign their own mail with dkimpy and publish the keys and policies they need;
each test starts from an empty zone and a fresh resolver (a cold cache).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import authres
import dkim
import dns.message
import dns.query
import pytest

from gateway.pipeline.auth_policy import SPOOFED, Judgement, judge
from gateway.pipeline.parse import parse
from gateway.pipeline.sender_auth import (
    DNS_BUDGET_TIMEOUTS,
    MAX_HEADER_VALUE,
    MAX_SIGNATURES,
    AuthResults,
    Resolver,
    TempError,
    authenticate,
    authenticate_cached,
)
from gateway.settings import Settings
from tests.dns_helpers import Key, new_ed25519_key, new_rsa_key, publish, signed

if TYPE_CHECKING:
    from tests.dns_helpers import ZoneServer

pytest_plugins = ("tests.dns_helpers",)

CLIENT = "192.0.2.10"      # the SMTP client the tests pretend mail came from
ELSEWHERE = "198.51.100.7"  # an address no SPF record lists
TIMEOUT = 0.3  # the resolver's per-lookup timeout in the tests that make DNS time out


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return new_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> Key:
    return new_rsa_key()


@pytest.fixture(scope="module")
def ed25519_key() -> Key:
    return new_ed25519_key()


@pytest.fixture
def resolver(dns_server: ZoneServer) -> Resolver:
    return Resolver(dns_server.servers, timeout=2.0)


def mail(sender: str = "Alice <alice@example.jp>", body: str = "本日の会議資料です。\r\n",
         headers: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: staff@city.example.lg.jp\r\nSubject: test\r\n"
            "Date: Mon, 06 Jan 2025 10:00:00 +0900\r\nMessage-ID: <t1@example.jp>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{headers}\r\n"
            f"{body}").encode()


def check(raw: bytes, resolver: Resolver, mail_from: str = "alice@example.jp",
          client: str = CLIENT, helo: str = "mx.example.jp") -> AuthResults:
    return authenticate(raw, mail_from, helo, client, resolver)


# --- DKIM ------------------------------------------------------------------------------


def test_rsa_signature_passes(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key) -> None:
    """Mail signed with a 2048-bit RSA key published in DNS verifies."""
    publish(dns_server, rsa_key)
    assert check(signed(mail(), rsa_key), resolver).dkim == (("pass", "example.jp"),)


def test_ed25519_signature_passes(dns_server: ZoneServer, resolver: Resolver,
                                  ed25519_key: Key) -> None:
    """An ed25519-sha256 signature (RFC 8463) verifies too."""
    publish(dns_server, ed25519_key, selector="ed")
    raw = signed(mail(), ed25519_key, selector="ed")
    assert b"a=ed25519-sha256" in raw
    assert check(raw, resolver).dkim == (("pass", "example.jp"),)


def test_body_changed_after_signing_fails(dns_server: ZoneServer, resolver: Resolver,
                                          rsa_key: Key) -> None:
    """A body altered after signing (the body hash no longer matches) is dkim=fail."""
    publish(dns_server, rsa_key)
    raw = signed(mail(), rsa_key).replace("会議".encode(), "請求".encode())
    assert check(raw, resolver).dkim == (("fail", "example.jp"),)


def test_signed_header_changed_fails(dns_server: ZoneServer, resolver: Resolver,
                                     rsa_key: Key) -> None:
    """A signed header altered after signing is dkim=fail as well."""
    publish(dns_server, rsa_key)
    raw = signed(mail(), rsa_key).replace(b"Subject: test", b"Subject: urgent")
    assert check(raw, resolver).dkim == (("fail", "example.jp"),)


def test_wrong_key_fails(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key,
                         other_key: Key) -> None:
    """A signature made with another key than the published one is dkim=fail."""
    publish(dns_server, other_key)
    assert check(signed(mail(), rsa_key), resolver).dkim == (("fail", "example.jp"),)


def test_missing_key_record_is_permerror(dns_server: ZoneServer, resolver: Resolver,
                                         rsa_key: Key) -> None:
    """No key at selector._domainkey: RFC 6376 6.1.2 PERMFAIL, reported as permerror."""
    assert check(signed(mail(), rsa_key), resolver).dkim == (("permerror", "example.jp"),)


def test_garbage_key_record_is_permerror(dns_server: ZoneServer, resolver: Resolver,
                                         rsa_key: Key) -> None:
    """A key record that is no key is a permanent error, not a failed signature."""
    dns_server.add("s1._domainkey.example.jp", "TXT", "v=DKIM1; k=rsa; p=bm90IGEga2V5")
    assert check(signed(mail(), rsa_key), resolver).dkim == (("permerror", "example.jp"),)


def test_unsigned_mail_has_no_dkim_results(dns_server: ZoneServer, resolver: Resolver) -> None:
    assert check(mail(), resolver).dkim == ()


def test_every_signature_is_checked(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key,
                                    other_key: Key) -> None:
    """Two signatures (author and a list), each with its own result."""
    publish(dns_server, rsa_key)
    publish(dns_server, other_key, domain="lists.example.org")
    raw = signed(signed(mail(), rsa_key), other_key, domain="lists.example.org")
    assert sorted(check(raw, resolver).dkim) == [("pass", "example.jp"), ("pass", "lists.example.org")]


# --- SPF -------------------------------------------------------------------------------


@pytest.mark.parametrize(("record", "client", "expected"), [
    ("v=spf1 ip4:192.0.2.0/24 -all", CLIENT, "pass"),
    ("v=spf1 mx -all", CLIENT, "pass"),   # through the MX and A lookups
    ("v=spf1 ip4:192.0.2.0/24 -all", ELSEWHERE, "fail"),
    ("v=spf1 ip4:192.0.2.0/24 ~all", ELSEWHERE, "softfail"),
    ("v=spf1 ip4:192.0.2.0/24 ?all", ELSEWHERE, "neutral"),
    (None, CLIENT, "none"),
])
def test_spf_for_the_client_address(dns_server: ZoneServer, resolver: Resolver,
                                    record: str | None, client: str, expected: str) -> None:
    """SPF of MAIL FROM's domain for the connecting client's address."""
    if record:
        dns_server.add("example.jp", "TXT", record)
    dns_server.add("example.jp", "MX", "10 mx.example.jp")
    dns_server.add("mx.example.jp", "A", CLIENT)
    result = check(mail(), resolver, client=client)
    assert (result.spf, result.spf_domain, result.spf_scope) == (expected, "example.jp", "mailfrom")


def test_null_sender_checks_helo(dns_server: ZoneServer, resolver: Resolver) -> None:
    """A bounce (MAIL FROM:<>) is checked with its HELO name, and says so in the header."""
    dns_server.add("bounce.example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    result = check(mail(), resolver, mail_from="", helo="bounce.example.jp")
    assert (result.spf, result.spf_domain, result.spf_scope) == ("pass", "bounce.example.jp", "helo")
    assert "spf=pass smtp.helo=bounce.example.jp" in result.header_value("gw.example")


def test_ipv4_mapped_client_address(dns_server: ZoneServer, resolver: Resolver) -> None:
    """An IPv4 client seen on a dual-stack socket (::ffff:a.b.c.d) matches its ip4: entry."""
    dns_server.add("example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    assert check(mail(), resolver, client="::ffff:192.0.2.10").spf == "pass"


# --- DMARC -----------------------------------------------------------------------------


def test_dmarc_passes_with_aligned_dkim(dns_server: ZoneServer, resolver: Resolver,
                                        rsa_key: Key) -> None:
    """An aligned DKIM pass is enough, even where SPF fails (a forwarder's address)."""
    publish(dns_server, rsa_key)
    dns_server.add("example.jp", "TXT", "v=spf1 -all")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    result = check(signed(mail(), rsa_key), resolver)
    assert (result.spf, result.dmarc, result.dmarc_policy, result.from_domain) == (
        "fail", "pass", "reject", "example.jp")


def test_dmarc_passes_with_aligned_spf(dns_server: ZoneServer, resolver: Resolver) -> None:
    """An aligned SPF pass is enough without any signature (relaxed: a subdomain MAIL FROM)."""
    dns_server.add("bounce.example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    result = check(mail(), resolver, mail_from="b-123@bounce.example.jp")
    assert (result.spf, result.dkim, result.dmarc) == ("pass", (), "pass")


def test_strict_spf_alignment_needs_the_same_domain(dns_server: ZoneServer,
                                                    resolver: Resolver) -> None:
    """aspf=s: a subdomain's SPF pass does not align."""
    dns_server.add("bounce.example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject; aspf=s")
    assert check(mail(), resolver, mail_from="b-123@bounce.example.jp").dmarc == "fail"


@pytest.mark.parametrize("policy", ["reject", "quarantine"])
def test_dmarc_fails_with_the_published_policy(dns_server: ZoneServer, resolver: Resolver,
                                               other_key: Key, rsa_key: Key, policy: str) -> None:
    """Spoofed mail (SPF fails, the signature does not verify) fails DMARC under p=."""
    publish(dns_server, other_key)
    dns_server.add("example.jp", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_server.add("_dmarc.example.jp", "TXT", f"v=DMARC1; p={policy}; pct=50; rua=mailto:d@example.jp")
    result = check(signed(mail(), rsa_key), resolver, client=ELSEWHERE)
    assert (result.spf, result.dkim, result.dmarc, result.dmarc_policy) == (
        "fail", (("fail", "example.jp"),), "fail", policy)


def test_unaligned_pass_does_not_count(dns_server: ZoneServer, resolver: Resolver,
                                       rsa_key: Key) -> None:
    """A valid signature from another domain (the attacker's own) does not pass DMARC."""
    publish(dns_server, rsa_key, domain="attacker.example")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    result = check(signed(mail(), rsa_key, domain="attacker.example"), resolver,
                   mail_from="x@attacker.example")
    assert result.dkim == (("pass", "attacker.example"),)
    assert (result.dmarc, result.dmarc_policy) == ("fail", "reject")


def test_no_dmarc_record_is_none(dns_server: ZoneServer, resolver: Resolver) -> None:
    result = check(mail(), resolver)
    assert (result.dmarc, result.dmarc_policy) == ("none", "")


def test_subdomain_aligns_with_its_organisational_domain(dns_server: ZoneServer,
                                                         resolver: Resolver, rsa_key: Key) -> None:
    """From mail.example.co.jp, signed by example.co.jp: the PSL makes example.co.jp the
    organisational domain (co.jp is a public suffix), whose record applies, with sp=."""
    publish(dns_server, rsa_key, domain="example.co.jp")
    dns_server.add("_dmarc.example.co.jp", "TXT", "v=DMARC1; p=none; sp=reject")
    raw = signed(mail("Info <info@mail.example.co.jp>"), rsa_key, domain="example.co.jp")
    result = check(raw, resolver, mail_from="info@mail.example.co.jp")
    assert (result.from_domain, result.dmarc, result.dmarc_policy) == ("mail.example.co.jp", "pass", "reject")


def test_strict_dkim_alignment_rejects_the_parent(dns_server: ZoneServer, resolver: Resolver,
                                                  rsa_key: Key) -> None:
    """adkim=s: example.co.jp's signature does not align with mail.example.co.jp."""
    publish(dns_server, rsa_key, domain="example.co.jp")
    dns_server.add("_dmarc.example.co.jp", "TXT", "v=DMARC1; p=quarantine; adkim=s")
    raw = signed(mail("Info <info@mail.example.co.jp>"), rsa_key, domain="example.co.jp")
    result = check(raw, resolver, mail_from="info@mail.example.co.jp")
    assert (result.dmarc, result.dmarc_policy) == ("fail", "quarantine")


def test_sp_applies_only_below_the_organisational_domain(dns_server: ZoneServer,
                                                         resolver: Resolver) -> None:
    """sp= is for subdomains without a record: the organisational domain itself gets p=,
    and a subdomain's own record wins over its parent's."""
    dns_server.add("_dmarc.example.co.jp", "TXT", "v=DMARC1; p=quarantine; sp=reject")
    dns_server.add("_dmarc.own.example.co.jp", "TXT", "v=DMARC1; p=none")
    policies = [check(mail(f"a <a@{d}>"), resolver, client=ELSEWHERE).dmarc_policy
                for d in ("example.co.jp", "news.example.co.jp", "own.example.co.jp")]
    assert policies == ["quarantine", "reject", "none"]


def test_a_public_suffix_is_no_organisation(dns_server: ZoneServer, resolver: Resolver,
                                            rsa_key: Key) -> None:
    """Two registrants under co.jp do not align with each other."""
    publish(dns_server, rsa_key, domain="other.co.jp")
    dns_server.add("_dmarc.example.co.jp", "TXT", "v=DMARC1; p=reject")
    raw = signed(mail("a <a@example.co.jp>"), rsa_key, domain="other.co.jp")
    assert check(raw, resolver, mail_from="a@other.co.jp").dmarc == "fail"


@pytest.mark.parametrize(("from_lines", "reason"), [
    ("", "no From"),
    ("From: a@example.jp\r\nFrom: b@attacker.example\r\n", "two From fields"),
    ("From: a@example.jp, b@attacker.example\r\n", "two From domains"),
    ("From: undisclosed\r\n", "no address"),
])
def test_dmarc_cannot_apply_without_one_from_domain(dns_server: ZoneServer, resolver: Resolver,
                                                    from_lines: str, reason: str) -> None:
    """RFC 7489 6.6.1: without exactly one From domain DMARC is a permerror."""
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    raw = mail().replace(b"From: Alice <alice@example.jp>\r\n", from_lines.encode())
    result = check(raw, resolver)
    assert (result.from_domain, result.dmarc) == ("", "permerror"), reason


def test_bad_dmarc_record_is_permerror(dns_server: ZoneServer, resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=bogus")
    assert check(mail(), resolver).dmarc == "permerror"


def test_aligned_signature_is_checked_despite_many_others(dns_server: ZoneServer,
                                                          resolver: Resolver, rsa_key: Key) -> None:
    """Signatures above the cap are not checked, but the one aligned with From always is."""
    publish(dns_server, rsa_key)
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    raw = signed(mail(), rsa_key)
    for n in range(MAX_SIGNATURES + 3):
        raw = signed(raw, rsa_key, domain=f"hop{n}.example.net")  # no keys published
    result = check(raw, resolver)
    assert len(result.dkim) == MAX_SIGNATURES
    assert ("pass", "example.jp") in result.dkim
    assert result.dmarc == "pass"


# --- DNS trouble -------------------------------------------------------------------------


def test_resolver_answers_and_times_out(dns_server: ZoneServer) -> None:
    """txt(): the records, [] for a name that does not exist, TempError when no answer."""
    dns_server.add("example.jp", "TXT", "v=spf1 " + "ip4:192.0.2.1 " * 40 + "-all")  # > 255 octets
    dns_server.silence("slow.example.jp")
    resolver = Resolver(dns_server.servers, timeout=TIMEOUT)
    assert resolver.txt("example.jp") == [("v=spf1 " + "ip4:192.0.2.1 " * 40 + "-all").encode()]
    assert resolver.txt("nothing.example.jp") == []
    assert resolver.txt("example.jp..bad") == []
    started = time.monotonic()
    with pytest.raises(TempError):
        resolver.txt("slow.example.jp")
    assert time.monotonic() - started < TIMEOUT + 0.5


def test_server_answers_over_tcp_too(dns_server: ZoneServer) -> None:
    """The fixture's TCP half (what a resolver falls back to for truncated answers)."""
    dns_server.add("example.jp", "TXT", "v=spf1 -all")
    host, port = dns_server.servers[0].split(":")
    reply = dns.query.tcp(dns.message.make_query("example.jp", "TXT"), host, port=int(port), timeout=2)
    assert b"v=spf1 -all" in reply.to_wire()


@pytest.mark.parametrize("silent", ["s1._domainkey.example.jp", "_dmarc.example.jp", "example.jp"])
def test_dns_timeout_is_temperror(dns_server: ZoneServer, rsa_key: Key, silent: str) -> None:
    """A lookup that times out makes its check temperror (never an exception, never fail)."""
    publish(dns_server, rsa_key)
    dns_server.add("example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    dns_server.silence(silent)
    result = check(signed(mail(), rsa_key), Resolver(dns_server.servers, timeout=TIMEOUT))
    got = {"s1._domainkey.example.jp": result.dkim[0][0], "_dmarc.example.jp": result.dmarc,
           "example.jp": result.spf}
    assert got[silent] == "temperror"
    assert "temperror" not in {v for k, v in got.items() if k != silent}


def test_dns_budget_bounds_a_message(dns_server: ZoneServer, rsa_key: Key) -> None:
    """However many lookups time out, one message waits at most DNS_BUDGET_TIMEOUTS of
    them: here 7 silent names (5 selectors, SPF, DMARC) cost no more than 4 timeouts."""
    raw = mail()
    for n in range(MAX_SIGNATURES):
        raw = signed(raw, rsa_key, selector=f"s{n}")
        dns_server.silence(f"s{n}._domainkey.example.jp")
    for name in ("example.jp", "_dmarc.example.jp"):
        dns_server.silence(name)
    started = time.monotonic()
    result = check(raw, Resolver(dns_server.servers, timeout=TIMEOUT))
    assert time.monotonic() - started < DNS_BUDGET_TIMEOUTS * TIMEOUT + 0.5
    assert result.spf == result.dmarc == "temperror"
    assert {r for r, _ in result.dkim} == {"temperror"}


def test_no_dns_server_reachable_is_temperror(rsa_key: Key) -> None:
    """A DNS server that refuses (nothing listens on the port): temperror, quickly."""
    resolver = Resolver(["127.0.0.1:9"], timeout=TIMEOUT)
    result = check(signed(mail(), rsa_key), resolver)
    assert (result.spf, result.dkim, result.dmarc) == ("temperror", (("temperror", "example.jp"),),
                                                       "temperror")


def test_warm_cache_asks_nothing(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key) -> None:
    """A second message from the same sender is checked from the cache, including the
    names that do not exist (negative answers are cached for the SOA's minimum)."""
    publish(dns_server, rsa_key)
    dns_server.add("example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    raw = signed(mail("a <a@news.example.jp>"), rsa_key)  # _dmarc.news.example.jp: NXDOMAIN
    first = check(raw, resolver)
    asked = len(dns_server.queries)
    assert check(raw, resolver) == first
    assert asked >= 3 and len(dns_server.queries) == asked


def test_cache_only_checks_never_ask_the_network(dns_server: ZoneServer, resolver: Resolver,
                                                 rsa_key: Key) -> None:
    """What the event loop runs (`authenticate_cached`): with a cold cache it gives up
    (None) without one query and keeps nothing of its partial results; once the cache is
    warm it gives exactly what the full checks give, still without a query."""
    publish(dns_server, rsa_key)
    dns_server.add("example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    raw = signed(mail(), rsa_key)
    assert authenticate_cached(raw, "alice@example.jp", "mx.example.jp", CLIENT, resolver) is None
    assert dns_server.queries == []
    full = check(raw, resolver)
    assert (full.spf, full.dkim, full.dmarc) == ("pass", (("pass", "example.jp"),), "pass")
    asked = len(dns_server.queries)
    assert authenticate_cached(raw, "alice@example.jp", "mx.example.jp", CLIENT, resolver) == full
    tampered = raw.replace("会議資料".encode(), "請求書類".encode())
    assert authenticate_cached(tampered, "alice@example.jp", "mx.example.jp", CLIENT,
                               resolver) == check(tampered, resolver)
    assert len(dns_server.queries) == asked


def test_the_loop_leaves_costly_messages_to_a_thread(dns_server: ZoneServer,
                                                      resolver: Resolver, rsa_key: Key) -> None:
    """An ARC chain, more than LOOP_MAX_SIGNATURES signatures (each hashes the body
    again) or a long header section: `authenticate_cached` declines even with every
    record cached."""
    publish(dns_server, rsa_key)
    sealed = _arc_sealed(dns_server, rsa_key)
    assert check(sealed, resolver).arc == "pass"
    assert authenticate_cached(sealed, "alice@example.jp", "mx.example.jp", CLIENT,
                               resolver) is None
    two = signed(signed(mail(), rsa_key), rsa_key)
    three = signed(two, rsa_key)
    assert check(three, resolver).dkim == (("pass", "example.jp"),) * 3
    assert authenticate_cached(three, "alice@example.jp", "mx.example.jp", CLIENT,
                               resolver) is None
    assert authenticate_cached(two, "alice@example.jp", "mx.example.jp", CLIENT,
                               resolver) == check(two, resolver)
    long_head = signed(mail(headers="X-Long: a\r\n" + " folded line\r\n" * 1500), rsa_key)
    assert check(long_head, resolver).dkim == (("pass", "example.jp"),)
    assert authenticate_cached(long_head, "alice@example.jp", "mx.example.jp", CLIENT,
                               resolver) is None


def test_from_read_as_the_rebuild_reads_it(dns_server: ZoneServer, resolver: Resolver,
                                           rsa_key: Key) -> None:
    """The attacker signs mail for a domain of their own, which passes DMARC, and puts a
    second From: above it that the stdlib parser skips (`From :`, obsolete syntax) but
    the pipeline's reader (and mail clients) show. DMARC now reads From: with the
    pipeline's reader: two From fields, no DMARC pass, and the spoof is held."""
    publish(dns_server, rsa_key, "evil.example")
    dns_server.add("evil.example", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_server.add("_dmarc.evil.example", "TXT", "v=DMARC1; p=reject")
    raw = signed(mail("x <x@evil.example>"), rsa_key, "evil.example")
    raw = b"From : \xe5\xb8\x82\xe9\x95\xb7 <mayor@city.example.lg.jp>\r\n" + raw
    result = check(raw, resolver, mail_from="x@evil.example")
    assert result.dkim == (("pass", "evil.example"),)  # the signature itself is fine
    assert (result.from_domain, result.dmarc) == ("", "permerror")
    shown = parse(raw).header("From")
    assert shown is not None and "mayor@city.example.lg.jp" in shown
    ours = Settings(accepted_domains=["city.example.lg.jp"])
    assert judge(result, shown, ours) == Judgement("quarantine", (SPOOFED,))


@pytest.mark.parametrize(("server", "expected"), [
    ("192.0.2.53", ("192.0.2.53", 53)), ("192.0.2.53:5353", ("192.0.2.53", 5353)),
    ("2001:db8::53", ("2001:db8::53", 53)), ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
])
def test_dns_servers_setting(server: str, expected: tuple[str, int]) -> None:
    """MUGAIKA_DNS_SERVERS entries: host or host:port, IPv6 in brackets with a port."""
    nameserver = Resolver([server])._dns.nameservers[0]
    assert (str(nameserver.address), nameserver.port) == expected  # type: ignore[union-attr]


@pytest.mark.parametrize("server", ["dns.example.jp", "192.0.2.53:0", "192.0.2.53:x"])
def test_bad_dns_server_setting_is_refused(server: str) -> None:
    with pytest.raises(ValueError):
        Resolver([server])


# --- ARC -------------------------------------------------------------------------------


def _arc_sealed(zone: ZoneServer, key: Key) -> bytes:
    """A message as a forwarder (relay.example) passed it on: its results, sealed."""
    publish(zone, key, domain="relay.example", selector="arc")
    raw = mail(headers="Authentication-Results: relay.example; dkim=pass header.d=example.jp\r\n")
    sealed = dkim.arc_sign(raw, b"arc", b"relay.example", key.private, b"relay.example")
    assert len(sealed) == 3
    return b"".join(sealed) + raw


def test_existing_arc_chain_passes(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key) -> None:
    assert check(_arc_sealed(dns_server, rsa_key), resolver).arc == "pass"


def test_tampered_arc_chain_fails(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key) -> None:
    """The body changed after sealing: the ARC-Message-Signature no longer matches."""
    raw = _arc_sealed(dns_server, rsa_key).replace("会議".encode(), "請求".encode())
    assert check(raw, resolver).arc == "fail"


def test_arc_seal_with_a_wrong_key_fails(dns_server: ZoneServer, resolver: Resolver,
                                         rsa_key: Key, other_key: Key) -> None:
    raw = _arc_sealed(dns_server, rsa_key)
    dns_server.reset()
    publish(dns_server, other_key, domain="relay.example", selector="arc")
    assert check(raw, resolver).arc == "fail"


def test_no_arc_chain_is_none(dns_server: ZoneServer, resolver: Resolver) -> None:
    assert check(mail(), resolver).arc == "none"


# --- the header ------------------------------------------------------------------------


def _parsed(value: str) -> list[tuple[str, str]]:
    header = authres.all_features().parse_value(value)
    return [(r.method, r.result) for r in header.results]


def test_header_value_parses_back(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key) -> None:
    publish(dns_server, rsa_key)
    dns_server.add("example.jp", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns_server.add("_dmarc.example.jp", "TXT", "v=DMARC1; p=reject")
    value = check(signed(mail(), rsa_key), resolver).header_value("gw.city.example.lg.jp")
    assert value == ("gw.city.example.lg.jp; spf=pass smtp.mailfrom=example.jp; "
                     "dkim=pass header.d=example.jp; dmarc=pass header.from=example.jp "
                     "policy.dmarc=reject; arc=none")
    assert _parsed(value) == [("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"), ("arc", "none")]


HOSTILE = "evil.example; dkim=pass header.d=city.example.lg.jp\r\nX-Injected: 1"


def test_hostile_values_stay_inside_their_clause() -> None:
    """Domains that would add a clause, a line or an unknown result are left out, not
    copied: the header parses back to exactly the four checks, on one line."""
    results = AuthResults("pass\r\n", HOSTILE, (("pass", HOSTILE),), "fail", "reject\r\n", HOSTILE,
                          "bogus")
    value = results.header_value("gw.example\r\nX: y")
    assert "\r" not in value and "\n" not in value and "X-Injected" not in value
    assert _parsed(value) == [("spf", "permerror"), ("dkim", "pass"), ("dmarc", "fail"), ("arc", "fail")]


def test_hostile_from_domain_through_authenticate(dns_server: ZoneServer, resolver: Resolver) -> None:
    """A From whose "domain" carries header syntax is no From domain at all."""
    raw = mail('x <a@"evil.example; dmarc=pass">')
    result = check(raw, resolver)
    assert result.from_domain == "" and result.dmarc == "permerror"
    value = result.header_value("gw")
    assert "evil" not in value
    assert _parsed(value) == [("spf", "none"), ("dkim", "none"), ("dmarc", "permerror"), ("arc", "none")]


def test_header_value_is_bounded() -> None:
    """Five results with 100-character domains still give one line under the limit."""
    long = ("a" * 60 + ".") + ("b" * 35) + ".jp"
    results = AuthResults("pass", long, tuple(("fail", long) for _ in range(40)), "fail", "reject",
                          long, "none")
    value = results.header_value("x" * 300)
    assert len(value) <= MAX_HEADER_VALUE
    assert [m for m, _ in _parsed(value)][-2:] == ["dmarc", "arc"]


# --- hostile messages ------------------------------------------------------------------


def _hostile_messages(key: Key) -> dict[str, bytes]:
    junk = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; d=d%d.example; s=s; h=from; bh=x; b=y\r\n" % n
                    for n in range(100))
    return {
        "100 DKIM-Signature fields": junk + signed(mail(), key),
        "1 MB header": b"X-Big: " + b"a" * (1 << 20) + b"\r\n" + signed(mail(), key),
        "1 MB folded header": b"X-Fold:" + b" a\r\n" * (1 << 18) + mail(),
        "no From": mail().replace(b"From: Alice <alice@example.jp>\r\n", b""),
        "two From": b"From: boss@city.example.lg.jp\r\n" + mail(),
        "no header end": b"From: a@example.jp\r\nSubject: " + b"x" * 5000,
        "binary": bytes(range(256)) * 64,
        "empty": b"",
        "broken ARC": b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=x; s=y; b=z\r\n" + mail(),
    }


def test_hostile_messages_return_in_bounded_time(dns_server: ZoneServer, resolver: Resolver,
                                                 rsa_key: Key) -> None:
    """Each hostile message gets a verdict, quickly, without an exception."""
    publish(dns_server, rsa_key)
    for name, raw in _hostile_messages(rsa_key).items():
        started = time.monotonic()
        result = check(raw, resolver)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, (name, elapsed)
        assert len(result.dkim) <= MAX_SIGNATURES, name
        assert "\n" not in result.header_value("gw"), name
    assert len([q for q in dns_server.queries if "_domainkey" in q[0]]) <= MAX_SIGNATURES + 1


def test_hostile_message_verdicts(dns_server: ZoneServer, resolver: Resolver, rsa_key: Key) -> None:
    """What the hostile messages get: unread signatures are permerror, no From is no DMARC."""
    publish(dns_server, rsa_key)
    messages = _hostile_messages(rsa_key)
    big = check(messages["1 MB header"], resolver)
    assert (big.dkim, big.from_domain, big.dmarc) == ((("permerror", ""),), "", "permerror")
    many = check(messages["100 DKIM-Signature fields"], resolver)
    assert ("pass", "example.jp") in many.dkim
    assert check(messages["two From"], resolver).dmarc == "permerror"
    assert check(messages["broken ARC"], resolver).arc == "fail"
