"""Prometheus metrics, in one object that owns its own registry.

Names follow postfix_exporter and rspamd's exporter: a `mugaika_` prefix, counters ending
in `_total` with one small label (`outcome`, `kind`, `action`), durations in seconds.
No label ever carries an address, a subject or a file name: label values come from fixed
sets, and anything else is counted as "other", so a hostile sender cannot blow up the
series count.

With several gateway processes (`gateway.processes`), counters and histograms live in
prometheus_client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor
before the members start) and /metrics sums them over the group. The gauges (spool,
quarantine) and the build info are read at scrape time by whoever serves /metrics.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

OUTCOMES = frozenset({"received", "delivered", "quarantined", "rejected", "deferred", "bounced"})
#: Why the gateway put a message into failed/ (bounces are the `bounced` outcome).
FAILED_REASONS = frozenset({"internal_error"})
ACTIONS = frozenset({"kept", "converted", "removed"})
#: RFC 8601 results a label may take (anything else is "other").
AUTH_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror",
                          "permerror", "policy"})
#: Converter and kind labels: short lowercase tokens; at most this many distinct values each.
MAX_LABEL_VALUES = 40
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_.+/-]{0,79}$")  # "pdf", "application/pdf"
_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DELAY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
#: Read by prometheus_client when it is first imported: set before a member starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
        # Each outcome's child, made once: `labels()` validates and locks on every call,
        # and a message passes here three times. Made now, so zeros are exported from the
        # start and rate() works.
        self._outcomes = {outcome: self._messages.labels(outcome) for outcome in OUTCOMES}
        self._failed = Counter("mugaika_failed", "Messages kept in failed/ by mugaika itself, "
                               "by reason.", ["reason"], registry=r)
        self._failed_reasons = {reason: self._failed.labels(reason) for reason in FAILED_REASONS}
        self._attachments = Counter(
            "mugaika_attachments", "Attachments by detected kind and action.",
            ["kind", "action"], registry=r)
        self._conversion = Histogram(
            "mugaika_conversion_duration_seconds", "Time one converter took for one part.",
            ["converter"], buckets=_SECONDS_BUCKETS, registry=r)
        # Per tenant (issue 19): a counter of its own, so that the long-standing
        # mugaika_messages_total keeps its labels; the tenant label takes only configured
        # ids ("default" for the global domains, "other" for anything else).
        self._tenant_messages = Counter(
            "mugaika_tenant_messages", "Messages by tenant and outcome.",
            ["tenant", "outcome"], registry=r)
        self._tenants: frozenset[str] = frozenset({"default"})
        # issue 21: one count per check and result of each inbound message.
        self._auth = Counter("mugaika_auth_results", "Sender authentication results.",
                             ["check", "result"], registry=r)
        self._delivery_delay = Histogram(
            "mugaika_delivery_delay_seconds", "From acceptance to downstream delivery.",
            buckets=_DELAY_BUCKETS, registry=r)
        self.scraped = _Scraped(version or _version())
        self._scraped_registry = CollectorRegistry()
        self._scraped_registry.register(self.scraped)
        self._kind = _BoundedLabel()
        self._converter = _BoundedLabel()

    # --- events -----------------------------------------------------------------------
    def message(self, outcome: str, count: int = 1) -> None:
        """Count a message outcome; an unknown outcome is a bug and raises ValueError."""
        child = self._outcomes.get(outcome)
        if child is None:
            raise ValueError(f"unknown outcome {outcome!r}")
        child.inc(count)

    def set_tenants(self, tenants: Iterable[str]) -> None:
        """The tenant ids the tenant label may take (the configuration's)."""
        self._tenants = frozenset({"default", *tenants})

    def tenant_message(self, tenant: str | None, outcome: str) -> None:
        """Count an outcome (delivered, bounced, deferred, quarantined) for a tenant."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        label = tenant or "default"
        self._tenant_messages.labels(label if label in self._tenants else "other",
                                     outcome).inc()

    def authentication(self, spf: str, dkim: tuple[tuple[str, str], ...], dmarc: str,
                       arc: str) -> None:
        """Count one message's results (DKIM: its worst signature, or none)."""
        worst = "none" if not dkim else ("pass" if all(r == "pass" for r, _ in dkim)
                                         else next(r for r, _ in dkim if r != "pass"))
        for check, result in (("spf", spf), ("dkim", worst), ("dmarc", dmarc), ("arc", arc)):
            self._auth.labels(check, result if result in AUTH_RESULTS else "other").inc()

    def failed(self, reason: str) -> None:
        """A message kept in failed/ by the gateway; an unknown reason is a bug."""
        child = self._failed_reasons.get(reason)
        if child is None:
            raise ValueError(f"unknown failure reason {reason!r}")
        child.inc()

    def attachment(self, kind: str, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        self._attachments.labels(self._kind(kind), action).inc()

    def conversion(self, converter: str, seconds: float) -> None:
        self._conversion.labels(self._converter(converter)).observe(seconds)

    def delivery_delay(self, seconds: float) -> None:
        self._delivery_delay.observe(max(0.0, seconds))

    def observe_delivery(self, received_at: float, now: float) -> None:
        """After a successful delivery: acceptance-to-delivery delay (needs `received_at`)."""
        if received_at > 0:
            self.delivery_delay(now - received_at)

    # --- gauges read at scrape time -----------------------------------------------------
    def watch_spool(self, depth: Callable[[], float], oldest_age: Callable[[], float]) -> None:
        self.scraped.gauges["mugaika_spool_messages"] = ("Messages in the spool.", depth)
        self.scraped.gauges["mugaika_spool_oldest_message_age_seconds"] = (
            "Age of the oldest message in the spool.", oldest_age)

    def watch_quarantine(self, entries: Callable[[], float], size: Callable[[], float]) -> None:
        self.scraped.gauges["mugaika_quarantine_entries"] = ("Messages in quarantine.", entries)
        self.scraped.gauges["mugaika_quarantine_bytes"] = (
            "Bytes of originals in quarantine.", size)

    def watch_tenant_quarantine(self, read: Callable[[], dict[str, tuple[float, float]]]
                                ) -> None:
        """Per tenant (entries, bytes) of the quarantine, read at scrape time; tenants not
        configured are summed under "other"."""
        def by_label(index: int) -> Callable[[], dict[str, float]]:
            def values() -> dict[str, float]:
                out: dict[str, float] = {}
                for tenant, pair in read().items():
                    label = tenant if tenant in self._tenants else "other"
                    out[label] = out.get(label, 0.0) + pair[index]
                return out
            return values
        self.scraped.labelled["mugaika_tenant_quarantine_entries"] = (
            "Messages in quarantine, by tenant.", by_label(0))
        self.scraped.labelled["mugaika_tenant_quarantine_bytes"] = (
            "Sizes of the quarantined messages, by tenant.", by_label(1))

    # --- exposition ---------------------------------------------------------------------
    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """This process's counters, or the whole group's in multiprocess mode."""
        counted = self.registry
        if directory := os.environ.get(MULTIPROC_ENV):
            counted = CollectorRegistry()
            MultiProcessCollector(counted, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(counted) + generate_latest(self._scraped_registry)


class _Scraped(Collector):
    """Gauges computed when /metrics is read, and the build info: per scrape, not per
    process, so they never go through the multiprocess files."""

    def __init__(self, version: str) -> None:
        self.version = version
        #: name -> (help, read the value)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        #: name -> (help, read the values by tenant)
        self.labelled: dict[str, tuple[str, Callable[[], dict[str, float]]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (text, read) in self.gauges.items():
            yield GaugeMetricFamily(name, text, value=read())
        for name, (text, read_all) in self.labelled.items():
            family = GaugeMetricFamily(name, text, labels=["tenant"])
            for tenant, value in sorted(read_all().items()):
                family.add_metric([tenant], value)
            yield family
        info = InfoMetricFamily("mugaika_build", "Version of the running gateway.")
        info.add_metric([], {"version": self.version, "python": platform.python_version()})
        yield info


def _version() -> str:
    try:
        return metadata.version("mugaika")
    except metadata.PackageNotFoundError:
        return "0+unknown"
