"""`mugaika user create|list|disable|enable|passwd`: the console's local accounts.

A password is asked twice on the terminal, or read as one line from stdin when stdin is
not a terminal (for provisioning scripts: `printf '%s\\n' "$PW" | mugaika user create …`),
never taken from the command line, where `ps` and the shell history would show it.
Every change is audited as `cli:<unix user>`.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway.admin_cli import EXIT_OK, EXIT_REFUSED, _run, cli_actor, known_tenant
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Role, TokenError
from gateway.custody.users import UserError
from gateway.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = subparsers.add_parser("user").add_subparsers(dest="user_command", required=True)
    p = user.add_parser("create", help="create an account; the password is asked for")
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--tenant", help="limit the account to this tenant's data (docs/tenants.md)")
    p.add_argument("name")
    p.set_defaults(func=_run(_create))
    user.add_parser("list", help="accounts, roles and states").set_defaults(func=_run(_list))
    for verb, helptext in (("disable", "disable an account and end its sessions"),
                           ("enable", "enable a disabled account"),
                           ("passwd", "set a new password (unlocks, ends sessions)")):
        p = user.add_parser(verb, help=helptext)
        p.add_argument("name")
        p.set_defaults(func=_run({"disable": _disable, "enable": _enable,
                                  "passwd": _passwd}[verb]))


def read_password() -> str:
    """From the terminal (asked twice) or one line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the passwords differ")
    return first


def _create(args: argparse.Namespace, settings: Settings, stores: SqlStores) -> int:
    try:
        tenant = known_tenant(settings, args.tenant)
        user = stores.users.create(args.name, Role(args.role), read_password(), tenant)
    except (UserError, TokenError) as exc:
        print(f"mugaika: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    stores.audit.record(cli_actor(), "user.create", user.name, role=user.role.value,
                        scope=tenant)
    print(f"created user {user.name!r} with role {user.role.value}")
    return EXIT_OK


def _list(_args: argparse.Namespace, _settings: Settings, stores: SqlStores) -> int:
    for u in stores.users.list():
        state = "disabled" if u.disabled else "active"
        last = f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "-"
        print(f"{u.name}\t{u.role.value}\t{u.tenant or '*'}\t{state}\tlast sign-in {last}")
    return EXIT_OK


def _switch(args: argparse.Namespace, stores: SqlStores, disabled: bool) -> int:
    if not stores.users.set_disabled(args.name, disabled):
        print(f"mugaika: no user named {args.name!r}", file=sys.stderr)
        return EXIT_REFUSED
    stores.audit.record(cli_actor(), "user.disable" if disabled else "user.enable", args.name)
    return EXIT_OK


def _disable(args: argparse.Namespace, _settings: Settings, stores: SqlStores) -> int:
    return _switch(args, stores, True)


def _enable(args: argparse.Namespace, _settings: Settings, stores: SqlStores) -> int:
    return _switch(args, stores, False)


def _passwd(args: argparse.Namespace, _settings: Settings, stores: SqlStores) -> int:
    try:
        changed = stores.users.set_password(args.name, read_password())
    except UserError as exc:
        print(f"mugaika: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not changed:
        print(f"mugaika: no user named {args.name!r}", file=sys.stderr)
        return EXIT_REFUSED
    stores.audit.record(cli_actor(), "user.passwd", args.name)
    return EXIT_OK
