"""`mugaika token …` and `mugaika quarantine …`: the operator API's actions from a shell.

They open the same database as a running server (SQLite in WAL mode under `data_dir`, or
PostgreSQL), so they work next to it. The CLI acts as `cli:<unix user>` with the admin
role: whoever can run it on the host can read the database anyway. Every change is
audited exactly as through the API, and four eyes still apply (the CLI user cannot
approve a release they requested).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from gateway.custody.audit import Actor
from gateway.custody.digest import Digest
from gateway.custody.quarantine import QuarantineError, QuarantineService
from gateway.custody.stores import SqlStores, open_stores
from gateway.custody.tokens import Role, TokenError
from gateway.queue.envelope import Envelope
from gateway.queue.spool import RetryState, Spool
from gateway.settings import Settings, load_settings
from gateway.store.quarantine import STATUSES
from gateway.store.records import QuarantineQuery

EXIT_OK, EXIT_REFUSED = 0, 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `token` and `quarantine` to the `mugaika` command."""
    token = subparsers.add_parser("token").add_subparsers(
        dest="token_command", required=True)
    p = token.add_parser("create", help="create a token; it is printed once, as the last line")
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--name", help="unique label shown in the audit log (default: generated)")
    p.add_argument("--tenant", help="limit the token to this tenant's data (docs/tenants.md)")
    p.set_defaults(func=_run(_token_create))
    token.add_parser("list", help="list tokens (never their values)").set_defaults(
        func=_run(_token_list))
    p = token.add_parser("revoke", help="revoke a token by name")
    p.add_argument("name")
    p.set_defaults(func=_run(_token_revoke))

    q = subparsers.add_parser("quarantine").add_subparsers(
        dest="quarantine_command", required=True)
    p = q.add_parser("list", help="newest first")
    p.add_argument("--status", choices=STATUSES)
    for name in ("sender", "recipient", "subject", "reason"):
        p.add_argument(f"--{name}", help=f"part of the {name}")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run(_q_list))
    p = q.add_parser("show", help="one entry as JSON")
    p.add_argument("id")
    p.set_defaults(func=_run(_q_show))
    p = q.add_parser("release", help="request a release, or --approve a pending one")
    p.add_argument("id")
    p.add_argument("--reason", default="",
                   help="why it is requested; with --approve, kept with the decision")
    p.add_argument("--approve", action="store_true", help="approve the pending request")
    p.set_defaults(func=_run(_q_release))
    p = q.add_parser("deny", help="deny the pending release request, saying why")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="told to a recipient who asked by link")
    p.set_defaults(func=_run(_q_deny))
    p = q.add_parser("digest", help="send today's digest of held mail to its recipients")
    p.add_argument("--now", action="store_true",
                   help="do not wait for MUGAIKA_DIGEST_HOUR (still once a day)")
    p.set_defaults(func=_run(_q_digest))
    p = q.add_parser("delete", help="delete an entry and its originals")
    p.add_argument("id")
    p.set_defaults(func=_run(_q_delete))
    q.add_parser("purge", help="delete entries past retention").set_defaults(func=_run(_q_purge))


Handler = Callable[[argparse.Namespace, Settings, SqlStores], int]


