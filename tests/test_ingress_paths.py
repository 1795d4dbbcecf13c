"""The fast path for plain `<local@domain>` reads every address as aiosmtpd's parser does."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.relay.smtpd import LOCAL_PART_LIMIT, parse_path

_CHARS = "aZ09.-_+%!#$&'*/=?^`{|}~\"@<>[]() :\\"
_PATHS = st.builds(
    lambda local, domain, rest: f"<{local}@{domain}>{rest}",
    st.text(_CHARS, min_size=0, max_size=70),
    st.text("ab9-.[]", min_size=0, max_size=20),
    st.sampled_from(["", " SIZE=100", "SIZE=1", "   BODY=8BITMIME SIZE=2", " ", ">"]),
)


def _aiosmtpd(arg: str) -> tuple[str | None, str]:
    """What aiosmtpd's server (which mugaika used before `gateway.relay.smtpd`) made of `arg`,
    with the RFC 5321 local-part limit that mugaika enforces; aiosmtpd reported the null
    path as "<>", mugaika as ""."""
    theirs = SMTP.__new__(SMTP)
    theirs.local_part_limit = LOCAL_PART_LIMIT
    address, rest = theirs._getaddr(arg)
    if address is None:
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
