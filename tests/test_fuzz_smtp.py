"""The SMTP session fuzzed, bounded: hypothesis sessions and the seed corpus replayed.

`fuzz.smtp_harness` drives the real `SMTPSession` and `IngressHandler` over a real spool
and checks, for every input: no internal error, each `250` of DATA a message fsynced in
the spool (and nothing else spooled), well-formed replies. `make fuzz` runs the same
harness coverage-guided for minutes; this runs it for seconds in `make test`, plus the
inputs that once broke an invariant (regressions).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import smtp_seeds
from fuzz.smtp_harness import SmtpHarness, reply_problems, session_bytes, split, watching_syncs
from gateway.relay.ingress import IngressHandler


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpHarness]:
    with watching_syncs() as syncs:
        h = SmtpHarness(tmp_path_factory.mktemp("smtp-fuzz"), syncs)
        yield h
        h.close()


def assert_holds(harness: SmtpHarness, stream: bytes, *, size: int = 0, fresh: bool = False,
                 settle: bool = True) -> bytes:
    outcome = harness.run(split(stream, size), fresh=fresh, settle=settle)
    assert not outcome.problems, (outcome.problems, outcome.replies)
    return outcome.replies


# -- regressions: inputs the fuzzer found ----------------------------------------------

def test_unknown_verb_with_control_characters_is_not_echoed(harness: SmtpHarness) -> None:
    """Found by `make fuzz` (smtp, first minute): `500 … command "\\x00\\x01" not
    recognized` echoed the client's NUL, ESC or bare CR into our reply."""
    replies = assert_holds(harness, b"\x00\x01\r\nA\rB C\r\n\x1b[2J\r\nQUIT\r\n")
    assert b'command "??" not recognized' in replies
    assert b'command "A?B" not recognized' in replies
    assert b'command "?[2J" not recognized' in replies


# -- the seed corpus, in each way of sending -------------------------------------------

SEEDS = smtp_seeds()


@pytest.mark.parametrize("name,stream", SEEDS, ids=[name for name, _ in SEEDS])
def test_seed_sessions(harness: SmtpHarness, name: str, stream: bytes) -> None:
    assert_holds(harness, stream)
    assert_holds(harness, stream, size=97, fresh=True, settle=False)


def test_seed_sessions_byte_by_byte(harness: SmtpHarness) -> None:
    for name, stream in SEEDS:
        if len(stream) < 3000:
            assert_holds(harness, stream, size=1, fresh=name.endswith("two"))


# -- hypothesis: sessions from a grammar of commands -----------------------------------

ADDRESSES = st.sampled_from([
    "<a@example.com>", "<>", "<staff@example.lg.jp>", "<postmaster>", "<POSTMASTER>",
    "<user%evil@example.lg.jp>", "<x@[127.0.0.1]>", '<"a b"@example.lg.jp>',
    '<"x\rX: y"@example.lg.jp>', "<a..b@example.lg.jp>", "<staff@EXAMPLE.LG.JP.>",
    "staff@example.lg.jp", "<@route:staff@example.lg.jp>", "<" + "l" * 70 + "@example.lg.jp>",
]) | st.text(st.characters(min_codepoint=0, max_codepoint=0x7f), max_size=30)
PARAMS = st.sampled_from(["", " SIZE=10", " SIZE=99999999", " BODY=8BITMIME", " BODY=x",
                          " FOO=bar", " SIZE=", " SIZE=abc"])
BODIES = st.sampled_from([b"Subject: x\r\n\r\nbody", b".", b"..", b"a\n.\nb", b"a\r.\rb",
                          b"x" * 1500, b"y\r\n" * 7000, b"\xff\xfe\x00", b""]) | st.binary(
    max_size=300)


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP",
                                 "QUIT", "VRFY", "HELP", "junk"]))
    if kind in ("EHLO", "HELO"):
        return f"{kind} {draw(st.sampled_from(['c', '', 'a b', '[1.2.3.4]']))}".encode()
    if kind in ("MAIL", "RCPT"):
        keyword = "FROM:" if kind == "MAIL" else "TO:"
        return f"{kind} {keyword}{draw(ADDRESSES)}{draw(PARAMS)}".encode("ascii", "replace")
    if kind == "DATA":
        body = draw(BODIES)
        return b"DATA\r\n" + body + draw(st.sampled_from([b"\r\n.", b"\n.", b"\r\n..", b""]))
    if kind == "junk":
        return draw(st.binary(max_size=40))
    return kind.encode() + draw(st.sampled_from([b"", b" x"]))


@st.composite
def sessions(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(commands(), max_size=12))
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    prefix = draw(st.sampled_from([b"", b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<s@example.lg.jp>\r\n"]))
    return prefix + end.join(lines) + end


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(stream=sessions(), size=st.sampled_from([0, 0, 1, 5, 64, 1000]),
       fresh=st.booleans(), settle=st.booleans())
def test_sessions_keep_the_invariants(harness: SmtpHarness, stream: bytes, size: int,
                                      fresh: bool, settle: bool) -> None:
    assert_holds(harness, stream, size=size, fresh=fresh, settle=settle)


# -- the checks can fail: planted bugs are caught --------------------------------------

def test_a_250_without_a_spooled_message_is_caught(
        harness: SmtpHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IngressHandler, "_store", lambda *args: None)
    outcome = harness.run([session_bytes(b"Subject: x\r\n\r\nbody\r\n")])
    assert any("not in incoming/" in p for p in outcome.problems)


def test_a_250_before_fsync_is_caught(harness: SmtpHarness, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    monkeypatch.setattr("gateway.queue.spool.os.fsync", lambda fd: None)
    outcome = harness.run([session_bytes(b"Subject: x\r\n\r\nbody\r\n")])
    assert any("before its file and directory were fsynced" in p for p in outcome.problems)


def test_malformed_replies_are_caught() -> None:
    assert reply_problems(b"220 hi\r\n250-a\r\n251 b\r\n")
    assert reply_problems(b"220 hi\r\n500 x\x00y\r\n")
    assert reply_problems(b"220 hi\r\n250 ok\n")
    assert reply_problems(b"250 hi\r\n")
    assert not reply_problems(b"220 hi\r\n250-a\r\n250 b\r\n")
