"""The load test's parts on their own: correlation stamps, arrival classification (DSNs,
quarantine notices), percentiles, the accounting rules and the memory sampler."""

from __future__ import annotations

import asyncio
import os
from email.message import EmailMessage

import pytest

from gateway.loadtest.check import Sent, account
from gateway.loadtest.corpus.texts import plain_5kb
from gateway.loadtest.mix import TOKEN_RE, Template, plan, stamp
from gateway.loadtest.sink import Arrival, classify
from gateway.loadtest.stats import RssSampler, percentile, tree_rss_bytes

EXPECT = {"smtp": 250, "verdicts": ["sanitized"],
          "attachments": [{"filename": "a.pdf", "action": "converted"},
                          {"filename": "b.exe", "action": "removed"}], "pages": 3}


def _arrival(token: str | None, kind: str = "delivered", verdict: str | None = "sanitized",
             actions: str | None = None, attachments: int = 1, at: float = 2.0,
             queue_id: str | None = None) -> Arrival:
    return Arrival(at, kind, token, queue_id, verdict, actions, attachments, 100)


def _sent(number: int, queue_id: str | None = None, code: int = 250) -> Sent:
    out = list(plan([Template("t", plain_5kb(), EXPECT)], "abcd0123", number + 1,
                    "a@b.example", "u@example.lg.jp"))[-1]
    return Sent(out, code=code, queue_id=queue_id, accepted_at=1.0 if code == 250 else None)


def test_stamp_replaces_the_message_id_once():
    data = stamp(b"Message-ID: <old@x>\r\nSubject: s\r\n\r\nbody\r\nMessage-ID: <in-body>\r\n",
                 "lt.0000abcd.42")
    assert data.count(b"Message-ID:") == 2  # the new header and the body line
    assert b"<old@x>" not in data and b"<in-body>" in data
    assert TOKEN_RE.search(data).groups() == (b"0000abcd", b"42")


def test_dsn_is_classified_as_bounce_and_matched_by_quoted_message_id():
    dsn = EmailMessage()
    dsn["From"] = "MAILER-DAEMON@gw.example"
    dsn["Subject"] = "Undelivered Mail"
    dsn.set_content("could not deliver")
    dsn.add_attachment(b"Message-ID: <lt.0123abcd.7@loadtest.mugaika.invalid>\r\n",
                       maintype="text", subtype="rfc822-headers")
    dsn.replace_header("Content-Type", 'multipart/report; report-type=delivery-status; '
                       f'boundary="{dsn.get_boundary()}"')
    arrival = classify(dsn.as_bytes(), "", 5.0)
    assert arrival.kind == "bounced" and arrival.token == "lt.0123abcd.7"


def test_quarantine_notice_and_gateway_headers_are_read():
    raw = (b"Message-ID: <lt.0123abcd.3@loadtest.mugaika.invalid>\r\nX-Mugaika-Verdict: "
           b"quarantined\r\nX-Mugaika-Queue-Id: Q1\r\n\r\nnotice\r\n")
    arrival = classify(raw, "loadtest@sender.example", 1.0)
    assert (arrival.kind, arrival.queue_id, arrival.verdict) == ("quarantined_notice", "Q1",
                                                                 "quarantined")
    odd = classify(b"X-Mugaika-Queue-Id: ../../etc\r\n\r\n", "x@y", 1.0)
    assert odd.queue_id is None and odd.token is None


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([3.0], 95) == 3.0 and percentile([], 50) is None


def test_accounting_counts_queue_id_matches_duplicates_and_loss():
    sent = [_sent(0, "Q0"), _sent(1), _sent(2)]
    arrivals = [_arrival(None, queue_id="Q0"), _arrival(sent[1].outgoing.token),
                _arrival(sent[1].outgoing.token, at=3.0), _arrival(None)]
    acc = account(sent, arrivals)
    assert acc.outcomes["delivered"] == 2
    assert acc.duplicates == 1 and acc.unmatched == 1
    assert acc.lost == [sent[2].outgoing.token] and not acc.ok
    assert acc.delivered_pages == 6 and acc.latencies == [1.0, 1.0]


