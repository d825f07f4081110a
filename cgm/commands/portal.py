"""``cgm portal``: the consumption portal's inventory.

    cgm portal import units.yaml --user ADMIN [--password-env VAR]
    cgm portal list [--json]
    cgm portal change-owner --company C --client-number N --to UNIT --reason "..." --user ADMIN
    cgm portal add-unit-user NAME --unit CODE --user ADMIN   (password from --new-password-env)
    cgm portal push --day 2026-11-20 [--meter N]; cgm portal deliveries --day 2026-11-20

Writes authenticate as a level-2 user of the service, as ``cgm vee edit`` does. An import is
all or nothing and reports every problem at its ``file:line``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import psycopg

from cgm.cli import CommandError, secret_from_env
from cgm.commands.cliauth import add_auth_args, login_async
from cgm.config import get_settings
from cgm.db import current_url
from cgm.security.users import User


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("portal", help="consumption portal: buildings, units, shared meters")
    psub = p.add_subparsers(dest="portal_command", required=True, metavar="ACTION")

    def writer(name: str, help_: str) -> argparse.ArgumentParser:
        w = psub.add_parser(name, help=help_)
        add_auth_args(w)
        return w

    imp = writer("import", "load a portal inventory YAML (all or nothing)")
    imp.add_argument("file")
    imp.set_defaults(func=_import)

    lst = psub.add_parser("list", help="units with their buildings and meters")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)

    own = writer("change-owner", "give a client number and its meters to another unit")
    own.add_argument("--company", required=True)
    own.add_argument("--client-number", required=True)
    own.add_argument("--to", required=True, metavar="UNIT")
    own.add_argument("--reason", required=True)
    own.set_defaults(func=_change_owner)

    push = psub.add_parser("push", help="push a day's validated consumption to the portal")
    push.add_argument("--day", required=True, type=date.fromisoformat, help="local day")
    push.add_argument("--meter", help="only this portal meter")
    push.set_defaults(func=_push)

    dl = psub.add_parser("deliveries", help="what was pushed for a day and what the portal said")
    dl.add_argument("--day", required=True, type=date.fromisoformat)
    dl.add_argument("--meter")
    dl.set_defaults(func=_deliveries)

    st = psub.add_parser("status", help="units reporting or not, totals, the indicator set")
    st.add_argument("--start", required=True, type=date.fromisoformat, help="first local day")
    st.add_argument("--end", required=True, type=date.fromisoformat, help="last local day")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    uu = writer("add-unit-user", "a level-1 user that reads for one unit only (the portal)")
    uu.add_argument("name")
    uu.add_argument("--unit", required=True)
    uu.add_argument("--new-password-env", required=True, metavar="VAR")
    uu.set_defaults(func=_add_unit_user)


def _as_level2(
    args: argparse.Namespace, work: Callable[[psycopg.AsyncConnection, User], Awaitable[Any]]
) -> Any:
    """Run ``work`` as the authenticated level-2 user (the CLI's one login helper)."""
    url = current_url(get_settings())

    async def go() -> Any:
        user = await login_async(url, args, level=2)
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await work(conn, user)

    return asyncio.run(go())


def _import(args: argparse.Namespace) -> int:
    from cgm.portal import loader, store
    from cgm.registry.loader import InventoryError

    try:
        inv = loader.load(args.file)
        res = _as_level2(
            args, lambda conn, u: store.import_inventory(conn, inv, f"cli:{u.username}")
        )
    except InventoryError as exc:
        raise CommandError(f"nothing imported:\n{exc}") from None
    print(
        f"{res.units} units ({res.buildings} new buildings), {res.client_numbers} client "
        f"numbers, {res.meters} meters, {res.associations} associations"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from cgm.portal import store

    url = current_url(get_settings())

    async def go() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await store.list_units(conn)

    units = asyncio.run(go())
    if args.json:
        print(json.dumps(units, indent=2, default=str))
        return 0
    for u in units:
        print(
            f"{u['code']}  {u['institution']} / {u['service']} / {u['name']}  "
            f"{u['street']} {u['street_number']}, {u['commune']}, {u['region']}  "
            f"meters owned {u['meters_owned']}, associated {u['meters_associated']}"
        )
    return 0


def _change_owner(args: argparse.Namespace) -> int:
    from cgm.portal import store

    try:
        _as_level2(
            args,
            lambda conn, u: store.change_owner(
                conn, args.company, args.client_number, args.to,
                actor=f"cli:{u.username}", level=u.level, reason=args.reason,
            ),
        )  # fmt: skip
    except store.PortalError as exc:
        raise CommandError(str(exc)) from None
    print(f"{args.company} {args.client_number}: owner is now {args.to}")
    return 0


def _add_unit_user(args: argparse.Namespace) -> int:
    from cgm.portal import access
    from cgm.portal.store import PortalError
    from cgm.security.users import UserError

    new_password = secret_from_env(args.new_password_env, "--new-password-env")
    try:
        _as_level2(
            args,
            lambda conn, u: access.add_unit_user(
                conn, args.name, new_password, args.unit, actor=f"cli:{u.username}"
            ),
        )
    except (PortalError, UserError) as exc:
        raise CommandError(str(exc)) from None
    print(f"user {args.name} reads for unit {args.unit}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from cgm.portal.push import push_day

    settings = get_settings()
    if not settings.portal_push_url:
        raise CommandError("set CGM_PORTAL_PUSH_URL (the portal's endpoint for daily pushes)")
    token = settings.portal_push_token.get_secret_value() if settings.portal_push_token else None

    async def go() -> Any:
        async with await psycopg.AsyncConnection.connect(current_url(settings)) as conn:
            return await push_day(
                conn, settings.portal_push_url, args.day, meter=args.meter,
                attempts=settings.portal_push_attempts,
                timeout_s=settings.portal_push_timeout_s, token=token,
            )  # fmt: skip

    s = asyncio.run(go())
    print(
        f"portal push {s.day}: {s.delivered} delivered, {s.unchanged} unchanged, "
        f"{len(s.incomplete)} incomplete, {len(s.failed)} not delivered (retried next run), "
        f"{len(s.rejected)} rejected"
    )
    for what, meters in (("incomplete", s.incomplete), ("not delivered", s.failed),
                         ("rejected", s.rejected)):  # fmt: skip
        if meters:
            print(f"  {what}: {', '.join(meters)}")
    return 1 if s.failed or s.rejected else 0


def _deliveries(args: argparse.Namespace) -> int:
    from cgm.portal.push import delivery_log

    async def go() -> Any:
        async with await psycopg.AsyncConnection.connect(current_url(get_settings())) as conn:
            return await delivery_log(conn, args.day, args.meter)

    for e in asyncio.run(go()):
        print(
            f"{e['meter']} v{e['version']} {e['state']} attempts {e['attempts']} "
            f"last HTTP {e['last_status']} {e['last_error'] or ''} key {e['idempotency_key']}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    from cgm.portal.status import status_report

    async def go() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(current_url(get_settings())) as conn:
            return await status_report(conn, args.start, args.end)

    r = asyncio.run(go())
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    t = r["totals"]
    print(
        f"{r['first_day']}..{r['last_day']}: {t['units_loaded']} units loaded, "
        f"{t['units_reporting']} reporting, {t['units_not_reporting']} not reporting "
        f"({t['not_reporting_justified']} justified), indicator set {t['indicator_set']}"
    )
    for n in r["not_reporting"]:
        print(f"  {n['unit']} {n['institution']} / {n['service']}: {n['will_report']}")
    return 0
