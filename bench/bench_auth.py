"""Sender authentication's cost, in the same run, with the checks and without them:

1. the relay (the issue's measure): CPU of the whole gateway process tree per delivered
   message, `MUGAIKA_AUTH_CHECKS` true and false: two gateways loaded in turns, against a real DNS
   server on 127.0.0.1 (SPF for the envelope domain, DMARC and DKIM keys for the From
   domains), warm cache. Twice: on the relay benchmark's traffic as the load test sends
   it (its text/HTML mix, unsigned: the bar), and on the same mix DKIM-signed (RSA 2048,
   every message verified: reported beside it);
2. the worker's sanitize stage alone, process CPU per message (a smaller denominator),
   on bench/bench_text.py's mails from a partner that publishes SPF, a key and DMARC
   p=reject, unsigned and signed: where the time goes.

Run: `make bench` (or `python -m bench auth`); MUGAIKA_BENCH_QUICK=1 does fewer rounds.
Target: the relay benchmark's CPU per message with checks / without <= 1.2.
"""

from __future__ import annotations

import email
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.bench_gateway import MIX
from bench.bench_text import corpus
from bench.common import corpus as sample_corpus
from bench.common import free_port, gateway, load, quick, result
from bench.common import templates as mix_templates
from gateway.pipeline.notice import load_templates
from gateway.pipeline.sender_auth import Resolver, authenticate
from gateway.queue.envelope import Envelope
from gateway.queue.spool import Entry, RetryState
from gateway.queue.worker import sanitize_stage
from gateway.settings import Settings
from tests.dns_helpers import ZoneServer, new_rsa_key, publish, serving, signed

DOMAIN = "partner.example.jp"
CLIENT = "192.0.2.10"
TARGET = 1.2


def _from_partner(raw: bytes) -> bytes:
    return re.sub(rb"(?im)^From:[^\r\n]*", f"From: 担当 <tanto@{DOMAIN}>".encode(), raw, count=1)


def _cpu_per_message(step: Callable[[bytes], Any], mails: list[bytes], rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        for raw in mails:
            step(raw)
    return (time.process_time() - start) * 1000 / (rounds * len(mails))


#: The load test's envelope sender's domain (`gateway.loadtest.run`).
ENVELOPE_DOMAIN = "sender.example"


def _tree_cpu(pid: int) -> float:
    """User + system seconds of a process and all its children."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        total += times.user + times.system
    return total


@contextmanager
def _mix(zone: ZoneServer, sign: bool) -> Iterator[Any]:
    """The load test's templates, with SPF for the envelope domain and DMARC p=none and a
    key published for each From: domain; each signed by that domain (not the Message-ID,
    which the load test replaces) when `sign`."""
    key = new_rsa_key()
    zone.add(ENVELOPE_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    with sample_corpus(MIX) as directory:
        for path in directory.glob("*.eml"):
            raw = path.read_bytes()
            sender = email.message_from_bytes(raw).get("From", "")
            domain = sender.rpartition("@")[2].strip(" >").lower() or "example.jp"
            publish(zone, key, domain)
            zone.add(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=none")
            if sign:
                path.write_bytes(signed(raw, key, domain, headers=(b"from", b"to", b"subject",
                                                                  b"date")))
        yield mix_templates(directory, MIX)


@dataclass
class _Relay:
    """One gateway under test: its process, ports and the CPU and mail counted so far."""

    proc: Any
    port: int
    sink_port: int
    cpu: float = 0.0
    delivered: int = 0

    def turn(self, mix: Any, count: int) -> None:
        """`count` messages through it, all delivered, its tree's CPU counted."""
        before = _tree_cpu(self.proc.pid)
        outcome = load(self.port, mix, count, self.sink_port, self.proc.pid)
        self.cpu += _tree_cpu(self.proc.pid) - before
        delivered = int((outcome.get("outcomes") or {}).get("delivered") or 0)
        if not outcome.get("ok") or delivered != count:
            raise RuntimeError(f"the relay run was not clean: {delivered} of {count} delivered")
        self.delivered += delivered


@contextmanager
def _relay(dns: str, checks: bool) -> Iterator[_Relay]:
    sink_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mugaika-bench-auth-") as tmp, \
            gateway(sink_port, Path(tmp), MUGAIKA_AUTH_CHECKS=str(checks).lower(),
                    MUGAIKA_DNS_SERVERS=dns, PYTHONHASHSEED="0") as (proc, port):
        # One hash seed for both: a random one shifts a process's speed by a few percent.
        yield _Relay(proc, port, sink_port)