def test_actions_header_must_show_each_expected_fate():
    sent = [_sent(0), _sent(1)]
    good = _arrival(sent[0].outgoing.token, actions="1=kept; 2=converted; 3=removed")
    bad = _arrival(sent[1].outgoing.token, actions="1=kept; 2=removed; 3=removed")
    acc = account(sent, [good, bad])
    assert acc.actions_verified == 2
    assert len(acc.mismatches) == 1 and "lack ['converted']" in acc.mismatches[0]


def test_without_actions_header_renderings_must_be_present():
    sent = [_sent(0)]
    acc = account(sent, [_arrival(sent[0].outgoing.token, attachments=0)])
    assert acc.mismatches and "no rendering delivered" in acc.mismatches[0]


def test_unexpected_smtp_refusal_is_a_mismatch_not_a_loss():
    acc = account([_sent(0, code=451)], [])
    assert acc.lost == [] and "SMTP 451" in acc.mismatches[0]


def test_rss_sampler_sees_this_process():
    async def sample() -> dict[str, int]:
        sampler = RssSampler(os.getpid(), interval=0.05)
        sampler.start()
        await asyncio.sleep(0.2)
        return await sampler.stop()

    memory = asyncio.run(sample())
    assert memory["samples"] >= 2
    assert 10 * 2**20 < memory["peak_tree_rss_bytes"] <= tree_rss_bytes(os.getpid()) * 2
    assert memory["main_hwm_bytes"] >= memory["peak_tree_rss_bytes"] // 2


def test_empty_selection_is_refused():
    with pytest.raises(ValueError, match="empty"):
        next(iter(plan([], "abcd0123", 1, "a@b", "c@d")))


def test_register_adds_both_subcommands_to_a_cli():
    import argparse

    from gateway.loadtest import run as loadtest
    from gateway.loadtest import samples

    parser = argparse.ArgumentParser(prog="mugaika")
    sub = parser.add_subparsers(dest="command", required=True)
    samples.register(sub)
    loadtest.register(sub)
    args = parser.parse_args(["loadtest", "--port", "2600", "--count", "5", "--sink", "2601",
                              "--samples", "/x", "--exclude", "heavy,bomb"])
    assert (args.port, args.count, args.sink, args.exclude) == (2600, 5, 2601, "heavy,bomb")
    assert args.func is loadtest._run
    assert parser.parse_args(["samples", "--out", "/tmp/x"]).func is samples._run


def test_reason_codes_in_actions_header_must_match_the_manifest():
    expect = {"smtp": 250, "verdicts": ["sanitized"], "pages": 0, "attachments": [
        {"filename": "p.zip", "action": "removed", "codes": ["encrypted"]},
        {"filename": "x.exe", "action": "removed", "codes": ["blocked_type"]}]}
    outs = list(plan([Template("t", plain_5kb(), expect)], "abcd0123", 2, "a@b", "u@c"))
    sent = [Sent(o, code=250, accepted_at=1.0) for o in outs]
    good = _arrival(outs[0].token, actions="1=kept 2=removed/encrypted 3=removed/blocked_type",
                    attachments=0)
    bad = _arrival(outs[1].token, actions="1=kept 2=removed/unsupported_type "
                   "3=removed/blocked_type", attachments=0)
    acc = account(sent, [good, bad])
    assert len(acc.mismatches) == 1
    assert "'p.zip' removed for ['blocked_type', 'unsupported_type']" in acc.mismatches[0]


def test_cli_refuses_a_missing_or_empty_selection(tmp_path, capsys):
    from gateway.loadtest.run import main

    assert main(["--samples", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--samples", str(tmp_path), "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err
