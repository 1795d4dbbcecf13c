"""Console pages on a full database (issue 18): every page's p95 < 200 ms, both backends.

Per backend (a SQLite file in a temporary directory; a fresh PostgreSQL database, dropped
afterwards, when a server answers), the database is filled with 100,000 message-log rows
over the last 30 days, 10,000 quarantine entries with their parts and release requests,
and a few thousand audit rows. Then the real app (API + console, as `mugaika serve` builds
it) is served by uvicorn in a child process, and an httpx client signed in through the
sign-in form times each page sequentially over keep-alive HTTP: p50/p95 per page.

Baseline, same run, same server: the API's JSON list of the quarantine
(`/api/quarantine` with a token), the same search without HTML; `/healthz` is recorded
too, as the floor of the HTTP stack. The CSV export is timed to its last byte and
reported apart: it is a download, not a page, and not under the 200 ms target.

`python -m bench console`; `MUGAIKA_BENCH_QUICK=1` fills a tenth and times fewer requests.
`python -m bench.bench_console serve URL DATA_DIR PORT` is the child server.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Connection, create_engine, insert, text
from sqlalchemy.engine import make_url

from bench.common import child, free_port, quick, result
from gateway.custody.stores import SqlStores, open_stores
from gateway.custody.tokens import Role
from gateway.pipeline.attachments import HeldOriginal
from gateway.pipeline.report import Action, ActionKind, Report, Verdict
from gateway.queue.envelope import Envelope
from gateway.settings import Settings
from gateway.store.blobs import sha256_hex
from gateway.store.common import dumps, join_addresses
from gateway.store.messages import MAX_SUBJECT
from gateway.store.quarantine import _derive, _subject
from gateway.store.schema import (
    audit_log,
    blobs,
    messages,
    quarantine_entries,
    quarantine_parts,
    release_requests,
)

TARGET_MS = 200.0
#: The admin database of the PostgreSQL server the fresh database is made on.
PG_ADMIN_URL = os.environ.get("MUGAIKA_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench console password"
LOGIN = re.compile(r'name="login_token" value="([^"]+)"')
BATCH = 2000
SENDERS = ("keiri@tokyo-shoji.co.jp", "info@osaka-kensetsu.jp", "soumu@city.example.lg.jp",
           "news@mailmag.example.com", "tanaka@nagoya-denki.co.jp", "support@cloud.example.net",
           "kyouiku@pref.example.lg.jp", "sato@sapporo-insatsu.co.jp")
RECIPIENTS = tuple(f"{n}@example.lg.jp" for n in
                   ("somu", "zeimu", "kenko", "kyoiku", "toshi", "fukushi", "kankyo", "kikaku"))
SUBJECTS = ("請求書の送付について", "【重要】会議資料のご確認", "見積書（令和8年度）",
            "研修のご案内", "議事録の共有", "入札公告について", "お問い合わせへの回答",
            "パスワード付きファイルの送付", "月次報告書", "メールマガジン第512号")


@dataclass(frozen=True)
class Size:
    messages: int
    quarantine: int
    audit: int
    requests: int  # timed requests per page, after WARMUP
    warmup: int


def size() -> Size:
    if quick():
        return Size(10_000, 1_000, 500, 20, 3)
    return Size(100_000, 10_000, 3_000, 50, 5)


# --- the fill ---------------------------------------------------------------------------
# Rows go in with SQLAlchemy Core executemany into the tables the stores write, for speed
# (100,000 `record_received/processed/delivery` calls take minutes). The values are built
# by the stores' own helpers, so the rows are what the code writes: `dumps(report)` as
# `record_processed`, `_subject` and `_derive` as `SqlQuarantine.hold`, blob rows as
# `put_blob` (sha256 of the data), request rows as `add_request`/`complete_release`.


def _report(queue_id: str, verdict: Verdict, rng: random.Random) -> Report:
    """A report of the shape the pipeline makes: one action per leaf part."""
    body = Action("1", None, "text/plain", "text/plain", ActionKind.KEPT, "text body")
    if verdict is Verdict.CLEAN:
        return Report(queue_id, verdict, (body,))
    attachment = rng.choice((
        Action("2", "見積書.pdf", "application/pdf", "application/pdf", ActionKind.CONVERTED,
               "rendered to images", ("見積書.pdf.png",), pages=3, quarantined=True),
        Action("2", "資料.docx", "application/vnd.openxmlformats-officedocument."
               "wordprocessingml.document", "application/zip", ActionKind.CONVERTED,
               "office document rendered", ("資料.pdf",), pages=5, quarantined=True),
        Action("2", "setup.exe", "application/octet-stream", "application/x-dosexec",
               ActionKind.REMOVED, "blocked type", code="blocked_type", quarantined=True),
        Action("2", "書類.zip", "application/zip", "application/zip", ActionKind.REMOVED,
               "encrypted archive", code="encrypted", quarantined=True, releasable=True),
    ))
    reason = "encrypted" if verdict is Verdict.QUARANTINED else ""
    return Report(queue_id, verdict, (body, attachment), reason=reason,
                  defects=("missing_date",) if rng.random() < 0.1 else ())


@dataclass(frozen=True)
class Fill:
    message_ids: list[str]
    entry_ids: list[str]


def _received(now: datetime, rng: random.Random) -> datetime:
    return now - timedelta(seconds=rng.uniform(0, 29.5 * 86400))


def _message_row(i: int, now: datetime, rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    verdict = (Verdict.QUARANTINED if roll < 0.1 else Verdict.SANITIZED if roll < 0.35
               else Verdict.CLEAN)
    queue_id = f"{i:013X}{rng.randrange(16 ** 6):06X}"
    received = _received(now, rng)
    status = rng.choices(("delivered", "deferred", "bounced", "queued"), (94, 3, 2, 1))[0]
    subject = f"{rng.choice(SUBJECTS)} ({i})"
    return {
        "queue_id": queue_id, "received_at": received, "kind": "inbound",
        "mail_from": rng.choice(SENDERS), "client_addr": "192.0.2.10", "helo": "mx.example.jp",
        "recipients": join_addresses(rng.sample(RECIPIENTS, rng.choice((1, 1, 1, 2, 3)))),
        "size": rng.randrange(3_000, 2_000_000), "subject": subject[:MAX_SUBJECT],
        "verdict": verdict.value, "processed_at": received + timedelta(seconds=1),
        "report_json": dumps(_report(queue_id, verdict, rng)), "status": status,
        "attempts": 1 if status == "delivered" else 3,
        "status_detail": "250 2.0.0 Ok: queued" if status == "delivered" else "451 4.3.0 try again",
        "status_at": received + timedelta(seconds=2),
    }


def _raw_mail(row: dict[str, Any], attachment: bytes, name: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["Subject"] = row["mail_from"], row["subject"]
    msg["To"] = row["recipients"].split("\n")[0]
    msg["Message-ID"] = f"<{row['queue_id']}@bench.invalid>"
    msg.set_content("お世話になっております。資料を添付いたします。\n" * 20)
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def _entry_rows(row: dict[str, Any], rng: random.Random, attachments: list[bytes]
                ) -> tuple[dict[str, Any], list[dict[str, Any]], list[bytes]]:
    """The rows `SqlQuarantine.hold` writes for the logged message `row` (its report)."""
    report = Report(row["queue_id"], Verdict(row["verdict"]),
                    (Action("2", "書類.zip", "application/zip", "application/zip",
                            ActionKind.REMOVED, "encrypted archive", code="encrypted",
                            quarantined=True, releasable=True),), reason="encrypted")
    # A shared attachment (a newsletter's, a form everybody sends) is stored once.
    data = rng.choice(attachments) if rng.random() < 0.3 else os.urandom(2048)
    raw = _raw_mail(row, data, "書類.zip")
    held = (HeldOriginal("2", "書類.zip", "application/zip", data, "encrypted"),)
    derived = _derive(report, held)
    created = row["received_at"] + timedelta(seconds=1)
    entry = {"id": row["queue_id"], "created_at": created,
             "expires_at": created + timedelta(days=30), "mail_from": row["mail_from"],
             "recipients": row["recipients"], "subject": _subject(raw), "size": len(raw),
             "verdict": report.verdict.value, "reasons": dumps(list(derived.reasons)),
             "original_sha256": sha256_hex(raw), "status": "held"}
    parts = [{"entry_id": row["queue_id"], "part": h.part, "filename": h.filename,
              "content_type": h.content_type, "sha256": sha256_hex(h.data), "size": len(h.data),
              "reason": h.reason, "releasable": h.part in derived.releasable} for h in held]
    return entry, parts, [raw, data]


def _requests(entry: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Some entries were asked for: pending (the approvers' queue), approved, or denied."""
    roll = rng.random()
    if roll > 0.17:
        return []
    asked = entry["created_at"] + timedelta(hours=rng.uniform(0.1, 8))
    request = {"entry_id": entry["id"], "requested_by": "somu-tanto", "requested_at": asked,
               "requested_from": "10.0.0.5", "reason": "業務上必要なため", "status": "pending"}
    if roll < 0.04:
        entry["status"] = "release_requested"
        return [request]
    decided = {"decided_by": "kacho", "decided_at": asked + timedelta(hours=1)}
    if roll < 0.14:
        entry.update(status="released", released_at=decided["decided_at"],
                     released_by="kacho", release_queue_id=f"R{entry['id']}")
        return [{**request, **decided, "status": "approved", "queue_id": f"R{entry['id']}"}]
    entry["status"] = "denied"
    return [{**request, **decided, "status": "denied", "decision_reason": "業務外のため"}]


