"""The CGM's own clock against official time, checked before any meter clock is set.

A meter is set to the host's clock, so a host that drifted would carry every meter it
corrects along with it. Before a cycle may set clocks the host must be shown to be on
official time:

- the host's own NTP state, where the host can say (``timedatectl show`` on systemd,
  ``chronyc -c tracking`` where chrony runs): a host that says it is not synchronised is
  not a reference;
- an NTP query (ntplib) to the configured servers, first answer wins: the host's offset
  from it must be within ``max_offset_s``.

With servers configured, no answer from any of them means the reference cannot be
established; without servers, the host's NTP state must say synchronised. Either way the
answer is a :class:`ReferenceCheck` whose ``ok`` decides, and whose ``detail`` goes into
the alarm when it does not.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass, field

import ntplib


@dataclass(frozen=True)
class ReferenceConfig:
    servers: tuple[str, ...] = ()  # "host" or "host:port" (NTP, UDP 123 by default)
    max_offset_s: float = 0.5  # beyond this the host is not official time
    timeout_s: float = 2.0  # per server


@dataclass(frozen=True)
class ReferenceCheck:
    ok: bool
    detail: str  # why, for the log and the alarm
    offset_s: float | None = None  # host minus the NTP server that answered
    server: str | None = None
    host_synchronised: bool | None = None  # None: the host cannot say
    evidence: dict[str, object] = field(default_factory=dict)


def host_ntp_state() -> tuple[bool | None, str]:
    """Whether the host's own time service says it is synchronised (None: cannot say)."""
    if shutil.which("timedatectl"):
        done = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if done is not None and done in ("yes", "no"):
            return done == "yes", f"timedatectl NTPSynchronized={done}"
    if shutil.which("chronyc"):
        done = _run(["chronyc", "-c", "tracking"])
        if done:
            fields = done.split(",")
            leap = fields[-1].strip() if fields else ""
            synced = leap != "Not synchronised" and len(fields) > 4
            return synced, f"chronyc tracking: leap {leap!r}, system offset {fields[4:5]}"
    return None, "host NTP state unavailable (no timedatectl/chronyc answer)"


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _split(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if sep and port.isdigit() and host:
        return host.strip("[]"), int(port)
    return server, 123


def query(server: str, timeout: float) -> float:
    """Offset of the host clock from ``server`` (positive: host behind the server, as
    NTP defines it), by one NTP v3 request. Raises OSError/ntplib errors on no answer."""
    host, port = _split(server)
    return float(ntplib.NTPClient().request(host, version=3, port=port, timeout=timeout).offset)


def check_reference(config: ReferenceConfig) -> ReferenceCheck:
    """Blocking: the host's state, then the servers in order."""
    synced, state = host_ntp_state()
    evidence: dict[str, object] = {"host_ntp": state, "max_offset_s": config.max_offset_s}
    if synced is False:
        return ReferenceCheck(False, f"host clock not synchronised ({state})", None, None,
                              synced, evidence)  # fmt: skip
    failures = []
    for server in config.servers:
        try:
            offset = query(server, config.timeout_s)
        except (OSError, ntplib.NTPException) as exc:
            failures.append(f"{server}: {exc or type(exc).__name__}")
            continue
        evidence.update(server=server, offset_s=round(offset, 6))
        if abs(offset) > config.max_offset_s:
            return ReferenceCheck(
                False,
                f"host clock is {offset:+.3f} s off {server}, beyond {config.max_offset_s:g} s",
                offset, server, synced, evidence,
            )  # fmt: skip
        return ReferenceCheck(
            True, f"host within {offset:+.3f} s of {server}", offset, server, synced, evidence
        )
    if failures:
        evidence["failures"] = failures
        return ReferenceCheck(
            False, "official time not established: " + "; ".join(failures), None, None,
            synced, evidence,
        )  # fmt: skip
    if synced:
        return ReferenceCheck(True, f"no NTP server configured; {state}", None, None, True,
                              evidence)  # fmt: skip
    return ReferenceCheck(
        False, f"official time not established: no NTP server configured and {state}",
        None, None, synced, evidence,
    )  # fmt: skip


async def check_reference_async(config: ReferenceConfig) -> ReferenceCheck:
    return await asyncio.to_thread(check_reference, config)
