"""The fast path for plain `<local@domain>` reads every address as aiosmtpd's parser does,
except the addresses RFC 5321 does not allow (aiosmtpd took them); and the connection
caps count exact clients."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.relay.smtpd import LOCAL_PART_LIMIT, parse_path

_CHARS = "aZ09.-_+%!#$&'*/=?^`{|}~\"@<>[]() :\\\r\x00\x1b\x7f\t"
_PATHS = st.builds(
    lambda local, domain, rest: f"<{local}@{domain}>{rest}",
    st.text(_CHARS, min_size=0, max_size=70),
    st.text("ab9-.[]", min_size=0, max_size=20),
    st.sampled_from(["", " SIZE=100", "SIZE=1", "   BODY=8BITMIME SIZE=2", " ", ">"]),
)


_LDH = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_ATEXT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-")


def _rfc5321(address: str) -> bool:
    """RFC 5321 4.1.2, read char by char (not the regex under test): a Dot-string or a
    Quoted-string, then nothing or a domain of letters, digits and hyphens, or an
    address literal."""
    if address.startswith('"'):
        end = _quoted_end(address)
        if end < 0:
            return False
        rest = address[end:]
    else:
        local, at, domain = address.partition("@")
        if not all(part and set(part) <= _ATEXT for part in local.split(".")):
            return False
        rest = at + domain
    if not rest:
        return True
    domain = rest[1:]
    if not rest.startswith("@") or not domain:
        return False
    if domain.startswith("["):
        literal = domain[1:-1]
        return domain.endswith("]") and bool(literal) and all(
            33 <= ord(c) <= 90 or 94 <= ord(c) <= 126 for c in literal)
    return all(part and set(part) <= _LDH for part in domain.split("."))


def _quoted_end(address: str) -> int:
    """Where the Quoted-string that starts `address` ends, or -1: qtextSMTP, and a
    backslash before a printable character or space."""
    i = 1
    while i < len(address):
        char = address[i]
        if char == '"':
            return i + 1
        if char == "\\":
            if i + 1 == len(address) or not 32 <= ord(address[i + 1]) <= 126:
                return -1
            i += 2
        elif 32 <= ord(char) <= 126:
            i += 1
        else:
            return -1
    return -1


def _aiosmtpd(arg: str) -> tuple[str | None, str]:
    """What aiosmtpd's server (which mugaika used before `gateway.relay.smtpd`) made of `arg`,
    with the RFC 5321 local-part limit and address syntax that mugaika enforces; aiosmtpd
    reported the null path as "<>", mugaika as ""."""
    theirs = SMTP.__new__(SMTP)
    theirs.local_part_limit = LOCAL_PART_LIMIT
    address, rest = theirs._getaddr(arg)
    if address is None or (address != "<>" and not _rfc5321(address)):
        return None, ""
    return ("" if address == "<>" else address), rest or ""


@settings(max_examples=400, deadline=None)
@given(_PATHS)
def test_paths_read_as_aiosmtpd_read_them(arg: str) -> None:
    try:
        expected = _aiosmtpd(arg)
    except AttributeError:  # a stdlib parser bug on some invalid domains: mugaika
        assert parse_path(arg)[0] is None  # answers "malformed address" (553) for those
        return
    assert parse_path(arg) == expected


def test_unusual_paths_still_parsed() -> None:
    assert parse_path("<>") == ("", "")
    assert parse_path("<> SIZE=10") == ("", " SIZE=10")  # parse_params splits it
    assert parse_path('<"a b"@example.jp> SIZE=1') == ('"a b"@example.jp', "SIZE=1")
    assert parse_path("<x@[192.0.2.1]>") == ("x@[192.0.2.1]", "")
    assert parse_path("<a@b.jp.>") == (None, "")
    assert parse_path("<x@[>") == (None, "")  # the stdlib parser raises on it
    assert parse_path("<" + "a" * 65 + "@example.jp>") == (None, "")


def test_connection_caps_hold_over_a_group_and_a_dead_member_is_forgotten() -> None:
    from gateway.relay.ingress import ConnectionLimiter, forget, limit_table

    table = limit_table(2)
    first = ConnectionLimiter(2, 3, table, row=0)
    second = ConnectionLimiter(2, 3, table, row=1)
    assert first.acquire("192.0.2.1") and second.acquire("192.0.2.1")
    assert not first.acquire("192.0.2.1"), "the per-client cap counts both members"
    assert second.acquire("192.0.2.2")
    assert not first.acquire("192.0.2.3"), "so does the total"
    forget(table, 1)  # member 1 died with its connections
    assert first.acquire("192.0.2.1")
    first.release("192.0.2.1")
    first.release("192.0.2.1")
    assert first.acquire("192.0.2.4") and first.acquire("192.0.2.4")


def test_unrfc_addresses_are_malformed() -> None:
    """What the stdlib parser let through (and aiosmtpd accepted) is a malformed address."""
    for arg in ('<"x\rX-Injected: yes"@example.lg.jp>', '<"a\x00b"@example.lg.jp>',
                '<"a\x1b[31m"@example.lg.jp>', "<a\x7fb@example.lg.jp>", "<a..b@example.lg.jp>",
                "<.a@example.lg.jp>", "<a.@example.lg.jp>", '<"a\\\rb"@example.lg.jp>'):
        assert parse_path(arg) == (None, ""), arg
    assert parse_path("<postmaster>") == ("postmaster", "")
    assert parse_path('<"a\\"b"@example.jp>') == ('"a\\"b"@example.jp', "")


def test_caps_count_exact_ipv4_addresses_and_ipv6_64s() -> None:
    """Two IPv4 addresses that shared a crc32 % 4096 bucket no longer share a cap; one
    IPv6 /64 is one client, whichever of its addresses connect; a mapped IPv4 address
    is that address."""
    from gateway.relay.ingress import ConnectionLimiter

    first, other = _colliding_ipv4_pair()
    limiter = ConnectionLimiter(1, 100)
    assert limiter.acquire(first)
    assert limiter.acquire(other), "a client picked for its old bucket is another client"
    assert not limiter.acquire(f"::ffff:{first}")
    assert limiter.acquire("2001:db8:0:1::1")
    assert not limiter.acquire("2001:db8:0:1:ffff::2"), "same /64"
    assert limiter.acquire("2001:db8:0:2::1"), "the next /64"
    limiter.release("2001:db8:0:1::1")
    assert limiter.acquire("2001:db8:0:1:ffff::2")


def _colliding_ipv4_pair() -> tuple[str, str]:
    import zlib

    seen: dict[int, str] = {}
    for n in range(1, 1 << 16):
        addr = f"192.0.{n >> 8}.{n & 255}"
        bucket = zlib.crc32(addr.encode()) % 4096
        if bucket in seen:
            return seen[bucket], addr
        seen[bucket] = addr
    raise AssertionError("no two addresses share a bucket")


def test_a_full_probe_window_admits_uncounted_and_releases_exactly() -> None:
    """Clients whose keys take every slot of another's window (picked on purpose, as an
    IPv6 sender could): that client is still admitted, counted in the total only, and
    the counts come back to zero when everyone leaves."""
    from gateway.relay.ingress import LIMIT_PROBES, ConnectionLimiter, _slots, client_key

    target = "203.0.113.7"
    window = _slots(client_key(target))
    crowd = [a for a in (f"198.51.{n >> 8}.{n & 255}" for n in range(1 << 16))
             if _slots(client_key(a)) == window][:LIMIT_PROBES]
    limiter = ConnectionLimiter(2, 100)
    assert all(limiter.acquire(addr) for addr in crowd)
    assert all(limiter.acquire(target) for _ in range(3)), (
        "uncounted: a full window never refuses, past the per-client cap too")
    for addr in [*crowd, target, target, target]:
        limiter.release(addr)
    assert not any(limiter.table[0::2]), "the total and every count back to zero"
    assert limiter.acquire(target) and limiter.acquire(target)
    assert not limiter.acquire(target), "counted again once there is room"
