"""Sender authentication's cost: CPU per message of the worker's sanitize stage with the
checks (SPF, DKIM, DMARC, ARC against a real DNS server on 127.0.0.1, warm cache) and
without them, on the same messages, in the same run.

The messages are bench/bench_text.py's typical text/HTML traffic, from a partner domain
that publishes SPF, a DKIM key and DMARC p=reject: once DKIM-signed (RSA 2048), once
unsigned. Rounds alternate with and without; process CPU time (`time.process_time`) is
counted, medians reported. The denominator is the sanitize stage alone (parse, body,
rebuild), which is a fraction of what the relay spends per message (SMTP in and out,
spool, journal): the ratio is the strict reading of "adds no more than 20 %".

Run: `make bench` (or `python -m bench auth`); MUGAIKA_BENCH_QUICK=1 does fewer rounds.
Target: with checks / without <= 1.2 for unsigned and signed mail.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.bench_text import corpus
from bench.common import quick, result
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
    ratios = {kind: round(w / wo, 2) for kind, (w, wo) in figures.items()}
    added = {kind: round(w - wo, 3) for kind, (w, wo) in figures.items()}
    signed_with, signed_without = figures["signed"]
    return result("sender auth: signed mail, CPU ms a message (stage + checks)",
                  round(signed_with, 3), "ms", f"with/without <= {TARGET} (signed, unsigned)",
                  all(r <= TARGET for r in ratios.values()), baseline=round(signed_without, 3),
                  baseline_name="sanitize stage without checks", ratios=ratios,
                  added_ms_per_message=added,
                  cpu_ms={k: [round(v, 3) for v in pair] for k, pair in figures.items()})