def run() -> dict[str, Any]:
    zone, key = ZoneServer(), new_rsa_key()
    publish(zone, key, DOMAIN)
    zone.add(DOMAIN, "TXT", f"v=spf1 ip4:{CLIENT} -all")
    zone.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject")
    unsigned = [_from_partner(raw) for raw in corpus()]
    mails = {"unsigned": unsigned, "signed": [signed(raw, key, DOMAIN) for raw in unsigned]}
    settings = Settings()
    templates = load_templates(settings)
    rounds, repeats = (5, 3) if quick() else (40, 7)
    with serving(zone):
        resolver = Resolver(zone.servers)

        def stage(raw: bytes, check: bool) -> None:
            env = Envelope(f"tanto@{DOMAIN}", ("staff@example.lg.jp",), CLIENT, "mx." + DOMAIN)
            auth = authenticate(raw, env.mail_from, env.helo, CLIENT, resolver) if check else None
            sanitize_stage(Entry("BENCH", env, raw, RetryState()), settings, None, templates,
                           auth=auth)

        figures = {}
        for kind, batch in mails.items():
            for raw in batch:  # warm: the cache filled, the code paths imported
                stage(raw, True)
            with_checks, without = [], []
            for _ in range(repeats):
                with_checks.append(_cpu_per_message(lambda r: stage(r, True), batch, rounds))
                without.append(_cpu_per_message(lambda r: stage(r, False), batch, rounds))
            figures[kind] = (statistics.median(with_checks), statistics.median(without))
        turns, count = (2, 200) if quick() else (16, 500)
        relay = {kind: _relay_figures(zone, kind == "signed", turns, count)
                 for kind in ("unsigned", "signed")}
    ratios = {kind: round(w / wo, 2) for kind, (w, wo) in figures.items()}
    added = {kind: round(w - wo, 3) for kind, (w, wo) in figures.items()}
    on, off = relay["unsigned"]
    signed_on, signed_off = relay["signed"]
    return result("sender auth: relay CPU ms a delivered message, checks on",
                  round(on, 3), "ms", f"on/off <= {TARGET}", on / off <= TARGET,
                  baseline=round(off, 3), baseline_name="checks off (MUGAIKA_AUTH_CHECKS=false)",
                  signed_relay_ms=[round(signed_on, 3), round(signed_off, 3)],
                  signed_relay_ratio=round(signed_on / signed_off, 2),
                  stage_ratios=ratios, stage_added_ms_per_message=added,
                  stage_cpu_ms={k: [round(v, 3) for v in pair] for k, pair in figures.items()})


def _relay_figures(zone: ZoneServer, sign: bool, turns: int, count: int) -> tuple[float, float]:
    """CPU ms per delivered message, checks on and off: two gateways side by side, loaded
    in turns of `count` messages, the order swapped every turn, so that the host's speed,
    which drifts by ±25 % from one run to the next here, falls on both alike."""
    with _mix(zone, sign) as mix, _relay(zone.servers[0], True) as on, \
            _relay(zone.servers[0], False) as off:
        for relay in (on, off):
            relay.turn(mix, 200)  # warm: pools, imports, the DNS cache
            relay.cpu = relay.delivered = 0
        for i in range(turns):
            for relay in (on, off) if i % 2 == 0 else (off, on):
                relay.turn(mix, count)
    return on.cpu * 1000 / on.delivered, off.cpu * 1000 / off.delivered