def _audit_rows(count: int, entry_ids: list[str], now: datetime,
                rng: random.Random) -> list[dict[str, Any]]:
    actions = ("console.login", "quarantine.request", "quarantine.approve", "quarantine.deny",
               "quarantine.download", "quarantine.purge", "token.create")
    rows = []
    for i in range(count):
        at = now - timedelta(seconds=(count - i) * 29.5 * 86400 / count)
        rows.append({"at": at, "actor": rng.choice(("somu-tanto", "kacho", "admin")),
                     "role": "approver", "action": rng.choice(actions),
                     "target": rng.choice(entry_ids), "remote": "10.0.0.5",
                     "detail": dumps({"request_id": i} if i % 3 else {})})
    return rows


def fill(stores: SqlStores, n: Size) -> Fill:
    rng = random.Random(18)
    now = datetime.now(UTC)
    rows = [_message_row(i, now, rng) for i in range(n.messages)]
    quarantined = [r for r in rows if r["verdict"] == "quarantined"][:n.quarantine]
    attachments = [os.urandom(4096) for _ in range(50)]
    entries, parts, requests, data = [], [], [], {}
    for row in quarantined:
        entry, entry_parts, blobs_of = _entry_rows(row, rng, attachments)
        requests += _requests(entry, rng)
        entries.append(entry)
        parts += entry_parts
        data.update({sha256_hex(b): b for b in blobs_of})
    with stores.engine.begin() as conn:
        _insert(conn, messages, rows)
        _insert(conn, blobs, [{"sha256": k, "size": len(v), "data": v, "created_at": now}
                              for k, v in data.items()])
        _insert(conn, quarantine_entries, entries)
        _insert(conn, quarantine_parts, parts)
        _insert(conn, release_requests, requests)
        _insert(conn, audit_log, _audit_rows(n.audit, [e["id"] for e in entries], now, rng))
    if stores.engine.dialect.name == "postgresql":
        with stores.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # as autovacuum would, soon after a load
    return Fill([r["queue_id"] for r in rows], [e["id"] for e in entries])


