"""What the gateway benchmarks share: child servers, the corpus, the load client, a result.

Every benchmark compares against a baseline measured in the same run on the same machine,
because absolute figures on these shared 2-core machines drift from run to run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway import loop
from gateway.loadtest.client import ClientOptions
from gateway.loadtest.mix import Template, load_templates
from gateway.loadtest.run import LoadConfig, run_loadtest
from gateway.loadtest.samples import write_corpus
from gateway.loadtest.sink import SinkState, start_sink

ROOT = Path(__file__).resolve().parent.parent
#: The concurrency of every gateway benchmark (MEASURED.md used 20 smtp-source sessions).
CONCURRENCY = 20
#: Postfix's C load client (Debian's postfix package; `make setup` installs it).
SMTP_SOURCE = "/usr/sbin/smtp-source"


def quick() -> bool:
    """MUGAIKA_BENCH_QUICK=1: smaller counts, for a smoke run (figures are noisier)."""
    return os.environ.get("MUGAIKA_BENCH_QUICK", "") not in ("", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@contextmanager
def child(args: list[str], port: int, env: dict[str, str] | None = None,
          log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server process that is listening on `port` inside the block, stopped after it."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def gateway(sink_port: int, data_dir: Path,
            **extra_env: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real `python -m gateway serve` delivering to 127.0.0.1:`sink_port` (`extra_env`:
    more MUGAIKA_* settings)."""
    port, api_port = free_port(), free_port()
    while api_port == port:  # the kernel may hand out a port twice
        api_port = free_port()
    env = {
        "MUGAIKA_SMTP_PORT": str(port), "MUGAIKA_API_PORT": str(api_port),
        "MUGAIKA_DATA_DIR": str(data_dir), "MUGAIKA_ACCEPTED_DOMAINS": "example.lg.jp",
        "MUGAIKA_DOWNSTREAM_HOST": "127.0.0.1", "MUGAIKA_DOWNSTREAM_PORT": str(sink_port),
        "MUGAIKA_DOWNSTREAM_STARTTLS": "off", "MUGAIKA_RETRY_FIRST_SECONDS": "1",
        "MUGAIKA_MAX_CONNECTIONS_PER_CLIENT": str(CONCURRENCY * 2), **extra_env,
    }
    with child(["-m", "gateway", "serve"], port, env, data_dir / "gateway.log") as proc:
        yield proc, port


@contextmanager
def corpus(names: set[str]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mugaika-bench-") as tmp:
        write_corpus(Path(tmp), names)
        yield Path(tmp)


def templates(directory: Path, names: set[str]) -> tuple[Template, ...]:
    return tuple(load_templates(directory, include=names))


def load(port: int, mix: tuple[Template, ...], count: int, sink_port: int | None = None,
         pid: int | None = None, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """One run of the load test client (and sink) in a fresh event loop."""
    cfg = LoadConfig(ClientOptions("127.0.0.1", port, concurrency), count, mix,
                     sink_port=sink_port, drain_timeout=600.0, pid=pid, progress=False)
    return loop.run(run_loadtest(cfg))


def smtp_source(port: int, mix: tuple[Template, ...], count: int,
                sink_port: int | None = None) -> dict[str, Any]:
    """`count` messages of `mix` sent by smtp-source instead of the load test's client:
    one smtp-source per template, CONCURRENCY sessions in all, each kept open for the
    next message (-d, as Postfix's connection cache does). With `sink_port`, the load
    test's sink counts what the gateway delivers."""
    with tempfile.TemporaryDirectory(prefix="mugaika-bench-source-") as tmp:
        files = []
        for i, template in enumerate(mix):
            # smtp-source -F ends every line it reads with CRLF itself
            files.append(Path(tmp) / f"{i}.eml")
            files[-1].write_bytes(template.data.replace(b"\r\n", b"\n"))
        outcome: dict[str, Any] = loop.run(_smtp_source(port, files, count, sink_port))
        return outcome


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _source(port: int, file: Path, count: int, sessions: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(count), "-F", str(file),
        "-f", "loadtest@sender.example", "-t", "user@example.lg.jp", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:  # it stops at the first reply that is not the expected one
        raise RuntimeError(f"smtp-source exited {proc.returncode}: {err.decode()[-500:]}")


async def _smtp_source(port: int, files: list[Path], count: int,
                       sink_port: int | None) -> dict[str, Any]:
    sink = SinkState()
    server = await start_sink("127.0.0.1", sink_port, sink) if sink_port else None
    try:
        started = time.monotonic()
        await asyncio.gather(*(_source(port, f, n, s) for f, n, s in zip(
            files, _shares(count, len(files)), _shares(CONCURRENCY, len(files)),
            strict=True)))
        sent = time.monotonic()
        deadline = sent + 600
        while server and len(sink.arrivals) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        if server:
            server.close()
            await server.wait_closed()
    last = max((a.received_at for a in sink.arrivals), default=None)
    return {"count": count, "accepted_per_s": count / (sent - started),
            "delivered": len(sink.arrivals) if server else None,
            "delivered_per_s": len(sink.arrivals) / (last - started) if last else None}


def result(name: str, value: float | None, unit: str, target: str, passed: bool | None,
           baseline: float | None = None, baseline_name: str = "",
           **details: Any) -> dict[str, Any]:
    """The shape every bench module's `run()` returns (bench/__main__ prints it)."""
    ratio = value / baseline if value is not None and baseline else None
    return {"name": name, "value": value, "unit": unit, "baseline": baseline,
            "baseline_name": baseline_name, "ratio": ratio, "target": target,
            "pass": passed, "details": details}
