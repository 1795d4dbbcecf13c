"""Tenants: the municipalities one deployment serves (the prefecture's security cloud).

A tenant has its recipient domains, its own downstream and its own policy. They are
declared in the TOML configuration as `[[tenants]]` tables (the file an operator keeps in
version control stays the source of truth) and are part of `Settings`. Without tenants
the gateway is what it always was: one implicit tenant ("default") made of the global
settings.

The policy a message is sanitized under is decided in one place, `Tenancy.settings_for`:
the global settings with the tenant's overrides laid over them, computed once per tenant
at start-up. (The tenants' configuration models live in `gateway.settings`, beside the
settings they are part of.) The pipeline keeps reading one typed settings object and never asks which
tenant it works for.
"""

from __future__ import annotations

from gateway.settings import DEFAULT_TENANT, Settings, Tenant, tenant_settings

__all__ = ["DEFAULT_TENANT", "Tenancy"]


class Tenancy:
    """Which tenant a recipient belongs to, and the settings each tenant's mail is
    sanitized and delivered under; built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_domain = {d: t.id for t in settings.tenants for d in t.domains}
        self._tenants = {t.id: t for t in settings.tenants}
        self._settings = {t.id: tenant_settings(settings, t) for t in settings.tenants}

    @property
    def accepted_domains(self) -> set[str]:
        return set(self.settings.accepted_domains) | set(self._by_domain)

    def tenant_of(self, address: str) -> str:
        """The tenant of a recipient address (the default tenant's when no tenant has its
        domain: the global `accepted_domains`)."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        return self._by_domain.get(domain, DEFAULT_TENANT)

    def settings_for(self, tenant_id: str | None) -> Settings:
        """The settings `tenant_id`'s mail is handled under (the global ones for the
        default tenant, and for an id no longer configured: its mail still flows)."""
        return self._settings.get(tenant_id or DEFAULT_TENANT, self.settings)

    def tenant(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)