def _insert(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    # executemany wants one set of keys: fill the columns some rows leave out.
    keys = {k for row in rows for k in row}
    full = [{k: row.get(k) for k in keys} for row in rows]
    for start in range(0, len(full), BATCH):
        conn.execute(insert(table), full[start:start + BATCH])


# --- the server -------------------------------------------------------------------------


class _Spool:
    """The real spool, plus the `wake` the API wants (no worker in this process)."""

    def __init__(self, settings: Settings) -> None:
        from gateway.queue.spool import Spool

        self._spool = Spool(settings.spool_dir)

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str:
        return self._spool.put(raw, envelope, queue_id)

    def wake(self, queue_id: str) -> None:
        pass

    def writable(self) -> bool:
        return self._spool.writable()

    def depth(self) -> dict[str, int]:
        return self._spool.depth()

    def oldest_age(self, now: float) -> float:
        return self._spool.oldest_age(now)


def serve(url: str, data_dir: str, port: int) -> None:
    """The API and console as `gateway.server.serve` builds them, served by uvicorn."""
    import uvicorn

    from gateway.api import create_app
    from gateway.console import install
    from gateway.metrics import Metrics

    settings = Settings(data_dir=Path(data_dir), database_url=url)
    stores = open_stores(settings)
    # No scheduled purge or digest: they would write while the pages are timed.
    app = create_app(settings, stores, _Spool(settings), Metrics(),
                     purge_in_background=False)
    install(app)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                server_header=False)


# --- the timing -------------------------------------------------------------------------


