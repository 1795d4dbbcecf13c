"""Two nodes on one PostgreSQL against one node on PostgreSQL, same client, same load.

Issue 19's model: equal-priority MX (or a load balancer) in front of several nodes, each
with its own spool, sharing one PostgreSQL database. Here both nodes run on this machine
with their default `MUGAIKA_PROCESSES` (one per core), and the load test's client sends
half of the sessions to each; the baseline is one node alone, with the same total
concurrency and mix, on a database of its own (fresh, as the pair's): both runs pay for
PostgreSQL, so that the ratio shows what the second node and the sharing cost or give.

On one 2-core machine the two nodes share the same two cores: this measures correctness
under a cluster (0 lost, 0 mismatches, every message matched at the sink) and the cost
of the shared database, not scaling; docs/deploy-cluster.md says what to expect on
separate machines. The pass criterion is therefore correctness only.

The database: MUGAIKA_BENCH_DATABASE_URL, else MUGAIKA_TEST_DATABASE_URL (`make test`'s
postgresql+psycopg://postgres@127.0.0.1:5432/test); a database is created per run and
dropped after it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import CONCURRENCY, child, corpus, free_port, load, quick, result, templates
from gateway import loop
from gateway.loadtest.check import account, pending
from gateway.loadtest.client import Client, ClientOptions
from gateway.loadtest.mix import Template, plan
from gateway.loadtest.sink import SinkState, start_sink

MIX = {"plain-5kb", "html-newsletter"}
#: Odd, so that the median is one of the rounds.
ROUNDS = 3
URL_ENV = ("MUGAIKA_BENCH_DATABASE_URL", "MUGAIKA_TEST_DATABASE_URL")


def _admin_url() -> str:
    for name in URL_ENV:
        if os.environ.get(name):
            return os.environ[name]
    raise RuntimeError(f"the cluster bench needs PostgreSQL: set {' or '.join(URL_ENV)}")


@contextmanager
def fresh_database() -> Iterator[str]:
    """An empty PostgreSQL database for one run, dropped afterwards."""
    admin_url = _admin_url()
    name = f"mugaika_bench_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def node(sink_port: int, data_dir: Path, database_url: str) -> Iterator[int]:
    """A `mugaika serve` node on `database_url` delivering to the sink; its SMTP port."""
    port, api_port = free_port(), free_port()
    while api_port == port:  # the kernel may hand out a port twice
        api_port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "MUGAIKA_SMTP_PORT": str(port), "MUGAIKA_API_PORT": str(api_port),
        "MUGAIKA_DATA_DIR": str(data_dir), "MUGAIKA_ACCEPTED_DOMAINS": "example.lg.jp",
        "MUGAIKA_DATABASE_URL": database_url, "MUGAIKA_RELEASE_LINK_KEY": "bench-" * 8,
        "MUGAIKA_DOWNSTREAM_HOST": "127.0.0.1", "MUGAIKA_DOWNSTREAM_PORT": str(sink_port),
        "MUGAIKA_DOWNSTREAM_STARTTLS": "off", "MUGAIKA_RETRY_FIRST_SECONDS": "1",
        "MUGAIKA_MAX_CONNECTIONS_PER_CLIENT": str(CONCURRENCY * 2),
    }
    with child(["-m", "gateway", "serve"], port, env, data_dir / "gateway.log"):
        yield port


def load_pair(ports: tuple[int, int], mix: tuple[Template, ...], count: int,
              sink_port: int) -> dict[str, Any]:
    """`count` messages, half through each node (CONCURRENCY sessions in all), one sink."""
    outcome: dict[str, Any] = loop.run(_load_pair(ports, mix, count, sink_port))
    return outcome


async def _load_pair(ports: tuple[int, int], mix: tuple[Template, ...], count: int,
                     sink_port: int) -> dict[str, Any]:
    sink = SinkState()
    server = await start_sink("127.0.0.1", sink_port, sink)
    clients = [Client(ClientOptions("127.0.0.1", port, CONCURRENCY // 2)) for port in ports]
    try:
        started = time.monotonic()
        await asyncio.gather(*(c.run(plan(list(mix), secrets.token_hex(4), count // 2,
                                          "loadtest@sender.example", "user@example.lg.jp"))
                               for c in clients))
        sent = [s for c in clients for s in c.sent]
        deadline = time.monotonic() + 600
        while pending(sent, sink.arrivals) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        server.close()
        await server.wait_closed()
    return _figures(sent, sink, started)


def _figures(sent: list[Any], sink: SinkState, started: float) -> dict[str, Any]:
    """The load test's own accounting over both clients' records."""
    acc = account(sent, sink.arrivals)
    accepted = [s.accepted_at for s in sent if s.accepted and s.accepted_at]
    arrived = sum(acc.outcomes.values())
    return {"sent": len(sent), "accepted": len(accepted),
            "accepted_per_s": len(accepted) / (max(accepted) - started) if accepted else None,
            "delivered_per_s": (arrived / (acc.last_arrival - started)
                                if acc.last_arrival else None),
            "lost": len(acc.lost), "duplicates": acc.duplicates,
            "mismatch_count": len(acc.mismatches), "ok": acc.ok}


def _rounds(mix: tuple[Template, ...], count: int, rounds: int) -> dict[str, list[Any]]:
    """`rounds` of one node, then the pair, in turns (the host's speed drifts)."""
    runs: dict[str, list[Any]] = {"one": [], "two": []}
    sink_port = free_port()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mugaika-cluster-")))
        single_db, pair_db = (stack.enter_context(fresh_database()) for _ in range(2))
        single = stack.enter_context(node(sink_port, tmp / "single", single_db))
        pair = (stack.enter_context(node(sink_port, tmp / "node-a", pair_db)),
                stack.enter_context(node(sink_port, tmp / "node-b", pair_db)))
        load(single, mix, min(100, count), sink_port)  # warm-up: imports, pools, sandboxes
        load_pair(pair, mix, min(100, count), sink_port)
        for _ in range(rounds):
            runs["one"].append(load(single, mix, count, sink_port))
            runs["two"].append(load_pair(pair, mix, count, sink_port))
    return runs


def run() -> dict[str, Any]:
    count, rounds = (400, 1) if quick() else (3000, ROUNDS)
    with corpus(MIX) as directory:
        runs = _rounds(templates(directory, MIX), count, rounds)
    one = [r.get("delivered_per_s") or 0.0 for r in runs["one"]]
    two = [r.get("delivered_per_s") or 0.0 for r in runs["two"]]
    lost = sum(r.get("lost") or 0 for r in runs["one"] + runs["two"])
    mismatches = sum(r.get("mismatch_count") or 0 for r in runs["one"] + runs["two"])
    ok = bool(all(r["ok"] for r in runs["one"] + runs["two"]) and not lost)
    return result(
        "two nodes, one PostgreSQL: text/HTML msgs/s delivered (same client, same load)",
        statistics.median(two), "msgs/s", "0 lost, 0 mismatches (no speed target on one "
        "machine: both nodes share its cores)", ok, statistics.median(one),
        "one node on PostgreSQL",
        count=count, rounds=rounds, concurrency=CONCURRENCY,
        two_nodes_delivered_per_s_rounds=two, one_node_delivered_per_s_rounds=one,
        two_nodes_accepted_per_s=[r["accepted_per_s"] for r in runs["two"]],
        one_node_accepted_per_s=[r["accepted_per_s"] for r in runs["one"]],
        duplicates=sum(r.get("duplicates") or 0 for r in runs["two"]),
        lost=lost, mismatches=mismatches, cores=os.cpu_count())
