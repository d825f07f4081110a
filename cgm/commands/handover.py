"""``cgm handover``: everything an incoming frontier representative needs, in one file.

    cgm handover export --recipient-key incoming.pub.pem --out handover.json --user ana
    cgm handover decrypt handover.json --key incoming.key.pem [--out credentials.json]

The format is described in :mod:`cgm.security.handover`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import psycopg

from cgm.cli import CommandError, secret_from_env
from cgm.commands.cliauth import add_auth_args, login
from cgm.config import get_settings
from cgm.db import current_url
from cgm.security import SecretKeyError, secret_box
from cgm.security.handover import HandoverError, build, decrypt, load_public_key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("handover", help="change of representative: users, credentials, level-2 log")
    hsub = p.add_subparsers(dest="handover_command", required=True, metavar="ACTION")
    e = hsub.add_parser("export", help="write the handover file (level 2)")
    e.add_argument("--recipient-key", required=True, type=Path, help="incoming RSA public PEM")
    e.add_argument("--out", required=True, type=Path, help="file to write (mode 0600)")
    add_auth_args(e)
    e.set_defaults(func=_export)
    d = hsub.add_parser("decrypt", help="print the credentials of a handover file")
    d.add_argument("file", type=Path)
    d.add_argument("--key", required=True, type=Path, help="the recipient's RSA private PEM")
    d.add_argument("--key-password-env", metavar="VAR", help="$VAR holds the key's password")
    d.add_argument("--out", type=Path, help="write there (mode 0600) instead of stdout")
    d.set_defaults(func=_decrypt)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _export(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        recipient = load_public_key(args.recipient_key.read_bytes())
        box = secret_box(settings)
    except (OSError, HandoverError, SecretKeyError) as exc:
        raise CommandError(str(exc)) from None
    url = current_url(settings)
    user = login(url, args)
    with psycopg.connect(url) as conn:
        doc = build(conn, box, recipient, actor=f"cli:{user.username}", cgm_code=settings.cgm_code)
        _write_private(args.out, json.dumps(doc, indent=1, default=str))
    n = len(json.loads(args.out.read_text())["meter_access"])
    print(
        f"{args.out}: {len(doc['users'])} users, {n} meters, {len(doc['level2_log'])} level-2 "
        f"log entries; credentials for key {doc['credentials']['recipient_sha256'][:16]}…"
    )
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    password = (
        secret_from_env(args.key_password_env, "--key-password-env").encode()
        if args.key_password_env
        else None
    )
    try:
        doc = json.loads(args.file.read_text(encoding="utf-8"))
        creds = decrypt(doc, args.key.read_bytes(), password)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    text = json.dumps(creds, indent=1)
    if args.out:
        _write_private(args.out, text)
        print(f"{args.out}: {len(creds)} credentials", file=sys.stderr)
    else:
        print(text)
    return 0