def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Open settings and stores around `handler`; refusals print a reason, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        settings = load_settings(args.config)
        stores = open_stores(settings)
        try:
            return handler(args, settings, stores)
        except (QuarantineError, TokenError) as exc:
            print(f"mugaika: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            stores.close()

    return run


def known_tenant(settings: Settings, tenant: str | None) -> str | None:
    """`tenant` when the settings declare it; a scope for a tenant that does not exist
    would see nothing and look like a bug later."""
    if tenant is not None and tenant not in {t.id for t in settings.tenants}:
        raise TokenError(f"no tenant {tenant!r} in the configuration")
    return tenant


def cli_actor() -> Actor:
    return Actor(f"cli:{getpass.getuser()}", Role.ADMIN.value, "cli")


class HandOffSpool:
    """Spool writes from this separate process that a running server picks up.

    A running server enqueues incoming/ only at start-up and what its own ingress or API
    hands it, but it scans deferred/ every second. So the CLI parks its release there,
    due at once; if the server claims it first (a restart in between), that is fine too.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str:
        queue_id = self._spool.put(raw, envelope, queue_id)
        if self._spool.claim(queue_id) is not None:
            self._spool.defer(queue_id, RetryState(next_try=0.0))
        return queue_id

    def wake(self, queue_id: str) -> None:
        """Nothing to do: the running server's scan of deferred/ finds the entry."""


def _service(settings: Settings, stores: SqlStores) -> QuarantineService:
    return QuarantineService(stores, HandOffSpool(Spool(settings.spool_dir)), settings)


def _token_create(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    tenant = known_tenant(settings, args.tenant)
    info, token = stores.tokens.create(Role(args.role), args.name, tenant)
    stores.audit.record(cli_actor(), "token.create", info.name, role=info.role.value,
                        scope=tenant)
    print(f"created token {info.name!r} with role {info.role.value}; it is shown only once:")
    print(token)
    return EXIT_OK


def _token_list(_args: argparse.Namespace, _settings: Settings, stores: SqlStores) -> int:
    for t in stores.tokens.list():
        state = f"revoked {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "active"
        print(f"{t.name}\t{t.role.value}\t{t.tenant or '*'}\t{t.created_at:%Y-%m-%d %H:%M}\t"
              f"{state}")
    return EXIT_OK


def _token_revoke(args: argparse.Namespace, _settings: Settings, stores: SqlStores) -> int:
    if not stores.tokens.revoke(args.name):
        print(f"mugaika: no active token named {args.name!r}", file=sys.stderr)
        return EXIT_REFUSED
    stores.audit.record(cli_actor(), "token.revoke", args.name)
    return EXIT_OK


def _q_list(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    page = _service(settings, stores).search(QuarantineQuery(
        sender=args.sender, recipient=args.recipient, subject=args.subject,
        reason=args.reason, status=args.status, limit=args.limit,
    ))
    for e in page.items:
        if args.json:
            print(_json({k: v for k, v in asdict(e).items() if k not in ("parts", "requests")}))
        else:
            print(f"{e.id}\t{e.created_at:%Y-%m-%d %H:%M}\t{e.status}\t{e.mail_from}\t"
                  f"{','.join(e.reasons)}\t{e.subject or ''}")
    print(f"{len(page.items)} of {page.total} entries", file=sys.stderr)
    return EXIT_OK


def _q_show(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    print(_json(asdict(_service(settings, stores).show(args.id)), indent=2))
    return EXIT_OK


def _q_release(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    service = _service(settings, stores)
    if args.approve:
        outcome = service.approve(args.id, cli_actor(), args.reason or None)
    else:
        outcome = service.request_release(args.id, cli_actor(), args.reason)
    print(f"{outcome.entry_id}: {outcome.status}"
          + (f" (queued as {outcome.queue_id})" if outcome.queue_id else ""))
    return EXIT_OK


def _q_deny(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    outcome = _service(settings, stores).deny(args.id, cli_actor(), args.reason)
    print(f"{outcome.entry_id}: {outcome.status}")
    return EXIT_OK


def _q_digest(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    """Whether or not MUGAIKA_DIGEST_ENABLED is set: that switches the server's own
    schedule, and cron calling this is the other way to run it."""
    digest = Digest(stores, HandOffSpool(Spool(settings.spool_dir)), settings)
    outcome = digest.send(cli_actor(), ignore_hour=args.now)
    if outcome.queued is None:
        print(f"digest {outcome.day}: nothing sent ({outcome.reason})")
    else:
        print(f"digest {outcome.day}: {len(outcome.queued)} mails queued")
    return EXIT_OK


def _q_delete(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    _service(settings, stores).delete(args.id, cli_actor())
    return EXIT_OK


def _q_purge(_args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    gone = _service(settings, stores).purge(cli_actor())
    print(f"purged {len(gone)} expired entries")
    return EXIT_OK


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, indent=indent)
