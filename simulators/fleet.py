"""A simulated fleet: N frontiers, each with a principal and a backup meter, served over
DLMS, Modbus TCP and MQTT on local ports, plus the registry inventory that describes it.

Frontier sizes are drawn log-uniformly from 1 to 20,000 MWh-month so every Table 1 point type
appears. Each frontier gets the installation a utility would build for its size (voltage
level, VT and a standard CT rating that carries its peak current), and its meters see the
secondary side: primary mean power divided by CT × VT ratios. The CGM multiplies back, so a
frontier declared at N MWh a month settles to about N MWh a month, and no meter ever shows
more than its CT secondary and VT secondary allow. A principal and its backup share a load
seed, so they agree unless a divergence fault is injected. Meters can share a port
(``per_port``): DLMS meters are then addressed by the
wrapper's destination port (``server_address``), Modbus meters by unit id (``device_id``);
MQTT meters all use the broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from simulators.meter import Faults, Secrets, SimulatedMeter

HOURS_PER_MONTH = 730.0  # 8760 / 12: the Código's MWh-month
# IEC 61869-2 standard primary ratings (A) for measuring CTs with a 5 A secondary.
CT_RATINGS = (10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800)
CT_RATINGS += (1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000)
CT_EXTENDED = 1.2  # measuring CTs keep their class up to 120 % of rated current
DIRECT_IMAX = 100.0  # A: the largest current a direct-connected meter takes
POWER_FACTOR = 0.9  # for sizing only: the current a given active power needs at worst


@dataclass(frozen=True)
class Installation:
    """How a frontier's meters connect: system voltage, VT and CT (1/1 where there is none)."""

    voltage_level: int  # Colombian nivel de tensión 1..4
    system_kv: float  # line-to-line
    ct_primary: float  # A; equals ct_secondary for a direct-connected meter
    ct_secondary: float
    vt_primary: float  # V, line-to-line; equals vt_secondary without VTs
    vt_secondary: float

    @property
    def ct_ratio(self) -> float:
        return self.ct_primary / self.ct_secondary

    @property
    def vt_ratio(self) -> float:
        return self.vt_primary / self.vt_secondary

    def ratio_text(self, primary: float, secondary: float) -> str | float:
        return 1 if primary == secondary else f"{primary:g}/{secondary:g}"

    @property
    def max_secondary_kw(self) -> float:
        """The most active power the meter can see: √3 · V · I at its inputs' limits."""
        current = self.ct_secondary * (CT_EXTENDED if self.ct_ratio != 1 else 1.0)
        return math.sqrt(3) * self.vt_secondary * current / 1000.0


def installation_for(peak_kw: float) -> Installation:
    """The connection a frontier with this primary peak (kW) would get."""
    levels = (
        (1, 0.208, 150.0, None),  # 208/120 V low voltage
        (2, 13.2, 10_000.0, 120.0),
        (3, 34.5, 30_000.0, 120.0),
        (4, 115.0, math.inf, 120.0),
    )
    level, kv, _, vt = next(row for row in levels if peak_kw <= row[2])
    amps = peak_kw / (math.sqrt(3) * kv * POWER_FACTOR)
    volts = kv * 1000.0
    if vt is None and amps <= DIRECT_IMAX:
        return Installation(level, kv, DIRECT_IMAX, DIRECT_IMAX, volts, volts)
    rating = next(r for r in CT_RATINGS if r >= amps)
    return Installation(level, kv, rating, 5.0, volts, vt or volts)


PROTOCOLS = ("dlms", "modbus", "mqtt")

# Accuracy classes that satisfy Table 2 for each point type (active, reactive).
_ACCURACY = {1: ("0.2S", "2"), 2: ("0.5S", "2"), 3: ("0.5S", "2"), 4: ("1", "2"), 5: ("1", "2")}
_TABLE1_ENERGY = ((15_000, 1), (500, 2), (50, 3), (5, 4))


def point_type(monthly_mwh: float) -> int:
    """Table 1 by energy only (the registry applies the full rule on import)."""
    return next((t for bound, t in _TABLE1_ENERGY if monthly_mwh >= bound), 5)


