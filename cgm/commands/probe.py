"""``cgm probe``: interrogate one meter (real or simulated) and print what it says.

For commissioning and troubleshooting: identity, clock offset against the CGM's clock,
profile configuration, the profile for a range and the cumulative registers. Read-only:
probe never writes to the meter, whatever the credentials' level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from cgm.cli import CommandError, secret_from_env
from cgm.localtime import COLOMBIA
from drivers import (
    PROTOCOLS,
    AccessLevel,
    Credentials,
    DriverError,
    Endpoint,
    close_shared,
    get_driver,
)
from drivers.base import NotSupported


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="interrogate one meter and print what it answers")
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--level", type=int, choices=(1, 2), default=1, help="access level")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret", help="meter secret (visible in shell history; see --secret-env)"
    )
    secret.add_argument("--secret-env", metavar="VAR", help="read the meter secret from $VAR")
    p.add_argument("--client", help="protocol client id (DLMS client SAP, MQTT user)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="protocol parameter, repeatable (e.g. map=sim-4q, device_id=1, serial=M1)",
    )
    p.add_argument("--from", dest="start", type=_instant, help="profile start (ISO 8601)")
    p.add_argument("--to", dest="end", type=_instant, help="profile end (ISO 8601)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_probe)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return int(text)


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=COLOMBIA)


def _params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--param needs KEY=VALUE, got {pair!r}")
        out[key] = int(value) if value.isdigit() else value
    return out


def _secret(args: argparse.Namespace) -> str:
    if args.secret_env:
        return secret_from_env(args.secret_env, "--secret-env")
    return args.secret or ""


async def _probe_and_close(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return await probe(args)
    finally:
        await close_shared()


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    driver = get_driver(args.protocol)
    credentials = Credentials(AccessLevel(args.level), _secret(args), args.client)
    end = args.end or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = args.start or end - timedelta(days=1)
    if start >= end:
        raise CommandError("--from must be before --to")
    out: dict[str, Any] = {"endpoint": f"{args.host}:{args.port}", "protocol": args.protocol}
    params = _params(args.param)
    if args.protocol == "dlms" and "hls-gmac" in (
        str(params.get("level1_auth", "")).lower(),
        str(params.get("level2_auth", "")).lower(),
    ):
        # HLS-GMAC counters must never repeat, also across probes and collectors: they come
        # from the database, like the collector's.
        from cgm.config import get_settings
        from cgm.db import current_url
        from cgm.security.counters import PgInvocationCounterStore

        store = PgInvocationCounterStore(current_url(get_settings()))
        driver.counter_store = store  # type: ignore[attr-defined]
        try:
            return await _interrogate(driver, args, credentials, params, start, end, out)
        finally:
            await store.close()
    return await _interrogate(driver, args, credentials, params, start, end, out)


async def _interrogate(
    driver: Any,
    args: argparse.Namespace,
    credentials: Credentials,
    params: dict[str, Any],
    start: datetime,
    end: datetime,
    out: dict[str, Any],
) -> dict[str, Any]:
    session = await driver.connect(
        Endpoint(args.host, args.port), credentials, params, timeout=args.timeout
    )
    async with session:
        out["identity"] = asdict(await session.identify())
        clock = await session.read_clock()
        out["clock"] = {
            "meter_time": clock.meter_time.isoformat(),
            "cgm_time": (clock.sent_at + (clock.received_at - clock.sent_at) / 2).isoformat(),
            "offset_s": round(clock.offset, 3),
            "round_trip_s": round(clock.round_trip, 3),
        }
        try:
            config = await session.read_profile_config()
        except NotSupported:
            out["profile_config"] = None
            out["profile"] = None
        else:
            out["profile_config"] = {
                "capture_period_s": int(config.capture_period.total_seconds()),
                "depth": config.depth,
                "memory_days": round(config.memory_span.total_seconds() / 86400, 1),
                "channels": [str(c) for c in config.channels],
                "columns": [
                    {
                        "source": c.source,
                        "use": c.use,
                        "channel": None if c.channel is None else str(c.channel),
                        "scaler": c.scaler,
                        "unit": c.unit,
                        "note": c.note,
                    }
                    for c in config.columns
                ],
            }
            entries = await session.read_profile(start, end)
            out["profile"] = [
                {
                    "start": e.start.isoformat(),
                    "end": e.end.isoformat(),
                    "status": e.status,
                    **{str(ch): v for ch, v in e.values.items()},
                }
                for e in entries
            ]
        out["registers"] = [
            {"channel": str(r.channel), "value": r.value, "unit": r.unit}
            for r in await session.read_registers()
        ]
        out["events"] = [{"kind": e.kind, "detail": e.detail} for e in session.events]
    return out


def _print_text(out: dict[str, Any]) -> None:
    ident = out["identity"]
    print(
        f"meter     {ident['serial']}  {ident['manufacturer']} {ident['model']} "
        f"fw {ident['firmware']}  ({out['protocol']} at {out['endpoint']})"
    )
    c = out["clock"]
    print(
        f"clock     {c['meter_time']}  offset {c['offset_s']:+.3f} s  "
        f"(round trip {c['round_trip_s']:.3f} s)"
    )
    cfg = out["profile_config"]
    if cfg is None:
        print("profile   none (intervals come from register snapshots)")
    else:
        print(
            f"profile   every {cfg['capture_period_s']} s, {cfg['depth']} entries "
            f"({cfg['memory_days']} days)"
        )
        for column in cfg.get("columns", []):
            print(f"  column  {_column_text(column)}")
        for e in out["profile"]:
            values = "  ".join(
                f"{k}={v:.3f}" for k, v in e.items() if k not in ("start", "end", "status")
            )
            flag = f"  status=0x{e['status']:02x}" if e["status"] else ""
            print(f"  {e['start']}  {values}{flag}")
    for r in out["registers"]:
        print(f"register  {r['channel']:<16} {r['value']:>16.3f} {r['unit']}")
    for e in out.get("events", []):
        print(f"handled   {e['kind']}: {e['detail']}")


_USE = {"cumulative": "cumulative → differenced", "interval": "interval"}


def _column_text(c: dict[str, Any]) -> str:
    """One profile column: where it is, its scale, and what the CGM does with it."""
    scale = f"scaler {c['scaler']} {c['unit']}" if c["scaler"] is not None else ""
    use = _USE.get(c["use"], c["use"])
    if c["channel"]:
        use += f" → {c['channel']}"
    note = f"  ({c['note']})" if c["note"] else ""
    return f"{c['source']:<34} {scale:<16} {use}{note}"


def _probe(args: argparse.Namespace) -> int:
    try:
        out = asyncio.run(_probe_and_close(args))
    except DriverError as exc:
        raise CommandError(f"{exc.reason}: {exc}") from exc
    except ValueError as exc:  # the driver refused a parameter (e.g. no map, no serial)
        raise CommandError(f"{exc} (give it with --param KEY=VALUE)") from None
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_text(out)
    return 0
