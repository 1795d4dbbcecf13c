"""Sender authentication's cost, in the same run, with the checks and without them:

1. the relay (the issue's measure): CPU of the whole gateway process tree per delivered
   message, the load test's text/HTML mix DKIM-signed, against a real DNS server on
   127.0.0.1 (SPF, the key, DMARC), warm cache; `MUGAIKA_AUTH_CHECKS` true, then false;
2. the worker's sanitize stage alone, which is stricter (a smaller denominator):

The messages are bench/bench_text.py's typical text/HTML traffic, from a partner domain
that publishes SPF, a DKIM key and DMARC p=reject: once DKIM-signed (RSA 2048), once
unsigned. Rounds alternate with and without; process CPU time (`time.process_time`) is
counted, medians reported. The denominator is the sanitize stage alone (parse, body,
rebuild), which is a fraction of what the relay spends per message (SMTP in and out,
spool, journal): the ratio is the strict reading of "adds no more than 20 %".

Run: `make bench` (or `python -m bench auth`); MUGAIKA_BENCH_QUICK=1 does fewer rounds.
Target: the relay's CPU per message with checks / without <= 1.2 (signed mail).
"""

from __future__ import annotations

import email
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

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


#: The load test's mix (bench/bench_gateway.py) and its envelope sender's domain.
MIX = {"plain-5kb", "html-newsletter"}
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
def _signed_mix(zone: ZoneServer) -> Iterator[Any]:
    """The mix's templates, each DKIM-signed by its From: domain (not the Message-ID,
    which the load test replaces), with SPF for the envelope domain and DMARC p=none
    published."""
    key = new_rsa_key()
    zone.add(ENVELOPE_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    with sample_corpus(MIX) as directory:
        for path in directory.glob("*.eml"):
            raw = path.read_bytes()
            sender = email.message_from_bytes(raw).get("From", "")
            domain = sender.rpartition("@")[2].strip(" >").lower() or "example.jp"
            publish(zone, key, domain)
            zone.add(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=none")
            path.write_bytes(signed(raw, key, domain, headers=(b"from", b"to", b"subject",
                                                              b"date")))
        yield mix_templates(directory, MIX)


def _relay_cpu(mix: Any, count: int, dns: str, checks: bool) -> float:
    """CPU ms of the gateway's process tree per delivered message."""
    sink_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mugaika-bench-auth-") as tmp, \
            gateway(sink_port, Path(tmp), MUGAIKA_AUTH_CHECKS=str(checks).lower(),
                    MUGAIKA_DNS_SERVERS=dns) as (proc, port):
        load(port, mix, min(200, count), sink_port)  # warm: pools, imports, DNS cache
        before = _tree_cpu(proc.pid)
        outcome = load(port, mix, count, sink_port, proc.pid)
        spent = _tree_cpu(proc.pid) - before
    delivered = int((outcome.get("outcomes") or {}).get("delivered") or 0)
    if not outcome.get("ok") or delivered != count:
        raise RuntimeError(f"the relay run was not clean: {delivered} of {count} delivered")
    return spent * 1000 / delivered


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
        relay = _relay_figures(zone, rounds=1 if quick() else 3, count=400 if quick() else 2000)
    ratios = {kind: round(w / wo, 2) for kind, (w, wo) in figures.items()}
    added = {kind: round(w - wo, 3) for kind, (w, wo) in figures.items()}
    on, off = relay
    return result("sender auth: relay CPU ms a delivered message, signed mix, checks on",
                  round(on, 3), "ms", f"on/off <= {TARGET}", on / off <= TARGET,
                  baseline=round(off, 3), baseline_name="checks off (MUGAIKA_AUTH_CHECKS=false)",
                  stage_ratios=ratios, stage_added_ms_per_message=added,
                  stage_cpu_ms={k: [round(v, 3) for v in pair] for k, pair in figures.items()})


def _relay_figures(zone: ZoneServer, rounds: int, count: int) -> tuple[float, float]:
    """Medians of the relay's CPU per message, checks on and off, in alternate rounds."""
    on, off = [], []
    with _signed_mix(zone) as mix:
        for _ in range(rounds):
            on.append(_relay_cpu(mix, count, zone.servers[0], True))
            off.append(_relay_cpu(mix, count, zone.servers[0], False))
    return statistics.median(on), statistics.median(off)
