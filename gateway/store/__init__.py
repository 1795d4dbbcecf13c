"""Persistence for the message log and the quarantine (interim file store; SQL lands with issue 6)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from gateway.attachments import HeldOriginal
from gateway.envelope import Envelope
from gateway.report import Report
from gateway.settings import Settings
from gateway.stores import DeliveryStatus


class FileMessageLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, record: dict[str, object]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def record_received(self, queue_id: str, envelope: Envelope, size: int) -> None:
        self._append({"event": "received", "queue_id": queue_id, "size": size, "t": time.time()})

    def record_processed(self, queue_id: str, subject: str | None, report: Report) -> None:
        self._append({"event": "processed", "queue_id": queue_id, "verdict": report.verdict.value})

    def record_delivery(self, queue_id: str, status: DeliveryStatus, attempts: int,
                        detail: str) -> None:
        self._append({"event": status, "queue_id": queue_id, "attempts": attempts,
                      "detail": detail})


class FileQuarantine:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def hold(self, queue_id: str, envelope: Envelope, raw: bytes, report: Report,
             held: tuple[HeldOriginal, ...]) -> None:
        for blob in (raw, *(h.data for h in held)):
            digest = hashlib.sha256(blob).hexdigest()
            (self.root / digest).write_bytes(blob)
        (self.root / f"{queue_id}.json").write_text(report.to_json(), encoding="utf-8")


class FileStores:
    def __init__(self, settings: Settings) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.messages = FileMessageLog(settings.data_dir / "messages.jsonl")
        self.quarantine = FileQuarantine(settings.quarantine_dir)

    def close(self) -> None:
        return None


def open_stores(settings: Settings) -> FileStores:
    return FileStores(settings)
