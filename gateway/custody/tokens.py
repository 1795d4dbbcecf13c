"""Bearer API tokens: created once, shown once, stored only as a sha256 hash.

A token is 32 random bytes (256 bits), so a plain sha256 is enough: there is nothing to
brute-force that a slow password hash would protect. Lookup is by hash, so a stolen
database does not yield usable tokens.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.store.common import Clock, utcnow, write
from gateway.store.schema import api_tokens

TOKEN_PREFIX = "mgk_"  # noqa: S105 - a marker, not a secret


class Role(StrEnum):
    AUDITOR = "auditor"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"  # message log, quarantine list and detail, metrics when not public
    DOWNLOAD = "download"  # an original's bytes (audited)
    REQUEST = "request"  # ask for a release, PPAP password release
    DELETE = "delete"
    APPROVE = "approve"
    AUDIT = "audit"  # read the audit log


#: Auditors read (including the audit log) but never touch originals; operators handle the
#: daily queue; approvers are the second pair of eyes and need to see what they approve.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.AUDITOR: frozenset({Permission.READ, Permission.AUDIT}),
    Role.OPERATOR: frozenset(
        {Permission.READ, Permission.DOWNLOAD, Permission.REQUEST, Permission.DELETE}
    ),
    Role.APPROVER: frozenset({Permission.READ, Permission.DOWNLOAD, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}


#: Names go into the audit log and the X-Mugaika-Released-By header: no spaces or controls.
#: \w admits kanji and kana, so staff can use their own names.
_NAME = re.compile(r"^[\w.@-]{1,64}$")
#: Actors the gateway itself uses; a token must not be mistaken for them in the audit log.
RESERVED_PREFIXES = ("cli:", "system", "notice-link")


class TokenError(Exception):
    """A token could not be created (e.g. the name is taken)."""


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    #: Its tenant's data only; None: every tenant's (the prefecture's staff).
    tenant: str | None = None

    def allows(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenStore:
    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def create(self, role: Role, name: str | None = None,
               tenant: str | None = None) -> tuple[TokenInfo, str]:
        """A new token; the plain value is returned here and never again."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        label = name or f"{role.value}-{secrets.token_hex(4)}"
        if not _NAME.match(label) or label.startswith(RESERVED_PREFIXES):
            raise TokenError("a token name is 1-64 letters, digits, '.', '_', '@' or '-', "
                             "and does not start with 'cli:' or 'system'")
        now = self._clock()
        try:
            with write(self._engine) as conn:
                result = conn.execute(insert(api_tokens).values(
                    name=label[:128], role=role.value, token_sha256=hash_token(token),
                    created_at=now, tenant=tenant,
                ))
        except IntegrityError as exc:
            raise TokenError(f"a token named {label!r} exists already") from exc
        key = result.inserted_primary_key
        assert key is not None
        return TokenInfo(int(key[0]), label, role, now, None, tenant), token

    def authenticate(self, untrusted_token: str) -> TokenInfo | None:
        """The live token matching `untrusted_token`, or None."""
        if not untrusted_token.startswith(TOKEN_PREFIX) or len(untrusted_token) > 200:
            return None
        with self._engine.connect() as conn:
            row = conn.execute(
                select(api_tokens).where(
                    api_tokens.c.token_sha256 == hash_token(untrusted_token),
                    api_tokens.c.revoked_at.is_(None),
                )
            ).first()
        return _info(row._mapping) if row else None

    def list(self) -> list[TokenInfo]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.id)).all()
        return [_info(r._mapping) for r in rows]

    def revoke(self, name: str) -> bool:
        with write(self._engine) as conn:
            return bool(conn.execute(
                update(api_tokens)
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            ).rowcount)


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row["id"], name=row["name"], role=Role(row["role"]),
        created_at=row["created_at"], revoked_at=row["revoked_at"], tenant=row["tenant"],
    )
