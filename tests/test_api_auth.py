"""Every route refuses callers without a token (401) and roles without the right (403).

The route list comes from the app itself, so a route added later is covered or fails here.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from gateway.api.auth import Require
from gateway.api.links import RecipientLink
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import ROLE_PERMISSIONS, Permission, Role
from gateway.settings import Settings
from tests.api_helpers import Api, build_api

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")

#: The only routes open without a token (metrics only when metrics_public).
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _permission(route: APIRoute) -> Permission | str | None:
    """The token permission a route needs, "link" for signed recipient links, or None."""
    found: list[Permission | str] = [d.call.permission for d in route.dependant.dependencies
                                     if isinstance(d.call, Require)]
    found += ["link" for d in route.dependant.dependencies if isinstance(d.call, RecipientLink)]
    assert len(found) <= 1, route.path
    return found[0] if found else None


def _calls(api: Api) -> list[tuple[str, str, Permission | str | None]]:
    calls = []
    for context in iter_route_contexts(api.app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        assert context.path is not None
        path = re.sub(r"\{[^}]+\}", "Q1", context.path)
        for method in sorted(route.methods):
            calls.append((method, path, _permission(route)))
    return calls


@pytest.mark.parametrize("metrics_public", [True, False])
def test_every_route_needs_a_token(
    stores: SqlStores, settings: Settings, metrics_public: bool
) -> None:
    """No token, a malformed header or an unknown token: 401 on every non-public route."""
    api = build_api(stores, settings.model_copy(update={"metrics_public": metrics_public}))
    public = PUBLIC | ({"/metrics"} if metrics_public else set())
    calls = _calls(api)
    assert len(calls) >= 10
    for method, path, permission in calls:
        if path in public:
            assert permission is None, path
            continue
        assert permission is not None, f"{method} {path} has no Require dependency"
        for headers in ({}, {"Authorization": "Bearer mgk_nope"},
                        {"Authorization": "Basic dXNlcjpwYXNz"}):
            response = api.client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["code"] == "unauthenticated"
        # A link route takes no token at all: a valid admin token must not open it.
        if permission == "link":
            response = api.client.request(method, path, headers=api.as_("admin"))
            assert response.status_code == 401, (method, path)


def test_every_role_without_the_permission_gets_403(api: Api) -> None:
    """Auditors cannot delete or download, operators cannot approve, and so on."""
    refused = 0
    for method, path, permission in _calls(api):
        if not isinstance(permission, Permission):
            continue
        for role in Role:
            response = api.client.request(method, path, headers=api.as_(role.value), json={})
            if permission in ROLE_PERMISSIONS[role]:
                assert response.status_code != 403, (role, method, path)
                assert response.status_code != 401, (role, method, path)
            else:
                assert response.status_code == 403, (role, method, path)
                assert response.json()["code"] == "forbidden"
                refused += 1
    assert refused >= 9  # auditor 4, operator 2, approver 3 with the routes of today


def test_revoked_token_is_refused(api: Api) -> None:
    """A revoked token stops working at once, even for reading."""
    assert api.client.get("/api/quarantine", headers=api.as_("auditor")).status_code == 200
    api.stores.tokens.revoke("auditor")
    assert api.client.get("/api/quarantine", headers=api.as_("auditor")).status_code == 401


def test_health_is_open(api: Api) -> None:
    """Load balancers and kubelets probe without credentials."""
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["checks"] == {"database": True, "spool": True, "downstream": True,
                                      "converters": True}


DOCS = ("/docs", "/redoc", "/openapi.json")


def test_docs_are_off_by_default(api: Api) -> None:
    """The route list must not be handed to anyone who asks, with or without a token."""
    for path in DOCS:
        assert api.client.get(path).status_code == 404, path
        assert api.client.get(path, headers=api.as_("admin")).status_code == 404, path


def test_docs_answer_when_asked_for(stores: SqlStores, settings: Settings) -> None:
    """MUGAIKA_API_DOCS=true brings back Swagger UI, ReDoc and the schema they read."""
    api = build_api(stores, settings.model_copy(update={"api_docs": True}))
    for path in DOCS:
        assert api.client.get(path).status_code == 200, path
    assert "/api/quarantine" in api.client.get("/openapi.json").json()["paths"]
