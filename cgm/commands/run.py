"""``cgm run``: the main job — collect every hour, on the configured or embedded services."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import psycopg
import yaml

from cgm import registry
from cgm.api import install as install_api
from cgm.cli import CommandError
from cgm.collection import push, schedule
from cgm.collection.engine import CycleSummary
from cgm.config import Settings, get_settings
from cgm.portal.schedule import register_jobs as register_portal_jobs
from cgm.reporting.schedule import register_jobs as register_asic_jobs
from cgm.security import secret_box
from cgm.security.secrets import load_key
from cgm.service import Service
from cgm.vee.config import vee_config
from cgm.vee.worker import VeeWorker, log_summary

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the CGM service until stopped")
    run.add_argument(
        "--simulate",
        type=count,
        default=0,
        metavar="N",
        help="demo: also run N simulated frontiers in-process and register them",
    )
    run.add_argument(
        "--broker-accounts",
        metavar="FILE",
        help="with --simulate: write the simulated fleet's MQTT broker accounts to FILE as "
        "user:password lines (hash them with: mosquitto_passwd -U FILE) and exit",
    )
    run.set_defaults(func=_run)


def count(text: str) -> int:
    """A whole number ≥ 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _import_fleet(service: Service, inventory: dict) -> None:
    path = service.settings.data_dir / "simulated-fleet.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)  # absent when the database is external
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    with psycopg.connect(service.db_url) as conn:
        report = registry.import_inventory(
            conn, registry.load(path), secret_box(service.settings), actor="cgm run --simulate"
        )
    log.info("simulated fleet registered from %s (%d meters new)", path, report.meters_inserted)


def demo_portal_inventory(frontiers: list[str]) -> dict:
    """The demo's consumption portal: a unit owning a client number whose meters read the
    first simulated frontiers, and a second unit associated with the first (shared) meter."""
    meters = [
        {"number": f"SIM-{code}", "smart": True, "shared": i == 0, "invoice_access": True,
         "cgm": {"frontier": code, "channel": "active_import"}}
        for i, code in enumerate(frontiers[:2])
    ]  # fmt: skip

    def unit(code: str, street: str, **more: object) -> dict:
        return {
            "code": code,
            "building": {"region": "Metropolitana de Santiago", "province": "Santiago",
                         "commune": "Santiago", "street": street, "number": "1"},
            "institution": "Demo institution", "service": "Demo service",
            "name": f"Demo unit {code}", "use_type": "office", "floors": "1",
            "surface_m2": 500, "property_type": "own", "roll_numbers": ["100-1"],
            "staff_count": 10, "reports_pmg": True, "invoice": {"access": "yes"},
            "energy_sources": {"electricity": True}, **more,
        }  # fmt: skip

    owner = unit("SIM-OWNER", "Demo street", client_numbers=[
        {"company": "Demo Distribution", "number": "SIM-1", "tariff_type": "BT-1",
         "meters": meters}])  # fmt: skip
    shared = unit("SIM-SHARED", "Demo street", associate=[
        {"company": "Demo Distribution", "number": "SIM-1",
         "meters": [meters[0]["number"]]}])  # fmt: skip
    return {"units": [owner, shared]}


async def _import_demo_portal(service: Service, frontiers: list[str]) -> None:
    from cgm.portal import loader, store

    path = service.settings.data_dir / "simulated-portal.yaml"
    path.write_text(yaml.safe_dump(demo_portal_inventory(frontiers), sort_keys=False))
    async with await psycopg.AsyncConnection.connect(service.db_url) as conn:
        await store.import_inventory(conn, loader.load(path), "cgm run --simulate")
        await conn.commit()
    log.info("simulated portal inventory registered from %s", path)


