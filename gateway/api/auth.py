"""Bearer-token authentication and role checks, as one FastAPI dependency per permission.

`Require(permission)` is the only way a route gets an `Actor`; the route test walks every
route of the app and fails when a non-health route lacks one, so a new route cannot be
forgotten.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.context import ApiContext, ApiError, get_context
from gateway.custody.audit import Actor
from gateway.custody.tokens import Permission

_bearer = HTTPBearer(auto_error=False, description="An API token from `mugaika token create`.")


class Require:
    """Dependency: a valid token (401 otherwise) whose role has `permission` (403 otherwise)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    def __call__(
        self,
        request: Request,
        context: Annotated[ApiContext, Depends(get_context)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Actor:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "unauthenticated", "a bearer token is required")
        token = context.stores.tokens.authenticate(credentials.credentials)
        if token is None:
            raise ApiError(401, "unauthenticated", "unknown or revoked token")
        if not token.allows(self.permission):
            raise ApiError(403, "forbidden", f"role {token.role.value} may not {self.permission}")
        remote = request.client.host if request.client else ""
        return Actor(token.name, token.role.value, remote, token.tenant)
