"""`mugaika loadtest`: send a mix of mails to an SMTP address and prove nothing was lost.

With `--sink PORT` the load test also runs the receiving server the gateway delivers to,
matches every arrival to what was sent, checks the verdict and attachment fates against
the corpus manifest, and fails (exit 1) when any accepted message is unaccounted for or
contradicts the manifest. Without a sink it measures submission only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import loop
from gateway.loadtest.check import account, pending
from gateway.loadtest.client import Client, ClientOptions
from gateway.loadtest.mix import Template, default_templates, load_templates, plan
from gateway.loadtest.sink import SinkFaults, SinkState, start_sink
from gateway.loadtest.stats import RssSampler, latency_summary


@dataclass(frozen=True)
class LoadConfig:
    client: ClientOptions
    count: int = 100
    templates: tuple[Template, ...] = ()
    mail_from: str = "loadtest@sender.example"
    rcpt: str = "user@example.lg.jp"
    sink_host: str = "127.0.0.1"
    sink_port: int | None = None
    sink_faults: SinkFaults = field(default_factory=SinkFaults)
    drain_timeout: float = 120.0
    pid: int | None = None
    progress: bool = True


def _rate(n: int, start: float, end: float | None) -> float | None:
    if not n or end is None or end <= start:
        return None
    return n / (end - start)


def summarize(cfg: LoadConfig, client: Client, sink: SinkState | None,
              memory: dict[str, int] | None) -> dict[str, Any]:
    """The figures of one run as plain JSON-able values."""
    sent = client.sent
    replies = Counter(str(s.code) if s.code else "error" for s in sent)
    accepted = [s for s in sent if s.accepted]
    last_accept = max((s.accepted_at for s in accepted if s.accepted_at), default=None)
    result: dict[str, Any] = {
        "target": f"{cfg.client.host}:{cfg.client.port}",
        "sent": len(sent), "concurrency": cfg.client.concurrency,
        "mix": sorted({t.name for t in cfg.templates}),
        "smtp_replies": dict(sorted(replies.items())),
        "retries": sum(s.attempts - 1 for s in sent),
        "accepted": len(accepted),
        "accepted_per_s": _rate(len(accepted), client.started, last_accept),
        "send_seconds": client.finished - client.started,
        "memory": memory,
        "checked": sink is not None,
    }
    if sink is None:
        problems = [s for s in sent if s.code // 100 != int(
            (s.outgoing.template.expect or {"smtp": 250})["smtp"]) // 100]
        result["ok"] = not problems
        return result
    acc = account(sent, sink.arrivals)
    arrived = sum(acc.outcomes.values())
    result |= {
        "outcomes": dict(acc.outcomes), "lost": len(acc.lost), "lost_tokens": acc.lost[:20],
        "duplicates": acc.duplicates, "unmatched": acc.unmatched,
        "mismatch_count": len(acc.mismatches), "mismatches": acc.mismatches[:50],
        "actions_verified_by_header": acc.actions_verified,
        "sink_refusals": sink.refused, "sink_rejected_rcpts": sink.rejected_rcpts,
        "delivered_per_s": _rate(arrived, client.started, acc.last_arrival),
        "attachments_per_s": _rate(acc.delivered_attachments, client.started, acc.last_arrival),
        "pages_per_s": _rate(acc.delivered_pages, client.started, acc.last_arrival),
        "latency_s": latency_summary(acc.latencies),
        "ok": acc.ok,
    }
    return result


async def _progress(client: Client, sink: SinkState | None, total: int) -> None:
    tty = sys.stderr.isatty()
    while True:
        await asyncio.sleep(0.5 if tty else 5.0)
        accepted = sum(1 for s in client.sent if s.accepted)
        arrived = f" arrived {len(sink.arrivals)}" if sink else ""
        done = min(1.0, len(client.sent) / total) if total else 0.0
        bar = "#" * int(done * 20) + "-" * (20 - int(done * 20))
        line = (f"[loadtest] [{bar}] sent {len(client.sent)}/{total} accepted {accepted}"
                f"{arrived}")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)


async def _drain(client: Client, sink: SinkState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pending(client.sent, sink.arrivals) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def run_loadtest(cfg: LoadConfig) -> dict[str, Any]:
    """Run one load test in the current event loop and return its summary."""
    run_id = secrets.token_hex(4)
    sink = SinkState() if cfg.sink_port is not None else None
    server = None
    if sink is not None and cfg.sink_port is not None:
        server = await start_sink(cfg.sink_host, cfg.sink_port, sink, cfg.sink_faults)
    sampler = RssSampler(cfg.pid) if cfg.pid else None
    if sampler:
        sampler.start()
    client = Client(cfg.client)
    ticker = asyncio.create_task(_progress(client, sink, cfg.count)) if cfg.progress else None
    try:
        await client.run(plan(list(cfg.templates), run_id, cfg.count, cfg.mail_from, cfg.rcpt))
        if sink is not None:
            await _drain(client, sink, cfg.drain_timeout)
    finally:
        if ticker:
            ticker.cancel()
            print(file=sys.stderr)
        memory = await sampler.stop() if sampler else None
        if server is not None:
            server.close()
            await server.wait_closed()
    return summarize(cfg, client, sink, memory)


def format_summary(result: dict[str, Any]) -> str:
    """A short human report (the JSON has everything)."""
    def num(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:.1f}{unit}" if isinstance(value, float) \
            else f"{value}{unit}"

    lines = [
        f"target            {result['target']}  concurrency {result['concurrency']}",
        f"sent / accepted   {result['sent']} / {result['accepted']}  replies "
        f"{result['smtp_replies']}  retries {result['retries']}",
        f"accepted msgs/s   {num(result['accepted_per_s'])}",
    ]
    if result["checked"]:
        lat = result["latency_s"]
        lines += [
            f"delivered msgs/s  {num(result['delivered_per_s'])}   attachments/s "
            f"{num(result['attachments_per_s'])}   pages/s {num(result['pages_per_s'])}",
            "latency 250->sink p50 {} p95 {} p99 {} max {}".format(
                *(num(lat[k] * 1000 if lat[k] is not None else None, " ms")
                  for k in ("p50", "p95", "p99", "max"))),
            f"outcomes          {result['outcomes']}  lost {result['lost']}  duplicates "
            f"{result['duplicates']}  unmatched {result['unmatched']}",
            f"mismatches        {result['mismatch_count']}",
            *("  " + m for m in result["mismatches"][:10]),
        ]
    if result["memory"]:
        lines.append(f"gateway peak RSS  {result['memory']['peak_tree_rss_bytes'] / 2**20:.0f}"
                     f" MiB (process tree), main VmHWM "
                     f"{result['memory']['main_hwm_bytes'] / 2**20:.0f} MiB")
    lines.append("RESULT            " + ("OK" if result["ok"] else "FAILED"))
    return "\n".join(lines)


def _split(value: str | None) -> set[str] | None:
    return {v.strip() for v in value.split(",") if v.strip()} if value else None


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    if args.samples and not Path(args.samples).is_dir():
        raise ValueError(f"--samples {args.samples}: not a directory")
    templates = (load_templates(Path(args.samples), _split(args.include), _split(args.exclude))
                 if args.samples else default_templates())
    if not templates:
        raise ValueError("no messages to send: the sample selection is empty")
    client = ClientOptions(args.host, args.port, args.concurrency, args.rate, args.duration,
                           args.new_connection, args.retries)
    count = args.count if args.count is not None else (10**9 if args.duration else 100)
    return LoadConfig(client, count, tuple(templates), args.mail_from, args.rcpt,
                      args.sink_host, args.sink,
                      SinkFaults(args.sink_tempfail_seconds, reject_rcpt=args.sink_reject_rcpt),
                      args.drain_timeout, args.pid, not args.quiet)


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    result = loop.run(run_loadtest(cfg))
    print(format_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n",
                                   encoding="utf-8")
    return 0 if result["ok"] else 1


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="gateway SMTP host")
    p.add_argument("--port", type=int, default=2525, help="gateway SMTP port")
    p.add_argument("--count", type=int, help="messages to send (default 100)")
    p.add_argument("--duration", type=float, help="send for this many seconds instead")
    p.add_argument("--rate", type=float, help="at most this many messages per second")
    p.add_argument("--concurrency", type=int, default=8, help="parallel SMTP sessions")
    p.add_argument("--samples", help="corpus directory (mugaika samples) or a dir of .eml")
    p.add_argument("--include", help="comma list of sample tags or names to send")
    p.add_argument("--exclude", help="comma list of sample tags or names to leave out")
    p.add_argument("--sink", type=int, metavar="PORT", help="run a receiving sink here")
    p.add_argument("--sink-host", default="127.0.0.1")
    p.add_argument("--sink-tempfail-seconds", type=float, default=0.0,
                   help="the sink answers 451 for this long first (fault injection)")
    p.add_argument("--sink-reject-rcpt", metavar="TEXT",
                   help="the sink refuses (550) recipients containing TEXT: the gateway "
                   "must bounce them (fault injection)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait for deliveries after the last message is sent")
    p.add_argument("--pid", type=int, help="gateway process id, for its peak memory")
    p.add_argument("--from", dest="mail_from", default="loadtest@sender.example")
    p.add_argument("--rcpt", default="user@example.lg.jp")
    p.add_argument("--new-connection", action="store_true", help="one session per message")
    p.add_argument("--retries", type=int, default=3, help="retries after a 4xx or a drop")
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `loadtest` to the `mugaika` command line (called by gateway.cli)."""
    parser = subparsers.add_parser("loadtest", description=__doc__)
    _arguments(parser)


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.loadtest.run ...` (the same as `mugaika loadtest ...`)."""
    parser = argparse.ArgumentParser(prog="mugaika loadtest", description=__doc__)
    _arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
