"""The fast path for plain `<local@domain>` reads every address as aiosmtpd's parser does."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingress import GatewaySMTP

_CHARS = "aZ09.-_+%!#$&'*/=?^`{|}~\"@<>[]() :\\"
_PATHS = st.builds(
    lambda local, domain, rest: f"<{local}@{domain}>{rest}",
    st.text(_CHARS, min_size=0, max_size=70),
    st.text("ab9-.[]", min_size=0, max_size=20),
    st.sampled_from(["", " SIZE=100", "SIZE=1", "   BODY=8BITMIME SIZE=2", " ", ">"]),
)


def _servers() -> tuple[GatewaySMTP, SMTP]:
    ours = GatewaySMTP.__new__(GatewaySMTP)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = 0
    return ours, theirs


@settings(max_examples=400, deadline=None)
@given(_PATHS)
def test_fast_path_agrees_with_aiosmtpd(arg: str) -> None:
    ours, theirs = _servers()
    try:
        expected = theirs._getaddr(arg)
    except AttributeError:  # a stdlib parser bug on some invalid domains: the fast path
        return  # never matches those (it only takes a plain dot-atom domain)
    assert ours._getaddr(arg) == expected


def test_unusual_paths_still_parsed() -> None:
    ours, _ = _servers()
    assert ours._getaddr("<>") == ("<>", "")
    assert ours._getaddr('<"a b"@example.jp> SIZE=1') == ('"a b"@example.jp', "SIZE=1")
    assert ours._getaddr("<x@[192.0.2.1]>") == ("x@[192.0.2.1]", "")
    assert ours._getaddr("<a@b.jp.>") == (None, None)
    assert ours._getaddr("<x@[>") == (None, None)  # the stdlib parser raises on it


def test_connection_caps_hold_over_a_group_and_a_dead_member_is_forgotten() -> None:
    from gateway.ingress import ConnectionLimiter, forget, limit_table

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
