"""Prometheus metrics, in one object that owns its own registry.

Names follow postfix_exporter and rspamd's exporter: a `mugaika_` prefix, counters ending
in `_total` with one small label (`outcome`, `kind`, `action`), durations in seconds.
No label ever carries an address, a subject or a file name: label values come from fixed
sets, and anything else is counted as "other", so a hostile sender cannot blow up the
series count.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from gateway.report import Report, Verdict

OUTCOMES = frozenset({"received", "delivered", "quarantined", "rejected", "deferred", "bounced"})
ACTIONS = frozenset({"kept", "converted", "removed"})
#: Converter and kind labels: short lowercase tokens; at most this many distinct values each.
MAX_LABEL_VALUES = 40
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_.+/-]{0,79}$")  # "pdf", "application/pdf"
_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DELAY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


class _BoundedLabel:
    """Admits up to MAX_LABEL_VALUES well-formed values; the rest become "other"."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, untrusted_value: str) -> str:
        value = untrusted_value.lower()
        if value in self._seen:
            return value
        if not _TOKEN.match(value) or len(self._seen) >= MAX_LABEL_VALUES:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    """Everything the gateway exports; the lead's ingress/worker call the methods below."""

    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._messages = Counter("mugaika_messages", "Messages by outcome.", ["outcome"],
                                 registry=r)
        for outcome in sorted(OUTCOMES):  # export zeros so rate() works from the start
            self._messages.labels(outcome)
        self._attachments = Counter(
            "mugaika_attachments", "Attachments by detected kind and action.",
            ["kind", "action"], registry=r)
        self._conversion = Histogram(
            "mugaika_conversion_duration_seconds", "Time one converter took for one part.",
            ["converter"], buckets=_SECONDS_BUCKETS, registry=r)
        self._delivery_delay = Histogram(
            "mugaika_delivery_delay_seconds", "From acceptance to downstream delivery.",
            buckets=_DELAY_BUCKETS, registry=r)
        self._spool_depth = Gauge("mugaika_spool_messages", "Messages in the spool.", registry=r)
        self._spool_oldest = Gauge("mugaika_spool_oldest_message_age_seconds",
                                   "Age of the oldest message in the spool.", registry=r)
        self._q_entries = Gauge("mugaika_quarantine_entries", "Messages in quarantine.",
                                registry=r)
        self._q_bytes = Gauge("mugaika_quarantine_bytes", "Bytes of originals in quarantine.",
                              registry=r)
        Info("mugaika_build", "Version of the running gateway.", registry=r).info(
            {"version": version or _version(), "python": platform.python_version()})
        self._kind = _BoundedLabel()
        self._converter = _BoundedLabel()

    # --- events -----------------------------------------------------------------------
    def message(self, outcome: str, count: int = 1) -> None:
        """Count a message outcome; an unknown outcome is a bug and raises ValueError."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self._messages.labels(outcome).inc(count)

    def attachment(self, kind: str, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        self._attachments.labels(self._kind(kind), action).inc()

    def conversion(self, converter: str, seconds: float) -> None:
        self._conversion.labels(self._converter(converter)).observe(seconds)

    def delivery_delay(self, seconds: float) -> None:
        self._delivery_delay.observe(max(0.0, seconds))

    def observe_report(self, report: Report) -> None:
        """After sanitizing: each part by detected type and action; "quarantined" when the
        original went to the quarantine (the whole message or any part of it)."""
        for action in report.actions:
            self.attachment(action.detected_type, action.action.value)
        if report.verdict is Verdict.QUARANTINED or any(a.quarantined for a in report.actions):
            self.message("quarantined")

    def observe_delivery(self, received_at: float, now: float) -> None:
        """After a successful delivery: acceptance-to-delivery delay (needs `received_at`)."""
        if received_at > 0:
            self.delivery_delay(now - received_at)

    # --- gauges read at scrape time -----------------------------------------------------
    def watch_spool(self, depth: Callable[[], float], oldest_age: Callable[[], float]) -> None:
        self._spool_depth.set_function(depth)
        self._spool_oldest.set_function(oldest_age)

    def watch_quarantine(self, entries: Callable[[], float], size: Callable[[], float]) -> None:
        self._q_entries.set_function(entries)
        self._q_bytes.set_function(size)

    # --- exposition ---------------------------------------------------------------------
    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return metadata.version("mugaika")
    except metadata.PackageNotFoundError:
        return "0+unknown"
