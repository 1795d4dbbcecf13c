"""`SIGHUP` (`systemctl reload mugaika`): apply a changed configuration file's tenants.

What a reload applies: the tenants (their domains, downstreams and policies), the global
treatments, first-contact rule and accepted domains. Everything else (ports, data directory,
database, workers) needs a restart, and a reload that changes it says so in the log.
SMTP sessions and mail in flight are not touched: a message already accepted is handled
under the tenants it was accepted with; forwarders of tenants whose downstream did not
change are kept (their connections too), the others are closed a minute later, when
their deliveries in flight are long done.

A file that does not load (a TOML error, a domain in two tenants) is refused: the old
configuration stays in force and the log says why (`config_reload_refused`).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping

import structlog

from gateway.queue.outlets import Forwarder
from gateway.queue.worker import Worker
from gateway.relay.egress import forwarder_from_settings
from gateway.relay.ingress import IngressHandler
from gateway.settings import LOAD_ERRORS, RELOADABLE, Settings, load_settings, with_reloadable
from gateway.tenancy import Tenancy

log = structlog.get_logger("mugaika.reload")
#: Set per member of a group (`gateway.processes.slot_settings`), not by the file.
PER_MEMBER = ("converter_workers",)
#: Seconds before a forwarder no longer used is closed (its deliveries have ended).
RETIRE_SECONDS = 60.0


class Reloader:
    def __init__(self, settings: Settings, handler: IngressHandler, worker: Worker,
                 routes: Mapping[str, Forwarder]) -> None:
        self.settings = settings
        self.handler = handler
        self.worker = worker
        self.routes = dict(routes)

    async def reload(self) -> bool:
        """Read the file again and apply it; False (and the old one kept) when it fails."""
        try:
            fresh = await asyncio.to_thread(load_settings)
        except LOAD_ERRORS as exc:
            log.error("config_reload_refused", error=str(exc)[:2000])
            return False
        ignored = [name for name in type(fresh).model_fields if name not in RELOADABLE
                   and name not in PER_MEMBER
                   and getattr(fresh, name) != getattr(self.settings, name)]
        merged = with_reloadable(self.settings, fresh)
        tenancy = Tenancy(merged)
        routes = self._routes(merged, tenancy)
        self.handler.use(tenancy)
        self.worker.use(tenancy, routes)
        self.settings, self.routes = merged, routes
        log.info("config_reloaded", tenants=[t.id for t in merged.tenants],
                 needs_restart=ignored)
        return True

    def _routes(self, merged: Settings, tenancy: Tenancy) -> dict[str, Forwarder]:
        """A forwarder per tenant with a downstream: kept when its downstream is
        unchanged, new otherwise; the ones no longer used retire."""
        old_tenancy = Tenancy(self.settings)
        routes: dict[str, Forwarder] = {}
        for tenant in merged.tenants:
            if tenant.downstream is None:
                continue
            before = old_tenancy.tenant(tenant.id)
            same = before is not None and before.downstream == tenant.downstream
            routes[tenant.id] = self.routes[tenant.id] if same and tenant.id in self.routes \
                else forwarder_from_settings(tenancy.settings_for(tenant.id))
        retired = [f for f in self.routes.values() if f not in routes.values()]
        if retired:
            asyncio.get_running_loop().call_later(RETIRE_SECONDS, _close_later, retired)
        return routes


def watch(reloader: Reloader) -> None:
    """Reload on SIGHUP, one reload at a time."""
    loop = asyncio.get_running_loop()
    busy = asyncio.Lock()

    async def once() -> None:
        async with busy:
            await reloader.reload()

    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(once()))
    # A member of a group starts with SIGHUP blocked (`gateway.processes.Group.start`):
    # one sent while it was still starting is delivered now, to this handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _close_later(forwarders: list[Forwarder]) -> None:
    for forwarder in forwarders:
        asyncio.get_running_loop().create_task(forwarder.close())