def parse_mix(text: str) -> dict[str, float]:
    """``"dlms=.5,modbus=.3,mqtt=.2"`` → normalised shares; a clear error otherwise."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in PROTOCOLS:
            raise ValueError(f"bad mix entry {part!r}; expected e.g. dlms=.5,modbus=.3,mqtt=.2")
        try:
            shares[name] = float(value)
        except ValueError as exc:
            raise ValueError(f"bad share in {part!r}") from exc
    total = sum(shares.values())
    if total <= 0 or any(v < 0 for v in shares.values()):
        raise ValueError("mix shares must be non-negative and not all zero")
    return {k: v / total for k, v in shares.items()}


@dataclass
class SimFrontier:
    code: str
    kind: str
    monthly_energy_mwh: float
    protocol: str
    principal: SimulatedMeter
    backup: SimulatedMeter
    installation: Installation

    @property
    def point_type(self) -> int:
        return point_type(self.monthly_energy_mwh)


@dataclass
class Placement:
    """Where a meter is served: endpoint and protocol parameters."""

    host: str
    port: int
    params: dict[str, Any]


@dataclass
class Fleet:
    frontiers: list[SimFrontier]
    placements: dict[str, Placement] = field(default_factory=dict)  # by serial
    dlms_variants: dict[str, Any] = field(default_factory=dict)  # serial -> DlmsVariant
    servers: list[Any] = field(default_factory=list)
    # Broker accounts (user -> password) when MQTT meters log in: each meter as its serial,
    # the CGM as COLLECTOR_ACCOUNT; empty: everyone connects anonymously.
    broker_accounts: dict[str, str] = field(default_factory=dict)

    def meters(self) -> list[tuple[SimFrontier, SimulatedMeter]]:
        return [(f, m) for f in self.frontiers for m in (f.principal, f.backup)]

    def meter(self, serial: str) -> SimulatedMeter:
        for _, m in self.meters():
            if m.serial == serial:
                return m
        raise KeyError(serial)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        self.servers.clear()


def build_fleet(
    n: int,
    *,
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
    first_code: int = 10001,
    dlms_variants: bool = False,
) -> Fleet:
    """N frontiers with principal and backup meters; deterministic for a given seed.

    ``dlms_variants``: DLMS frontiers cycle through the layouts met in the field
    (:func:`dlms_variant`) instead of all serving an interval profile with a status column.
    """
    if n < 1:
        raise ValueError("a fleet needs at least one frontier")
    mix = mix or {"dlms": 0.5, "modbus": 0.3, "mqtt": 0.2}
    rng = random.Random(seed)
    protocols = list(mix)
    weights = [mix[p] for p in protocols]
    frontiers = []
    variants: dict[str, Any] = {}
    for i in range(n):
        code_num = first_code + i
        protocol = rng.choices(protocols, weights)[0]
        monthly = math.exp(rng.uniform(0, math.log(20_000)))
        generator = rng.random() < 0.1
        kind = "generation" if generator else "commercialisation"
        primary_kw = monthly * 1000 / HOURS_PER_MONTH
        load_seed = rng.getrandbits(32)
        peak = SimulatedMeter("sizing", mean_kw=primary_kw, generator=generator).peak_kw
        site = installation_for(peak)
        mean_kw = primary_kw / (site.ct_ratio * site.vt_ratio)  # what the meters see
        common: dict[str, Any] = dict(seed=load_seed, mean_kw=mean_kw, generator=generator)
        variant_of: Callable[[str], Any] | None = None
        if dlms_variants and protocol == "dlms":
            variant_of, quarter = dlms_variant(code_num)
            if quarter:
                common.update(capture_period=timedelta(minutes=15), depth=96 * 35)
        principal = SimulatedMeter(
            f"P{code_num}",
            clock_offset=rng.uniform(-20, 20),
            drift_ppm=rng.uniform(-5, 5),
            secrets=Secrets(),
            **common,
        )
        backup = SimulatedMeter(
            f"B{code_num}",
            clock_offset=rng.uniform(-20, 20),
            drift_ppm=rng.uniform(-5, 5),
            secrets=Secrets(),
            faults=Faults(),
            **common,
        )
        frontiers.append(
            SimFrontier(f"Frt{code_num}", kind, monthly, protocol, principal, backup, site)
        )
        if variant_of is not None:
            variants.update({m.serial: variant_of(m.serial) for m in (principal, backup)})
    return Fleet(frontiers, dlms_variants=variants)


def dlms_variant(number: int) -> tuple[Callable[[str], Any], bool]:
    """(serial -> DlmsVariant, 15-minute period?) for frontier ``number``, in a cycle of four:
    interval with status; cumulative totals; cumulative tariff registers with demand and
    voltage columns and the logical device name only (equal to the serial, as registered);
    15-minute interval energies without a status column."""
    from simulators.dlms import DlmsVariant

    kind = number % 4
    if kind == 1:
        return (lambda serial: DlmsVariant(profile="cumulative")), False
    if kind == 2:
        return (
            lambda serial: DlmsVariant(
                profile="cumulative",
                tariffs=2,
                extra_columns=True,
                serial_object=False,
                logical_device_name=serial,
            )
        ), False
    if kind == 3:
        return (lambda serial: DlmsVariant(status_column=False, extra_columns=True)), True
    return (lambda serial: DlmsVariant()), False


async def start_fleet(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    mqtt: tuple[str, int] | None = None,
    per_port: int = 1,
    modbus_map: str = "sim-4q",
    dlms_access: str = "lls",
    broker_seed: bytes | None = None,
) -> Fleet:
    """Serve every meter; MQTT meters need ``mqtt`` = (broker host, port).

    With a ``broker_seed`` the MQTT meters log in to the broker as the shipped Mosquitto
    ACL expects (each with its serial as username, one connection each) and the inventory
    gives the CGM its own account: passwords are derived from the seed
    (:func:`broker_accounts`), so a private seed gives the same private passwords every run.

    ``dlms_access="mixed"`` serves DLMS pairs in turn as LLS over the wrapper, HLS
    mechanism 2 at level 2, HLS-GMAC at level 2, and HLS over HDLC (2-byte addresses), as a
    real fleet mixes them; the inventory carries each meter's params and keys.
    """
    from simulators.dlms import serve as serve_dlms
    from simulators.modbus import serve as serve_modbus
    from simulators.mqtt import serve as serve_mqtt

    if per_port < 1:
        raise ValueError("per_port must be at least 1")
    by_protocol: dict[str, list[SimulatedMeter]] = {p: [] for p in PROTOCOLS}
    for frontier, meter in fleet.meters():
        by_protocol[frontier.protocol].append(meter)

    if dlms_access not in DLMS_ACCESS:
        raise ValueError(f"dlms_access must be one of {', '.join(DLMS_ACCESS)}")
    accesses = DLMS_ACCESS[dlms_access]
    by_access: dict[int, list[SimulatedMeter]] = {}
    for n, m in enumerate(by_protocol["dlms"]):
        # A principal and its backup are adjacent: the pair shares its access.
        by_access.setdefault(n // 2 % len(accesses), []).append(m)
    for index, meters in sorted(by_access.items()):
        access = accesses[index]
        for group in _chunks(meters, per_port):
            for m in group:
                if access.level2 == "hls-gmac":
                    m.secrets.level2 = _gmac_secret(m.serial)
            layouts = {
                i + 1: fleet.dlms_variants[m.serial]
                for i, m in enumerate(group)
                if m.serial in fleet.dlms_variants
            }
            server = await serve_dlms(
                {i + 1: m for i, m in enumerate(group)},
                host,
                0,
                variant=layouts,
                security={i + 1: access.security() for i in range(len(group))},
                **access.serve_kwargs(),
            )
            fleet.servers.append(server)
            for i, m in enumerate(group):
                fleet.placements[m.serial] = Placement(
                    host, server.port, {"server_address": i + 1, **access.params()}
                )
    for group in _chunks(by_protocol["modbus"], min(per_port, 247)):
        server = await serve_modbus({i + 1: m for i, m in enumerate(group)}, host, 0, modbus_map)
        fleet.servers.append(server)
        for i, m in enumerate(group):
            fleet.placements[m.serial] = Placement(
                host, server.port, {"device_id": i + 1, "map": modbus_map}
            )
    if by_protocol["mqtt"]:
        if mqtt is None:
            raise ValueError("MQTT meters need a broker")
        if broker_seed is None:
            fleet.servers.append(await serve_mqtt(by_protocol["mqtt"], mqtt[0], mqtt[1]))
        else:
            fleet.broker_accounts = broker_accounts(fleet, broker_seed)
            for m in by_protocol["mqtt"]:
                password = fleet.broker_accounts[m.serial]
                fleet.servers.append(
                    await serve_mqtt([m], mqtt[0], mqtt[1], username=m.serial, password=password)
                )
        for m in by_protocol["mqtt"]:
            fleet.placements[m.serial] = Placement(mqtt[0], mqtt[1], {"serial": m.serial})
    return fleet


@dataclass(frozen=True)
class DlmsAccess:
    """How one group of simulated DLMS meters is reached and authenticated."""

    level2: str = "lls"
    framing: str = "wrapper"
    hdlc_lower: int | None = None
    hdlc_address_size: int = 1

    def security(self) -> Any:
        from simulators.dlms.security import MeterSecurity

        return MeterSecurity(level2=self.level2)

    def serve_kwargs(self) -> dict[str, Any]:
        if self.framing == "wrapper":
            return {}
        return {
            "framing": "hdlc",
            "hdlc_lower": self.hdlc_lower,
            "hdlc_address_size": self.hdlc_address_size,
        }

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.level2 != "lls":
            out["level2_auth"] = self.level2
        if self.framing == "hdlc":
            out |= {"framing": "hdlc", "hdlc_address_size": self.hdlc_address_size}
            if self.hdlc_lower is not None:
                out["hdlc_server_lower"] = self.hdlc_lower
        return out


DLMS_ACCESS: dict[str, tuple[DlmsAccess, ...]] = {
    "lls": (DlmsAccess(),),
    "mixed": (
        DlmsAccess(),
        DlmsAccess(level2="hls"),
        DlmsAccess(level2="hls-gmac"),
        DlmsAccess(level2="hls", framing="hdlc", hdlc_lower=17, hdlc_address_size=2),
    ),
}


def _gmac_secret(serial: str) -> str:
    """Per-meter HLS-GMAC keys, derived from the serial (simulated meters only)."""
    digest = hashlib.sha256(b"cgm-simulated-gmac:" + serial.encode()).hexdigest()
    return f"ek={digest[:32]};ak={digest[32:]}"


COLLECTOR_ACCOUNT = "cgm"  # the shipped ACL's account for the CGM


def broker_accounts(fleet: Fleet, seed: bytes) -> dict[str, str]:
    """The broker accounts of the fleet's MQTT meters and of the CGM, passwords derived from
    ``seed``. ``mosquitto_passwd -U FILE`` hashes them written as ``user:password`` lines."""
    users = [COLLECTOR_ACCOUNT] + [m.serial for f, m in fleet.meters() if f.protocol == "mqtt"]
    return {
        user: base64.urlsafe_b64encode(
            hmac.new(seed, b"cgm-simulated-broker:" + user.encode(), "sha256").digest()[:18]
        ).decode()
        for user in users
    }


def _chunks(items: list[SimulatedMeter], size: int) -> list[list[SimulatedMeter]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def inventory(fleet: Fleet) -> dict[str, Any]:
    """The registry inventory (``cgm registry import`` format) of a started fleet.

    Secrets are the simulators' own (inline, as test fixtures); a real inventory should use
    ``env:`` references.
    """
    frontiers = []
    for f in fleet.frontiers:
        active, reactive = _ACCURACY[f.point_type]
        site = f.installation
        meters = []
        for role, m in (("principal", f.principal), ("backup", f.backup)):
            place = fleet.placements[m.serial]
            meters.append(
                {
                    "serial": m.serial,
                    "role": role,
                    "protocol": f.protocol,
                    "endpoint": f"{place.host}:{place.port}",
                    "params": place.params,
                    "ct_ratio": site.ratio_text(site.ct_primary, site.ct_secondary),
                    "vt_ratio": site.ratio_text(site.vt_primary, site.vt_secondary),
                    "accuracy_active": active,
                    "accuracy_reactive": reactive,
                    "manufacturer": m.identity.manufacturer,
                    "model": m.identity.model,
                    "credentials": {
                        "level1": {"secret": m.secrets.level1},
                        "level2": {"secret": m.secrets.level2},
                    },
                }
            )
            if f.protocol == "mqtt" and fleet.broker_accounts:
                meters[-1]["credentials"]["broker"] = {
                    "username": COLLECTOR_ACCOUNT,
                    "password": fleet.broker_accounts[COLLECTOR_ACCOUNT],
                }
        frontiers.append(
            {
                "code": f.code,
                "name": f"Simulated frontier {f.code}",
                "kind": f.kind,
                "stn": False,
                "voltage_level": site.voltage_level,
                "monthly_energy_mwh": round(f.monthly_energy_mwh, 3),
                "adjustment_factor": 1.0,
                "attributes": {
                    "system_kv": site.system_kv,
                    "ct_rated_primary_a": site.ct_primary,
                    "ct_rated_secondary_a": site.ct_secondary,
                },
                "meters": meters,
            }
        )
    return {"frontiers": frontiers}
