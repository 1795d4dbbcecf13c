"""Fixtures for the API tests: an app on a real database, tokens per role, a spool double.

`RecordingSpool` stands in for `gateway.queue.spool.Spool` (same `put`, `writable`, `depth`,
`oldest_age`) and keeps what was put, so tests can check exactly what release delivers.
The end-to-end test uses the real spool and SMTP.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.api import create_app
from gateway.custody.quarantine import Decrypter
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Role
from gateway.metrics import Metrics
from gateway.queue.envelope import Envelope
from gateway.settings import Settings

pytest_plugins = ("tests.store_helpers",)


@dataclass
class RecordingSpool:
    put_calls: list[tuple[bytes, Envelope]] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str:
        self.put_calls.append((raw, envelope))
        return queue_id or f"R{next(self._ids)}"

    def wake(self, queue_id: str) -> None:
        self.woken.append(queue_id)

    def writable(self) -> bool:
        return True

    def depth(self) -> dict[str, int]:
        return {"incoming": len(self.put_calls)}

    def oldest_age(self, now: float) -> float:
        return 0.0


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    stores: SqlStores
    spool: RecordingSpool
    metrics: Metrics
    tokens: dict[str, str]

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def build_api(
    stores: SqlStores, settings: Settings, decrypt: Decrypter | None = None
) -> Api:
    spool = RecordingSpool()
    metrics = Metrics(version="test")
    app = create_app(settings, stores, spool, metrics, decrypt=decrypt,
                     purge_in_background=False)
    tokens = {}
    for role in Role:
        tokens[role.value] = stores.tokens.create(role, role.value)[1]
    tokens["admin2"] = stores.tokens.create(Role.ADMIN, "admin2")[1]
    tokens["approver2"] = stores.tokens.create(Role.APPROVER, "approver2")[1]
    return Api(app, TestClient(app), stores, spool, metrics, tokens)


@pytest.fixture
def api(stores: SqlStores, settings: Settings) -> Iterator[Api]:
    built = build_api(stores, settings)
    with built.client:
        yield built
