"""Shared route pieces: paging parameters and the documented error responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Query

from gateway.api.models import Problem
from gateway.store.common import MAX_PAGE

#: Beyond this offset nobody is paging by hand; it also keeps values inside BIGINT.
MAX_OFFSET = 1_000_000_000


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")] = 0,
) -> Paging:
    return Paging(limit, offset)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses; 401 and 403 are on every protected route."""
    text = {
        400: "Wrong password", 401: "No valid token", 403: "Role not allowed, or four eyes",
        404: "No such item", 409: "Not possible in the current state",
        429: "Too many wrong passwords",
    }
    return {s: {"model": Problem, "description": text[s]} for s in (401, 403, *statuses)}
