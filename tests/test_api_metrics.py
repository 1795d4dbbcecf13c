"""Metrics stay bounded and private to their app; readiness and the purge task."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from gateway.api import create_app
from gateway.custody.audit import AuditQuery
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Role
from gateway.metrics import MAX_LABEL_VALUES, Metrics
from gateway.queue.worker import count_report
from gateway.settings import Settings
from tests.api_helpers import RecordingSpool
from tests.store_helpers import FakeClock, hold_message

pytest_plugins = ("tests.store_helpers",)


def test_hostile_label_values_cannot_explode_series() -> None:
    """A sender choosing file types cannot create more than a bounded set of series."""
    metrics = Metrics(version="t")
    for i in range(500):
        metrics.attachment(f"application/x-evil-{i}", "removed")
    metrics.attachment("Bad Label\n{x}", "removed")
    text = metrics.render().decode()
    series = [line for line in text.splitlines() if line.startswith("mugaika_attachments_total{")]
    assert len(series) == MAX_LABEL_VALUES + 1  # plus "other"
    assert 'kind="other"} 461.0' in text


def test_outcomes_are_a_closed_set() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.message("alice@example.com")
    metrics.message("delivered")
    assert 'mugaika_messages_total{outcome="delivered"} 1.0' in metrics.render().decode()


def test_two_apps_have_separate_registries() -> None:
    """No global registry: a second instance starts from zero and does not clash."""
    first, second = Metrics(), Metrics()
    first.message("received")
    assert 'outcome="received"} 1.0' in first.render().decode()
    assert 'outcome="received"} 0.0' in second.render().decode()


def test_metrics_need_a_token_when_not_public(stores: SqlStores, settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_public": False}), stores,
                     RecordingSpool(), Metrics(), purge_in_background=False)
    client = TestClient(app)
    assert client.get("/metrics").status_code == 401
    _, token = stores.tokens.create(Role.AUDITOR, "a")
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and "mugaika_build_info" in response.text


def test_readyz_is_503_when_a_dependency_fails(stores: SqlStores, settings: Settings) -> None:
    """A load balancer takes the node out when the spool cannot be written."""

    class FullSpool(RecordingSpool):
        def writable(self) -> bool:
            return False

    app = create_app(settings, stores, FullSpool(), Metrics(), purge_in_background=False)
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["spool"] is False
    assert response.json()["checks"]["database"] is True


def test_server_purges_expired_entries_on_its_own(
    stores: SqlStores, settings: Settings, clock: FakeClock
) -> None:
    """The purge task runs at start-up and then every interval while the app is served."""
    hold_message(stores, settings, "OLD")
    clock.advance(days=31)
    quick = settings.model_copy(update={"quarantine_purge_interval_seconds": 0.05})
    app = create_app(quick, stores, RecordingSpool(), Metrics())
    with TestClient(app):
        deadline = time.monotonic() + 5
        while stores.quarantine.get("OLD") is not None:
            assert time.monotonic() < deadline, "purge did not run"
            time.sleep(0.05)
        hold_message(stores, settings, "LATER")
        clock.advance(days=31)
        while stores.quarantine.get("LATER") is not None:
            assert time.monotonic() < deadline, "purge did not run again"
            time.sleep(0.05)
    [event, *_] = stores.audit.search(AuditQuery()).items
    assert event.actor == "system" and event.action == "quarantine.purge"


def test_report_counts_parts_and_quarantine(stores: SqlStores, settings: Settings) -> None:
    """The worker hands each report over: parts by type and action, one quarantined message."""
    metrics = Metrics()
    result = hold_message(stores, settings, "Q1")
    count_report(metrics, result.report)
    metrics.observe_delivery(received_at=100.0, now=107.5)
    metrics.observe_delivery(received_at=0.0, now=107.5)  # unknown arrival: not observed
    text = metrics.render().decode()
    assert 'mugaika_messages_total{outcome="quarantined"} 1.0' in text
    assert 'action="removed"' in text and 'action="kept",kind="text/plain"' in text
    assert "mugaika_delivery_delay_seconds_count 1.0" in text
    assert "mugaika_delivery_delay_seconds_sum 7.5" in text
