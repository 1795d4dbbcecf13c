"""Small shared pieces of the store: clock, paging, search helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, select

T = TypeVar("T")

Clock = Callable[[], datetime]
MAX_PAGE = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int
    limit: int
    offset: int


def paged(
    conn: Any, query: Select[Any], order: Sequence[ColumnElement[Any]], limit: int, offset: int
) -> tuple[int, Sequence[Any]]:
    """Total count and one page of rows for `query` (limit capped at MAX_PAGE)."""
    total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = conn.execute(
        query.order_by(*order).limit(max(1, min(limit, MAX_PAGE))).offset(max(0, offset))
    ).all()
    return int(total), rows


def join_addresses(addresses: Sequence[str]) -> str:
    return "\n".join(addresses)


def split_addresses(text: str) -> tuple[str, ...]:
    return tuple(a for a in text.split("\n") if a)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