def _accounts_file(path: Path, accounts: dict[str, str]) -> None:
    """``user:password`` lines, readable by the owner only (mosquitto_passwd -U hashes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{user}:{pw}\n" for user, pw in accounts.items())
    os.chmod(path, 0o600)


def _simulated_fleet(n: int, settings: Settings) -> tuple[Any, bytes]:
    """The demo fleet and the private seed of its broker passwords (from the secret key)."""
    from simulators.fleet import build_fleet

    return build_fleet(n, seed=0), load_key(settings)


def build_service(simulate: int = 0) -> Service:
    settings = get_settings()
    if simulate:
        # The demo pushes to a portal simulator, never to a configured portal, and often
        # enough to watch the pushes land (a copy: the cached settings stay as configured).
        from simulators.portal import PortalSimulator

        portal = PortalSimulator(0)
        settings = settings.model_copy(
            update={
                "portal_push_url": portal.url,
                "portal_push_token": None,
                "portal_push_interval_s": settings.portal_push_interval_s or 60.0,
            }
        )
    service = Service(settings)
    job = schedule.install(service)
    push.install(service, job)  # MQTT meters' pushed entries, stored as they arrive

    try:
        vee = vee_config(service.settings.vee)
    except ValueError as exc:  # a bad [vee] setting stops the start, with one clear line
        raise CommandError(f"[vee] settings: {exc}") from None

    worker = VeeWorker(
        "",
        vee,
        priority=service.settings.vee_priority,
        reserve_cpus=service.settings.vee_reserve_cpus,
    )

    async def start_vee(svc: Service) -> None:
        worker.db_url = svc.db_url
        await worker.start()

    async def settle(summary: CycleSummary) -> None:
        # Validation follows collection: settle the days this cycle read (idempotent), in
        # the VEE process (cgm.vee.worker), so the loop goes on serving the API and
        # collecting; runs queue one after another; the outcome goes to the log.
        worker.after_collection(summary.cycle).add_done_callback(log_summary)

    async def stop_vee(svc: Service) -> None:
        await worker.stop()

    service.on_start.append(start_vee)
    service.on_stop.append(stop_vee)
    job.after_cycle.append(settle)
    service.vee = worker  # type: ignore[attr-defined]
    register_asic_jobs(service)  # scheduled only when CGM_ASIC_BASE_URL is set
    if simulate:
        service.portal_simulator = portal  # type: ignore[attr-defined]
    service.portal_push = register_portal_jobs(service)  # type: ignore[attr-defined]
    install_api(service)  # HTTP API on api_host:api_port (0: none)
    if simulate:
        from simulators.fleet import broker_accounts, inventory, start_fleet

        fleet, seed = _simulated_fleet(simulate, service.settings)

        async def start(svc: Service) -> None:
            portal.__enter__()
            log.info("portal simulator receiving pushes at %s", portal.url)
            # The simulated MQTT meters and the CGM log in with accounts of their own, as
            # the shipped Mosquitto (no anonymous access, per-meter ACL) requires.
            path = svc.settings.data_dir / "simulated-broker-accounts"
            _accounts_file(path, broker_accounts(fleet, seed))
            if svc.settings.mqtt_url:
                log.info(
                    "simulated MQTT meters log in with the accounts in %s "
                    "(hash them for Mosquitto with: mosquitto_passwd -U FILE)",
                    path,
                )
            await start_fleet(fleet, mqtt=svc.mqtt, broker_seed=seed)
            await asyncio.to_thread(_import_fleet, svc, inventory(fleet))
            await _import_demo_portal(svc, [f.code for f in fleet.frontiers])

        async def stop(svc: Service) -> None:
            await fleet.stop()
            portal.__exit__()

        # Before the collection job starts, so the first cycle finds the fleet.
        service.on_start.insert(0, start)
        service.on_stop.append(stop)
    service.collection = job  # type: ignore[attr-defined]
    return service


def _run(args: argparse.Namespace) -> int:
    if args.broker_accounts:
        if not args.simulate:
            raise CommandError("--broker-accounts needs --simulate N")
        from simulators.fleet import broker_accounts

        fleet, seed = _simulated_fleet(args.simulate, get_settings())
        accounts = broker_accounts(fleet, seed)
        _accounts_file(Path(args.broker_accounts), accounts)
        print(
            f"wrote {len(accounts)} broker accounts to {args.broker_accounts}; "
            f"hash them with: mosquitto_passwd -U {args.broker_accounts}"
        )
        return 0
    asyncio.run(build_service(args.simulate).run())
    return 0
