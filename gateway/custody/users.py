"""Console accounts: argon2id passwords, sessions, failed-login throttling and lockout.

Roles and permissions are the API tokens' four (`gateway.custody.tokens`), so a person
can do in the console exactly what a token of the same role can do through the API.

Decisions:
- Passwords: argon2id (argon2-cffi's defaults: 64 MiB, 3 passes, about 50 ms here);
  hashes are upgraded when the parameters change (`check_needs_rehash`).
- Sessions are rows in the database, keyed by the SHA-256 of a 256-bit random token that
  only the browser's cookie holds: any node (and a restarted one) knows them, and a stolen
  database yields no usable session. Each has its own CSRF token, an idle expiry and an
  absolute one.
- Lockout: after `console_max_failed_logins` wrong passwords in a row the account is
  locked for `console_lockout_minutes` (the right password does not open it meanwhile).
  This lets someone who knows a name lock its owner out for a while; for a console on the
  LGWAN side that is the accepted trade (the alternative, per-address throttling, is
  useless behind one proxy). An unknown name costs the same hash time as a known one.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.custody.tokens import _NAME, RESERVED_PREFIXES, ROLE_PERMISSIONS, Permission, Role
from gateway.settings import Settings
from gateway.store.common import Clock, utcnow, write
from gateway.store.schema import console_sessions, console_users

#: Shorter passwords are refused; no composition rules (NIST SP 800-63B).
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
#: A session's last-seen time is written at most this often (not on every page).
_TOUCH_EVERY = timedelta(minutes=1)
_hasher = PasswordHasher()
#: Verified against when the name is unknown, so that timing does not tell names apart.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserError(Exception):
    """An account could not be created or changed (the message says why)."""


class Locked(Exception):
    """Sign-in refused: the account is locked until `until`."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"locked until {until:%H:%M} UTC")
        self.until = until


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    created_at: datetime
    disabled: bool
    last_login_at: datetime | None
    locked_until: datetime | None
    #: Its tenant's data only; None: every tenant's.
    tenant: str | None = None

    def allows(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    created_at: datetime
    #: The cookie value: known only right after sign-in (never stored).
    token: str = ""


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")


class UserStore:
    def __init__(self, engine: Engine, settings: Settings, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._idle = timedelta(minutes=settings.console_idle_minutes)
        self._lifetime = timedelta(hours=settings.console_session_hours)
        self._max_failures = settings.console_max_failed_logins
        self._lockout = timedelta(minutes=settings.console_lockout_minutes)

    # --- accounts ---------------------------------------------------------------------
    def create(self, name: str, role: Role, password: str, tenant: str | None = None) -> User:
        if not _NAME.match(name) or name.startswith(RESERVED_PREFIXES):
            raise UserError("a user name is 1-64 letters, digits, '.', '_', '@' or '-', and "
                            "does not start with 'cli:' or 'system'")
        check_password(password)
        now = self._clock()
        try:
            with write(self._engine) as conn:
                conn.execute(insert(console_users).values(
                    name=name, role=role.value, password_hash=_hasher.hash(password),
                    created_at=now, password_changed_at=now, failed_logins=0, tenant=tenant))
        except IntegrityError as exc:
            raise UserError(f"a user named {name!r} exists already") from exc
        user = self.get(name)
        assert user is not None
        return user

    def get(self, name: str) -> User | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.name == name)).first()
        return _user(row._mapping) if row else None

    def list(self) -> list[User]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(console_users).order_by(console_users.c.name)).all()
        return [_user(r._mapping) for r in rows]

    def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable (ending every session) or enable an account; False when unknown."""
        return self._change(name, {"disabled_at": self._clock() if disabled else None},
                            end_sessions=disabled)

    def set_password(self, name: str, password: str) -> bool:
        """A new password: unlocks the account and ends its sessions; False when unknown."""
        check_password(password)
        return self._change(name, {"password_hash": _hasher.hash(password),
                                   "password_changed_at": self._clock(),
                                   "failed_logins": 0, "locked_until": None},
                            end_sessions=True)

    def _change(self, name: str, values: dict[str, Any], end_sessions: bool) -> bool:
        with write(self._engine) as conn:
            user_id = conn.execute(select(console_users.c.id)
                                   .where(console_users.c.name == name)).scalar()
            if user_id is None:
                return False
            conn.execute(update(console_users).where(console_users.c.id == user_id)
                         .values(**values))
            if end_sessions:
                conn.execute(delete(console_sessions)
                             .where(console_sessions.c.user_id == user_id))
        return True

    # --- sign-in and sessions -----------------------------------------------------------
    def sign_in(self, name: str, password: str, remote: str) -> Session | None:
        """A new session for the right password; None otherwise. Raises `Locked` while the
        account is locked (also for the right password)."""
        with self._engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.name == name)).first()
        values = row._mapping if row else None
        stored = values["password_hash"] if values else _DUMMY_HASH
        ok = _verify(stored, password[:MAX_PASSWORD])
        if values is None:
            return None
        now = self._clock()
        locked_until = values["locked_until"]
        if locked_until is not None and locked_until > now:
            raise Locked(locked_until)
        if values["disabled_at"] is not None:
            return None
        if not ok:
            self._failed(values["id"], values["failed_logins"] + 1, now)
            return None
        return self._start(values, password, remote, now)

    def _failed(self, user_id: int, failures: int, now: datetime) -> None:
        locked = now + self._lockout if failures >= self._max_failures else None
        with write(self._engine) as conn:
            conn.execute(update(console_users).where(console_users.c.id == user_id).values(
                failed_logins=0 if locked else failures, locked_until=locked))

    def _start(self, values: Any, password: str, remote: str, now: datetime) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        changes: dict[str, Any] = {"failed_logins": 0, "locked_until": None,
                                   "last_login_at": now}
        if _hasher.check_needs_rehash(values["password_hash"]):
            changes["password_hash"] = _hasher.hash(password)
        with write(self._engine) as conn:
            conn.execute(update(console_users)
                         .where(console_users.c.id == values["id"]).values(**changes))
            conn.execute(insert(console_sessions).values(
                token_sha256=_sha(token), user_id=values["id"], csrf_token=csrf,
                created_at=now, last_seen_at=now, remote=remote[:64]))
        return Session(_user(values), csrf, now, token)

    def resume(self, token: str) -> Session | None:
        """The live session for a cookie value, touched; None when unknown or expired."""
        if not token or len(token) > 200:
            return None
        now = self._clock()
        sessions = console_sessions.c
        query = (select(console_users, sessions.csrf_token, sessions.last_seen_at,
                        sessions.created_at.label("session_created_at"))
                 .join(console_users, console_users.c.id == sessions.user_id)
                 .where(sessions.token_sha256 == _sha(token)))
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        values = row._mapping
        if (values["disabled_at"] is not None or now - values["last_seen_at"] > self._idle
                or now - values["session_created_at"] > self._lifetime):
            self.sign_out(token)
            return None
        if now - values["last_seen_at"] > _TOUCH_EVERY:
            with write(self._engine, durable=False) as conn:
                conn.execute(update(console_sessions)
                             .where(console_sessions.c.token_sha256 == _sha(token))
                             .values(last_seen_at=now))
        return Session(_user(values), values["csrf_token"], values["session_created_at"])

    def sign_out(self, token: str) -> None:
        with write(self._engine) as conn:
            conn.execute(delete(console_sessions)
                         .where(console_sessions.c.token_sha256 == _sha(token)))


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _user(row: Any) -> User:
    return User(
        id=row["id"], name=row["name"], role=Role(row["role"]), created_at=row["created_at"],
        disabled=row["disabled_at"] is not None, last_login_at=row["last_login_at"],
        locked_until=row["locked_until"], tenant=row["tenant"],
    )
