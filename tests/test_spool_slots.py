"""A group of gateway processes shares one spool: each claims into its own `active.N/`,
and a member that died takes back only its own claims, counting a crash for each."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from gateway.custody.stores import open_stores
from gateway.pipeline.notice import load_templates
from gateway.queue.envelope import Envelope
from gateway.queue.spool import Spool
from gateway.queue.worker import MAX_CRASHES, sanitize_claimed
from gateway.settings import Settings

ENV = Envelope(mail_from="a@example.com", rcpt_tos=("b@example.lg.jp",), received_at=1.0)
RAW = (b"From: a@example.com\r\nTo: b@example.lg.jp\r\nSubject: crash\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n")


def _names(root: Path, area: str) -> list[str]:
    return sorted(p.name for p in (root / area).iterdir())


def test_members_claim_into_their_own_area(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    a, b = first.put(RAW, ENV), first.put(RAW, ENV)
    assert first.take(a) and second.take(b)
    assert not second.take(a), "a claim is a rename: one member only"
    assert _names(tmp_path, "active.0") == [a] and _names(tmp_path, "active.1") == [b]
    assert Spool(tmp_path).depth()["active"] == 2, "depth counts every member's claims"


def test_restarted_member_takes_back_only_its_own_claims(tmp_path: Path) -> None:
    live, dead = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    held, lost, waiting = live.put(RAW, ENV), dead.put(RAW, ENV), live.put(RAW, ENV)
    assert live.take(held) and dead.take(lost)
    assert Spool(tmp_path, slot=1).recover() == 1
    assert _names(tmp_path, "active.0") == [held], "the live member keeps its claim"
    assert _names(tmp_path, "incoming") == sorted([lost, waiting])
    assert dead.read_state(lost).crashes == 1 and live.read_state(waiting).crashes == 0


def test_full_recovery_takes_back_every_members_claims(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    a, b = first.put(RAW, ENV), first.put(RAW, ENV)
    assert first.take(a) and second.take(b)
    assert Spool(tmp_path).recover() == 2
    assert _names(tmp_path, "incoming") == sorted([a, b])
    assert first.read_state(a).crashes == 0, "a whole restart may follow a clean stop"


def test_a_message_that_keeps_killing_its_member_is_quarantined(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    spool = Spool(settings.spool_dir, slot=1)
    queue_id = spool.put(RAW, ENV)
    for crash in range(MAX_CRASHES):
        assert spool.take(queue_id)
        Spool(settings.spool_dir, slot=1).recover()
        assert spool.read_state(queue_id).crashes == crash + 1
    entry = spool.claim(queue_id)
    assert entry is not None
    with closing(open_stores(settings)) as stores:
        handed = sanitize_claimed(entry, settings, None, load_templates(settings), stores)
        held = stores.quarantine.get(queue_id)
    assert handed.report.reason == "processing_error"
    assert held is not None, "the original is kept for review"
    assert b"X-Mugaika-Verdict: quarantined" in handed.output.data
