"""Message log and quarantine throughput: `python -m bench.store [POSTGRES_URL]`.

Prints, per backend, how many messages per second the stores take when every message is
logged (received, processed, delivered) and when every message is also quarantined with
a 100 KB attachment, and how long a search takes. Same machine, same run: compare the
ratios, not the absolute numbers across runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from gateway.custody.stores import SqlStores, open_stores
from gateway.pipeline.sanitize import sanitize
from gateway.queue.envelope import Envelope
from gateway.settings import Settings
from gateway.store.messages import MessageQuery
from gateway.store.records import QuarantineQuery

N = 300


def _mail(size: int) -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "clerk@example.lg.jp", "請求書"
    msg.set_content("本文\n")
    msg.add_attachment(os.urandom(size), maintype="application", subtype="octet-stream",
                       filename="x.exe")
    return msg.as_bytes()


def run(stores: SqlStores, settings: Settings, label: str) -> None:
    raw = _mail(100_000)
    result = sanitize(raw, "B", settings)
    env = Envelope("a@example.com", ("clerk@example.lg.jp",), received_at=time.time())
    for mode in ("log only", "log + hold"):
        start = time.perf_counter()
        for i in range(N):
            qid = f"{mode[:3]}{i:05d}"
            stores.messages.record_received(qid, env, len(raw))
            stores.messages.record_processed(qid, "請求書", result.report)
            if mode == "log + hold":
                stores.quarantine.hold(qid, env, raw + str(i).encode(), result.report,
                                       result.held)
            stores.messages.record_delivery(qid, "delivered", 1, "250 ok")
        rate = N / (time.perf_counter() - start)
        print(f"{label:10} {mode:11} {rate:6.0f} messages/s")
    start = time.perf_counter()
    for _ in range(20):
        stores.messages.search(MessageQuery(recipient="clerk", limit=50))
        stores.quarantine.search(QuarantineQuery(subject="請求", limit=50))
    print(f"{label:10} search      {(time.perf_counter() - start) / 40 * 1000:6.1f} ms "
          f"(over {2 * N} log rows)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        stores = open_stores(settings)
        run(stores, settings, "sqlite")
        stores.close()
    if len(sys.argv) > 1:  # a scratch PostgreSQL database: the tables are created there
        settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=sys.argv[1])
        stores = open_stores(settings)
        run(stores, settings, "postgresql")
        stores.close()


if __name__ == "__main__":
    main()
