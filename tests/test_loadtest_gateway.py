"""`mugaika loadtest` against a real `mugaika serve` (spool, workers, SMTP delivery) and the
load test's own sink: nothing lost, every verdict as the manifest says, also when the
downstream refuses for a while."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.loadtest.client import ClientOptions
from gateway.loadtest.mix import load_templates
from gateway.loadtest.run import LoadConfig, run_loadtest
from gateway.loadtest.sink import SinkFaults
from tests.conftest import free_port
from tests.loadtest_helpers import light_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return light_corpus(tmp_path_factory.mktemp("light"))


def _load(corpus: Path, gateway_port: int, sink_port: int, pid: int, count: int,
          faults: SinkFaults | None = None) -> dict[str, Any]:
    cfg = LoadConfig(ClientOptions("127.0.0.1", gateway_port, concurrency=8), count,
                     tuple(load_templates(corpus)), sink_port=sink_port,
                     sink_faults=faults or SinkFaults(), drain_timeout=40.0, pid=pid,
                     progress=False)
    return asyncio.run(run_loadtest(cfg))


@pytest.mark.parametrize("processes", ["1", "2"])
def test_fifty_messages_through_the_gateway_none_lost(corpus, make_gateway, processes):
    """50 messages, concurrency 8: all accounted for, verdicts and fates as the manifest,
    with one gateway process and with a group of two."""
    sink_port = free_port()
    gw = make_gateway(sink_port, MUGAIKA_PROCESSES=processes)
    result = _load(corpus, gw.smtp_port, sink_port, gw.proc.pid, 50)
    assert result["ok"], (result["mismatches"], result["lost_tokens"], gw.log_text()[-2000:])
    assert result["lost"] == 0 and result["unmatched"] == 0
    assert result["smtp_replies"] == {"250": 46, "550": 4}  # 4 relay attempts refused
    assert result["outcomes"] == {"delivered": 42, "quarantined_notice": 4}  # 40-deep MIME
    assert result["memory"]["peak_tree_rss_bytes"] > 20 * 2**20


def test_downstream_refusing_for_a_while_loses_nothing(corpus, make_gateway):
    """Fault run: the sink answers 451 for 2 s; the gateway retries; all accounted."""
    sink_port = free_port()
    gw = make_gateway(sink_port)
    result = _load(corpus, gw.smtp_port, sink_port, gw.proc.pid, 30,
                   SinkFaults(tempfail_seconds=2.0))
    assert result["sink_refusals"] > 0
    assert result["ok"], (result["mismatches"], result["lost_tokens"], gw.log_text()[-2000:])
    assert result["lost"] == 0
    assert sum(result["outcomes"].values()) == result["accepted"] == 28


def test_downstream_rejecting_a_recipient_is_accounted_as_bounced(corpus, make_gateway):
    """The sink refuses the recipient (550): every message comes back as a DSN, matched."""
    sink_port = free_port()
    gw = make_gateway(sink_port)
    cfg = LoadConfig(ClientOptions("127.0.0.1", gw.smtp_port, concurrency=4), 8,
                     tuple(load_templates(corpus, include={"plain-5kb", "exe-as-pdf"})),
                     rcpt="nobody@example.lg.jp", sink_port=sink_port,
                     sink_faults=SinkFaults(reject_rcpt="nobody@"), drain_timeout=30.0,
                     progress=False)
    result = asyncio.run(run_loadtest(cfg))
    assert result["ok"], (result["mismatches"], result["lost_tokens"], gw.log_text()[-2000:])
    assert result["outcomes"] == {"bounced": 8}
    assert result["sink_rejected_rcpts"] >= 8