def sign_in(client: httpx.Client, name: str) -> None:
    token = LOGIN.search(client.get("/console/login").text)
    assert token is not None, "no sign-in form"
    answer = client.post("/console/login", data={
        "name": name, "password": PASSWORD, "login_token": token[1], "next": "/console/"},
        follow_redirects=False)
    assert answer.status_code == 303, answer.status_code


def time_path(client: httpx.Client, paths: list[str], n: Size,
              headers: dict[str, str] | None = None) -> dict[str, float]:
    """p50/p95/max in ms of `n.requests` GETs (after warm-up), cycling through `paths`,
    and the largest body in KB; the time is to the last byte of the body."""
    times, size = [], 0
    for i in range(n.warmup + n.requests):
        path = paths[i % len(paths)]
        started = time.perf_counter()
        answer = client.get(path, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:300]}")
        if i >= n.warmup:
            times.append(elapsed)
            size = max(size, len(answer.content))
    times.sort()
    return {"p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[max(0, round(0.95 * len(times)) - 1)], 1),
            "max_ms": round(times[-1], 1), "kb": round(size / 1024)}


def pages(made: Fill) -> dict[str, list[str]]:
    """The pages timed; the detail pages cycle through 50 ids from all over the fill."""
    rng = random.Random(7)
    today = date.today()
    since, until = (today - timedelta(days=7)).isoformat(), (today - timedelta(days=3)).isoformat()
    return {
        "dashboard": ["/console/"],
        "messages": ["/console/messages"],
        "messages?sender": ["/console/messages?sender=tokyo-shoji"],
        "messages?since&until": [f"/console/messages?since={since}&until={until}"],
        "message detail": [f"/console/messages/{q}" for q in rng.sample(made.message_ids, 50)],
        "quarantine": ["/console/quarantine"],
        "quarantine?status=held": ["/console/quarantine?status=held"],
        "quarantine p=50": ["/console/quarantine?p=50"],
        "quarantine detail": [f"/console/quarantine/{e}" for e in rng.sample(made.entry_ids, 50)],
        "requests": ["/console/requests"],
        "audit": ["/console/audit"],
        "admin": ["/console/admin"],
    }


def measure(url: str, made: Fill, token: str, n: Size) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mugaika-bench-console-") as tmp:
        port = free_port()
        with child(["-m", "bench.bench_console", "serve", url, tmp, str(port)], port,
                   log=Path(tmp) / "server.log"), \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            sign_in(client, "admin-bench")
            figures = {name: time_path(client, paths, n) for name, paths in pages(made).items()}
            bearer = {"Authorization": f"Bearer {token}"}
            api = time_path(client, ["/api/quarantine?limit=50"], n, bearer)
            healthz = time_path(client, ["/healthz"], n)
            csv = time_path(client, ["/console/audit.csv"], replace(n, requests=5, warmup=1))
    return {"pages": figures, "api_quarantine": api, "healthz": healthz, "audit_csv": csv}


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mugaika-bench-console-db-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'mugaika.db'}"
        return
    name = f"mugaika_bench_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_answers() -> bool:
    try:
        with create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # no server here: the PostgreSQL half is skipped, and says so
        return False
    return True


def backend_run(backend: str, n: Size) -> dict[str, Any]:
    with database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        stores = open_stores(Settings(data_dir=Path(tmp), database_url=url))
        try:
            started = time.monotonic()
            made = fill(stores, n)
            filled = round(time.monotonic() - started, 1)
            stores.users.create("admin-bench", Role.ADMIN, PASSWORD)
            token = stores.tokens.create(Role.AUDITOR, "bench")[1]
        finally:
            stores.close()
        return {"fill_seconds": filled, **measure(url, made, token, n)}


def run() -> dict[str, Any]:
    n = size()
    backends = ["sqlite"] + (["postgresql"] if postgres_answers() else [])
    runs = {backend: backend_run(backend, n) for backend in backends}
    worst = max((p["p95_ms"], f"{b} {name}") for b, r in runs.items()
                for name, p in r["pages"].items())
    base = max(r["api_quarantine"]["p95_ms"] for r in runs.values())
    return result(
        "console pages, worst p95 over pages and backends", worst[0], "ms",
        f"< {TARGET_MS:.0f} ms p95 on every page", worst[0] < TARGET_MS, base,
        "API JSON list /api/quarantine p95 (worst backend)", worst_page=worst[1],
        backends=backends, messages=n.messages, quarantine=n.quarantine, audit=n.audit,
        requests_per_page=n.requests, warmup=n.warmup, runs=runs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        print(run())
