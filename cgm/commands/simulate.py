"""``cgm simulate``: run a simulated fleet and write the inventory that describes it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import yaml

from cgm.cli import CommandError
from cgm.config import get_settings
from cgm.service import mqtt_address
from simulators.fleet import build_fleet, inventory, parse_mix, start_fleet

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run simulated frontiers (principal + backup meters)")
    p.add_argument("--frontiers", type=int, required=True, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default="dlms=.5,modbus=.3,mqtt=.2", help="protocol shares")
    p.add_argument("--out", type=Path, default=Path("fleet.yaml"), help="inventory to write")
    p.add_argument("--host", default="127.0.0.1", help="address the simulators listen on")
    p.add_argument("--per-port", type=int, default=1, help="meters sharing one port")
    p.add_argument(
        "--dlms-variants",
        action="store_true",
        help="DLMS meters cycle through field layouts: cumulative-register profiles, tariff "
        "registers, logical device name only, 15-minute periods",
    )
    p.add_argument(
        "--dlms-access",
        choices=("lls", "mixed"),
        default="lls",
        help="mixed: DLMS meters in turn LLS, HLS, HLS-GMAC and HLS over HDLC at level 2",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds every meter waits before each answer (a GPRS/4G round trip)",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="up to this many seconds more per answer, at random (--latency .3 --jitter 1.7: "
        "0.3-2 s round trips)",
    )
    p.add_argument(
        "--mqtt-url", help="broker for MQTT meters (default: CGM_MQTT_URL or an in-process broker)"
    )
    p.set_defaults(func=_simulate)


async def run_simulation(args: argparse.Namespace, stop: asyncio.Event) -> None:
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    fleet = build_fleet(args.frontiers, seed=args.seed, mix=mix, dlms_variants=args.dlms_variants)
    latency, jitter = getattr(args, "latency", 0.0), getattr(args, "jitter", 0.0)
    if latency < 0 or jitter < 0:
        raise CommandError("--latency and --jitter must be 0 or more seconds")
    for _, meter in fleet.meters():
        meter.faults.latency, meter.faults.jitter = latency, jitter
    broker = None
    url = args.mqtt_url or get_settings().mqtt_url
    mqtt = None
    if any(f.protocol == "mqtt" for f in fleet.frontiers):
        if url:
            try:
                mqtt = mqtt_address(url)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        else:
            from cgm.embedded.broker import Broker

            broker = Broker(args.host, 0)
            mqtt = await broker.start()
            log.info("in-process MQTT 5 broker on %s:%d", *mqtt)
    try:
        await start_fleet(
            fleet,
            host=args.host,
            mqtt=mqtt,
            per_port=args.per_port,
            dlms_access=getattr(args, "dlms_access", "lls"),
        )
        args.out.write_text(
            "# Simulated fleet written by cgm simulate; load with cgm registry import\n"
            + yaml.safe_dump(inventory(fleet), sort_keys=False)
        )
        counts = {p: sum(f.protocol == p for f in fleet.frontiers) for p in mix}
        log.info(
            "%d frontiers (%s), %d meters; inventory in %s; stop with Ctrl-C",
            len(fleet.frontiers),
            ", ".join(f"{k} {v}" for k, v in counts.items()),
            2 * len(fleet.frontiers),
            args.out,
        )
        await stop.wait()
    finally:
        await fleet.stop()
        if broker is not None:
            await broker.stop()


def _simulate(args: argparse.Namespace) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_simulation(args, stop)

    asyncio.run(main())
    return 0
