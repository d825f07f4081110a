"""``cgm hoja add|show|export``: the hoja de vida of a frontier (art. 9.1.1.29).

``add``, ``correct`` and ``void`` authenticate a level-2 cgm user; the entry records
``cli:<user>``. Entries are never changed: ``correct`` and ``void`` add an entry that
references the original, which stays in the record. Data is given as
``--set key=value`` pairs (numbers are read as numbers) or ``--data JSON``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Any

import psycopg

from cgm import hoja_de_vida as hv
from cgm.cli import CommandError
from cgm.commands.cliauth import add_auth_args, login_async
from cgm.config import get_settings
from cgm.db import current_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hoja", help="the hoja de vida of a frontier (art. 9.1.1.29)")
    hsub = p.add_subparsers(dest="hoja_command", metavar="ACTION", required=True)
    a = hsub.add_parser("add", help="add a dated entry (level 2)")
    a.add_argument("section", choices=list(hv.SECTIONS))
    a.add_argument("--frontier", required=True, metavar="CODE")
    a.add_argument("--date", required=True, type=date.fromisoformat, help="date of the fact")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--data", help="the entry as a JSON object")
    add_auth_args(a)
    a.set_defaults(func=_add)
    for action, text in (("correct", "correct an entry by a new one that references it"),
                         ("void", "void an entry by a new one that references it")):
        c = hsub.add_parser(action, help=f"{text} (level 2; the original stays)")
        c.add_argument("entry", type=int, help="the id of the entry (cgm hoja show)")
        c.add_argument("--frontier", required=True, metavar="CODE")
        c.add_argument("--reason", required=True, help="why, kept with the new entry")
        if action == "correct":
            c.add_argument("--date", type=date.fromisoformat,
                           help="date of the fact (default: the original's)")
            c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
            c.add_argument("--data", help="the corrected entry as a JSON object (whole)")
        add_auth_args(c)
        c.set_defaults(func=_correct, action=action)
    s = hsub.add_parser("show", help="the whole record (JSON)")
    s.add_argument("--frontier", required=True, metavar="CODE")
    s.add_argument("--section", choices=[*hv.SECTIONS, "level2_log", "maintenance_due"])
    s.set_defaults(func=_show)
    e = hsub.add_parser("export", help="write the record as JSON and/or PDF")
    e.add_argument("--frontier", required=True, metavar="CODE")
    e.add_argument("--json", type=Path, dest="json_out")
    e.add_argument("--pdf", type=Path, dest="pdf_out")
    e.set_defaults(func=_export)


def _value(text: str) -> Any:
    try:
        return json.loads(text) if text[:1] in "-0123456789[{" or text in ("true", "false") \
            else text
    except ValueError:
        return text


def _data(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if args.data:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise CommandError(f"--data is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CommandError("--data must be a JSON object")
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--set {pair!r}: expected KEY=VALUE")
        data[key] = _value(value)
    return data


def _add(args: argparse.Namespace) -> int:
    data = _data(args)
    url = current_url(get_settings())

    async def go() -> int:
        actor = f"cli:{(await login_async(url, args)).username}"
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await hv.add_entry(conn, frontier=args.frontier, section=args.section,
                                      entry_date=args.date, data=data, actor=actor)  # fmt: skip

    try:
        eid = asyncio.run(go())
    except hv.EntryError as exc:
        raise CommandError(str(exc)) from None
    print(f"{args.frontier}: {args.section} entry {eid} added")
    return 0


def _correct(args: argparse.Namespace) -> int:
    data = _data(args) if args.action == "correct" else None
    url = current_url(get_settings())

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            actor = f"cli:{(await login_async(url, args)).username}"
            return await hv.correct_entry(
                conn, frontier=args.frontier, entry_id=args.entry, action=args.action,
                reason=args.reason, actor=actor, data=data,
                entry_date=getattr(args, "date", None),
            )  # fmt: skip

    try:
        eid = asyncio.run(go())
    except hv.EntryError as exc:
        raise CommandError(str(exc)) from None
    done = "corrected" if args.action == "correct" else "voided"
    print(f"{args.frontier}: entry {args.entry} {done} by entry {eid}")
    return 0


def _record(code: str) -> dict[str, Any]:
    url = current_url(get_settings())

    async def go() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await hv.record(conn, code)

    try:
        return asyncio.run(go())
    except hv.EntryError as exc:
        raise CommandError(str(exc)) from None


def _show(args: argparse.Namespace) -> int:
    rec = _record(args.frontier)
    print(json.dumps(rec[args.section] if args.section else rec, ensure_ascii=False, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    if not (args.json_out or args.pdf_out):
        raise CommandError("give --json FILE and/or --pdf FILE")
    rec = _record(args.frontier)
    if args.json_out:
        args.json_out.write_text(json.dumps(rec, ensure_ascii=False, indent=2))
        print(f"{args.json_out} written")
    if args.pdf_out:
        from cgm.hoja_pdf import render

        args.pdf_out.write_bytes(render(rec))
        print(f"{args.pdf_out} written")
    return 0
