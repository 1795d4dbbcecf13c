"""Tenant scope (issue 19): a municipality's staff see and act on their own mail only.

Tried as an attacker with a valid token or console account of one tenant: every API route
and console page that takes an id answers 404 for another tenant's id (not 403: ids do
not leak), lists and the audit log show nothing of other tenants, and nothing changes.
The prefecture's staff (no tenant) see everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from gateway.console import install
from gateway.custody.audit import AuditQuery
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Role
from gateway.settings import Settings, Tenant
from tests.api_helpers import Api, build_api
from tests.store_helpers import envelope_for, hold_message

pytest_plugins = ("tests.store_helpers",)
PASSWORD = "tenant password 1"
LOGIN = re.compile(r'name="login_token" value="([^"]+)"')
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TENANTS = (Tenant(id="gose", name="御所市", domains=("city.gose.example.lg.jp",)),
           Tenant(id="nara", name="奈良市", domains=("city.nara.example.lg.jp",)))


@pytest.fixture
def scoped(stores: SqlStores, settings: Settings) -> Iterator[Api]:
    settings = settings.model_copy(update={"tenants": TENANTS})
    built = build_api(stores, settings)
    install(built.app)
    for tenant in ("gose", "nara"):
        env = replace(envelope_for(rcpts=(f"clerk@city.{tenant}.example.lg.jp",)),
                      extra={"tenant": tenant})
        hold_message(stores, settings, f"Q-{tenant}", envelope=env)
        for role in Role:
            name = f"{tenant}-{role.value}"
            built.tokens[name] = stores.tokens.create(role, name, tenant)[1]
            stores.users.create(name, role, PASSWORD, tenant)
    stores.users.create("pref-admin", Role.ADMIN, PASSWORD)
    with built.client:
        yield built


#: Every route that takes an id, with the request that tries another tenant's entry.
API_CALLS = {
    ("GET", "/api/quarantine/{entry_id}"): {},
    ("GET", "/api/quarantine/{entry_id}/original"): {},
    ("DELETE", "/api/quarantine/{entry_id}"): {},
    ("POST", "/api/quarantine/{entry_id}/release"): {"json": {"reason": "x"}},
    ("POST", "/api/quarantine/{entry_id}/release/approve"): {"json": {}},
    ("POST", "/api/quarantine/{entry_id}/release/deny"): {"json": {"reason": "x"}},
    ("GET", "/api/messages/{queue_id}"): {},
}


def test_every_api_route_with_an_id_is_covered(scoped: Api) -> None:
    """A new route that takes an id must be added above (and so be tried)."""
    with_ids = {(m, c.path) for c in iter_route_contexts(scoped.app.routes)
                if isinstance(c.original_route, APIRoute) and c.path is not None
                and "{" in c.path and c.path.startswith("/api/")
                for m in c.original_route.methods}
    assert with_ids == set(API_CALLS)


@pytest.mark.parametrize(("method", "path"), sorted(API_CALLS))
def test_another_tenants_id_is_not_found_through_the_api(
        scoped: Api, method: str, path: str) -> None:
    target = path.replace("{entry_id}", "Q-nara").replace("{queue_id}", "Q-nara")
    for role in Role:
        answer = scoped.client.request(method, target, headers=scoped.as_(f"gose-{role.value}"),
                                       **API_CALLS[(method, path)])  # type: ignore[arg-type]
        # 404 where the role may act at all; 403 (no such permission) says nothing of ids.
        assert answer.status_code in (404, 403), (role, answer.status_code, answer.text)
        if answer.status_code == 403:
            assert "forbidden" in answer.text and "Q-nara" not in answer.text
    entry = scoped.stores.quarantine.get("Q-nara")
    assert entry is not None and entry.status == "held" and not entry.requests


def test_lists_and_audit_show_only_the_own_tenant(scoped: Api) -> None:
    client = scoped.client
    own = client.get("/api/quarantine", headers=scoped.as_("gose-auditor")).json()
    assert [e["id"] for e in own["items"]] == ["Q-gose"]
    everyone = client.get("/api/quarantine", headers=scoped.as_("admin")).json()
    assert {e["id"] for e in everyone["items"]} == {"Q-gose", "Q-nara"}
    messages = client.get("/api/messages", headers=scoped.as_("gose-auditor")).json()
    assert [m["queue_id"] for m in messages["items"]] == ["Q-gose"]
    # A nara operator's download is nara's audit row, not gose's.
    assert client.get("/api/quarantine/Q-nara/original",
                      headers=scoped.as_("nara-operator")).status_code == 200
    gose_log = client.get("/api/audit", headers=scoped.as_("gose-auditor")).json()["items"]
    assert all(e["target"] != "Q-nara" for e in gose_log)
    nara_rows = scoped.stores.audit.search(AuditQuery(tenant="nara")).items
    assert [e.action for e in nara_rows] == ["quarantine.download"]


def sign_in(client: TestClient, name: str) -> None:
    token = LOGIN.search(client.get("/console/login").text)
    assert token is not None
    answer = client.post("/console/login", follow_redirects=False, data={
        "name": name, "password": PASSWORD, "login_token": token[1]})
    assert answer.status_code == 303


CONSOLE_GETS = ["/console/quarantine/Q-nara", "/console/quarantine/Q-nara/original",
                "/console/quarantine/Q-nara/delivered/0.png", "/console/messages/Q-nara"]
CONSOLE_POSTS = ["/console/quarantine/Q-nara/request", "/console/quarantine/Q-nara/approve",
                 "/console/quarantine/Q-nara/deny", "/console/quarantine/Q-nara/password",
                 "/console/quarantine/Q-nara/delete"]


def test_another_tenants_id_is_not_found_in_the_console(scoped: Api) -> None:
    client = scoped.client
    sign_in(client, "gose-admin")
    for path in CONSOLE_GETS:
        assert client.get(path).status_code == 404, path
    csrf = CSRF.search(client.get("/console/quarantine/Q-gose").text)
    assert csrf is not None
    for path in CONSOLE_POSTS:
        answer = client.post(path, data={"csrf": csrf[1], "reason": "x", "password": "x"},
                             follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].endswith(
            "msg=msg.not_found"), path
    entry = scoped.stores.quarantine.get("Q-nara")
    assert entry is not None and entry.status == "held"
    for path in ("/console/quarantine", "/console/requests", "/console/messages",
                 "/console/audit", "/console/audit.csv"):
        assert "Q-nara" not in client.get(path).text, path
    # A tenant's admin is not the prefecture's: no users or tokens of every tenant.
    assert client.get("/console/admin").status_code == 403


def test_the_prefecture_sees_every_tenant_in_the_console(scoped: Api) -> None:
    client = scoped.client
    sign_in(client, "pref-admin")
    page = client.get("/console/quarantine").text
    assert "Q-gose" in page and "Q-nara" in page
    assert client.get("/console/quarantine/Q-nara").status_code == 200
    assert client.get("/console/admin").status_code == 200


def test_the_copies_of_a_split_message_are_linked_and_scoped(scoped: Api) -> None:
    """One received message for gose and nara: the prefecture finds both copies by the
    received id (API and the detail page); gose's staff find their copy and never nara's."""
    for tenant in ("gose", "nara"):
        env = replace(envelope_for(rcpts=(f"kacho@city.{tenant}.example.lg.jp",)),
                      extra={"tenant": tenant, "split_of": "R-1"})
        scoped.stores.messages.record_received(f"S-{tenant}", env, 100)
    client = scoped.client
    everyone = client.get("/api/messages", params={"split_of": "R-1"},
                          headers=scoped.as_("admin")).json()["items"]
    assert {(m["queue_id"], m["tenant"], m["split_of"]) for m in everyone} == {
        ("S-gose", "gose", "R-1"), ("S-nara", "nara", "R-1")}
    own = client.get("/api/messages", params={"split_of": "R-1"},
                     headers=scoped.as_("gose-auditor")).json()["items"]
    assert [m["queue_id"] for m in own] == ["S-gose"]
    sign_in(client, "pref-admin")
    page = client.get("/console/messages/S-gose").text
    assert "御所市" in page and "R-1" in page and 'href="/console/messages/S-nara"' in page
    client.cookies.clear()
    sign_in(client, "gose-auditor")
    page = client.get("/console/messages/S-gose").text
    assert "R-1" in page and "S-nara" not in page
