"""Faults, with nothing lost (issue 17): the LGWAN-side server answers 4xx, then 5xx,
then drops the connection in the middle of DATA; and a message outlives the queue.

A real `mugaika serve` (retries after 1 s, doubling to 2 s) delivers to a scripted
downstream (`fault_helpers.ScriptedDownstream`) and each case is checked against what the
README promises: 4xx → deferred and retried until accepted; 5xx → a DSN to the envelope
sender, no retry, the mail kept in `spool/failed/` with its reason; a connection lost
before the end of the message → temporary, retried, delivered once; lost after the end
of the message but before the reply → retried, so the downstream may hold it twice (the
README's at-least-once case, RFC 1047); past `MAX_QUEUE_LIFETIME_SECONDS` → a DSN and
`failed/` with the reason, never retried forever.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest

from tests.conftest import Gateway
from tests.fault_helpers import (
    Attempt,
    ScriptedDownstream,
    message,
    message_ids,
    submit,
    wait_until,
    waiting,
)

SENDER = "alice@example.com"
STAFF = "staff@example.lg.jp"


@pytest.fixture
def downstream() -> Iterator[ScriptedDownstream]:
    server = ScriptedDownstream().start()
    yield server
    server.stop()


def _gateway(make_gateway: Callable[..., Gateway], downstream: ScriptedDownstream,
             **env: str) -> Gateway:
    return make_gateway(downstream.port, MUGAIKA_PROCESSES="1", **env)


def _to_staff(attempt: Attempt) -> bool:
    return attempt.rcpts == [STAFF]


def _parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _delivery_status(dsn: Attempt) -> str:
    msg = _parsed(dsn.data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    [status] = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    return status.as_string()


def _settled(gw: Gateway) -> None:
    """Nothing left to deliver: no retry can come any more."""
    wait_until(lambda: not waiting(gw.data_dir / "spool"), 30, "spool settled")


def _failed_reason(gw: Gateway) -> tuple[list[str], str]:
    spool = gw.data_dir / "spool"
    names = sorted(p.name for p in (spool / "failed").iterdir())
    [output] = [n for n in names if n.endswith(".out")]
    state = json.loads((spool / "state" / f"{output}.json").read_text())
    return names, str(state["last_error"])


def test_4xx_is_deferred_and_retried_until_the_downstream_accepts(
        make_gateway: Callable[..., Gateway], downstream: ScriptedDownstream) -> None:
    downstream.plan = lambda n, _r: "tempfail" if n <= 3 else "accept"
    gw = _gateway(make_gateway, downstream)
    assert submit(gw.smtp_port, message("busy"), "busy").code == 250
    spool = gw.data_dir / "spool"
    wait_until(lambda: any(p.name.endswith(".out.json") and "451 4.3.0 busy" in p.read_text()
                           for p in (spool / "state").iterdir()), 20, "deferred with the reply")
    [got] = downstream.wait_received(1, timeout=30)
    _settled(gw)
    assert message_ids([got.data]) == ["busy"] and got.rcpts == [STAFF]
    assert [a.action for a in downstream.attempts] == ["tempfail"] * 3 + ["accept"]
    assert len(downstream.received) == 1, "delivered once, and no DSN"
    assert not list((spool / "failed").iterdir())


def test_5xx_after_data_bounces_a_dsn_to_the_sender_without_retry(
        make_gateway: Callable[..., Gateway], downstream: ScriptedDownstream) -> None:
    downstream.plan = lambda _n, rcpts: "permfail" if STAFF in rcpts else "accept"
    gw = _gateway(make_gateway, downstream)
    assert submit(gw.smtp_port, message("refused"), "refused").code == 250
    [dsn] = downstream.wait_received(1, timeout=30)
    _settled(gw)
    assert (dsn.mail_from, dsn.rcpts) == ("", [SENDER])
    text = _delivery_status(dsn)
    assert f"Final-Recipient: rfc822; {STAFF}" in text
    assert "Action: failed" in text and "Status: 5.6.0" in text
    assert "554 5.6.0 content refused" in text
    assert "refused@faults.example.com" in dsn.data.decode(errors="replace"), "quotes the mail"
    assert downstream.count(_to_staff) == 1, "a 5xx is final: no retry"
    names, reason = _failed_reason(gw)
    origin = names[0].removesuffix(".original")
    assert names == [f"{origin}.original", f"{origin}.out"], "the mail and its output kept"
    assert "554 5.6.0 content refused" in reason


def test_connection_dropped_mid_data_is_retried_and_delivered_once(
        make_gateway: Callable[..., Gateway], downstream: ScriptedDownstream) -> None:
    downstream.plan = lambda n, _r: "drop_mid_data" if n <= 2 else "accept"
    gw = _gateway(make_gateway, downstream)
    assert submit(gw.smtp_port, message("cut", size=20_000), "cut").code == 250
    [got] = downstream.wait_received(1, timeout=30)
    _settled(gw)
    assert message_ids([got.data]) == ["cut"] and "障害試験" in _parsed(got.data)["Subject"]
    assert [a.action for a in downstream.attempts] == ["drop_mid_data"] * 2 + ["accept"]
    assert len(downstream.received) == 1, "the cut copies were never accepted: no duplicate"
    assert not list((gw.data_dir / "spool" / "failed").iterdir())


def test_connection_dropped_after_the_message_before_the_reply_may_duplicate(
        make_gateway: Callable[..., Gateway], downstream: ScriptedDownstream) -> None:
    """The downstream has the whole message but the gateway never hears its reply: it
    must assume the worst and retry. The README's at-least-once case: one duplicate."""
    downstream.plan = lambda n, _r: "drop_after_dot" if n == 1 else "accept"
    gw = _gateway(make_gateway, downstream)
    assert submit(gw.smtp_port, message("unanswered"), "unanswered").code == 250
    got = downstream.wait_received(2, timeout=30)
    _settled(gw)
    assert message_ids([a.data for a in got]) == ["unanswered", "unanswered"]
    assert [a.action for a in downstream.attempts] == ["drop_after_dot", "accept"]


def test_expiry_in_the_queue_bounces_and_keeps_the_mail_in_failed(
        make_gateway: Callable[..., Gateway], downstream: ScriptedDownstream) -> None:
    downstream.plan = lambda _n, rcpts: "tempfail" if STAFF in rcpts else "accept"
    gw = _gateway(make_gateway, downstream, MUGAIKA_MAX_QUEUE_LIFETIME_SECONDS="3")
    assert submit(gw.smtp_port, message("stale"), "stale").code == 250
    [dsn] = downstream.wait_received(1, timeout=30)
    _settled(gw)
    assert (dsn.mail_from, dsn.rcpts) == ("", [SENDER])
    text = _delivery_status(dsn)
    assert f"Final-Recipient: rfc822; {STAFF}" in text and "Action: failed" in text
    assert "451 4.3.0 busy (4.4.7 message expired in queue)" in text
    tries = downstream.count(_to_staff)
    assert 2 <= tries <= 5, f"retried with backoff until expiry, not {tries} times"
    names, reason = _failed_reason(gw)
    assert len(names) == 2 and names[0].endswith(".original")
    assert "4.4.7 message expired in queue" in reason
    # Nothing is left to retry, so the downstream never hears of it again.
    assert not list((gw.data_dir / "spool" / "deferred").iterdir())
