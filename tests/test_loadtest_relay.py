"""The load test against a small relay running the real sanitize pipeline: it accounts for
every message, survives a sink that refuses for a while, and fails loudly on loss or on a
verdict that contradicts the manifest."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.loadtest.client import ClientOptions
from gateway.loadtest.mix import load_templates
from gateway.loadtest.run import LoadConfig, main, run_loadtest
from gateway.loadtest.sink import SinkFaults
from tests.loadtest_helpers import Relay, free_port, light_corpus, start_relay


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return light_corpus(tmp_path_factory.mktemp("light"))


async def _run(corpus: Path, relay: Relay, relay_port: int, count: int = 50,
               faults: SinkFaults | None = None, drain: float = 30.0,
               exclude: set[str] | None = None) -> dict[str, Any]:
    server = await start_relay(relay, relay_port)
    try:
        templates = load_templates(corpus, exclude=exclude)
        cfg = LoadConfig(ClientOptions("127.0.0.1", relay_port, concurrency=8), count,
                         tuple(templates), sink_port=relay.downstream_port,
                         sink_faults=faults or SinkFaults(), drain_timeout=drain,
                         progress=False)
        return await run_loadtest(cfg)
    finally:
        server.close()
        for task in list(relay.tasks):
            task.cancel()


def test_fifty_messages_all_accounted_with_manifest_verdicts(corpus):
    """50 messages at concurrency 8: each arrives once, as the manifest says."""
    relay = Relay(free_port())
    result = asyncio.run(_run(corpus, relay, free_port()))
    assert result["ok"], result["mismatches"]
    assert result["sent"] == 50 and result["lost"] == 0 and result["unmatched"] == 0
    refused = result["smtp_replies"].get("550", 0)
    assert refused == 50 // 11 + (50 % 11 > 10)  # one relay attempt in every 11 messages
    assert result["accepted"] == 50 - refused
    assert result["outcomes"]["quarantined_notice"] >= 4  # the 40-deep multipart
    assert sum(result["outcomes"].values()) == result["accepted"]
    lat = result["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["delivered_per_s"] > 0 and result["accepted_per_s"] > 0


def test_sink_refusing_for_a_while_loses_nothing(corpus):
    """Fault run: the sink answers 451 for 1.5 s; the relay retries; all accounted."""
    relay = Relay(free_port())
    result = asyncio.run(_run(corpus, relay, free_port(), count=40,
                              faults=SinkFaults(tempfail_seconds=1.5)))
    assert result["sink_refusals"] > 0
    assert result["ok"], result["mismatches"]
    assert result["lost"] == 0
    assert result["latency_s"]["max"] >= 1.0  # the first ones waited out the refusals


def test_lost_messages_fail_the_run(corpus):
    """A relay that says 250 and then drops every 10th message is caught."""
    relay = Relay(free_port(), keep=lambda n: n % 10 != 0)
    result = asyncio.run(_run(corpus, relay, free_port(), count=30, drain=2.0,
                              exclude={"relay-attempt"}))
    assert not result["ok"]
    assert result["lost"] == 3 and len(result["lost_tokens"]) == 3


def test_wrong_verdict_is_a_mismatch(corpus):
    """A relay claiming every message is clean contradicts the manifest for hostile ones."""
    relay = Relay(free_port(), mutate=lambda b: b.replace(
        b"X-Mugaika-Verdict: sanitized", b"X-Mugaika-Verdict: clean"))
    result = asyncio.run(_run(corpus, relay, free_port(), count=22))
    assert not result["ok"] and result["lost"] == 0
    bad = [m for m in result["mismatches"] if "verdict 'clean'" in m]
    assert len(bad) == 2 * 4  # exe-as-pdf, rtlo-name, html-attachment, eicar; twice each


def test_cli_writes_json_and_exits_nonzero_on_loss(corpus, tmp_path):
    """`mugaika loadtest ... --json F` returns 1 when a message is lost, 0 when not."""
    async def serve_and_run(keep: Any, out: Path) -> int:
        relay = Relay(free_port(), keep=keep)
        port = free_port()
        server = await start_relay(relay, port)
        try:
            return await asyncio.to_thread(main, [
                "--port", str(port), "--count", "12", "--concurrency", "4",
                "--samples", str(corpus), "--include", "text", "--sink",
                str(relay.downstream_port), "--drain-timeout", "2", "--json", str(out),
                "--quiet"])
        finally:
            server.close()

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    assert asyncio.run(serve_and_run(lambda n: True, good)) == 0
    assert json.loads(good.read_text())["outcomes"] == {"delivered": 12}
    assert asyncio.run(serve_and_run(lambda n: n != 5, bad)) == 1
    assert json.loads(bad.read_text())["lost"] == 1


def test_rate_and_duration_bound_the_submission(corpus):
    """--rate paces submissions; --duration stops producing in time."""
    async def go(count: int, rate: float | None, duration: float | None) -> dict[str, Any]:
        relay = Relay(free_port())
        port = free_port()
        server = await start_relay(relay, port)
        try:
            cfg = LoadConfig(ClientOptions("127.0.0.1", port, concurrency=4, rate=rate,
                                           duration=duration), count,
                             tuple(load_templates(corpus, include={"plain-5kb"})),
                             sink_port=relay.downstream_port, drain_timeout=10,
                             progress=False)
            return await run_loadtest(cfg)
        finally:
            server.close()

    paced = asyncio.run(go(11, 20.0, None))
    assert paced["ok"] and paced["sent"] == 11 and paced["send_seconds"] >= 0.45
    timed = asyncio.run(go(10**6, 50.0, 0.5))
    assert timed["ok"] and 1 <= timed["sent"] <= 40 and timed["send_seconds"] < 3  # 25 at rate
