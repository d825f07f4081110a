"""Verification of the audit hash chains (migration 0041).

Every ``audit_log`` row and every ``ingest_batch`` row carries ``chain_seq``, ``prev_hash``
and ``hash = sha256(prev_hash || payload)``; ``audit_chain`` keeps each chain's head. This
module recomputes both chains from the stored rows and reports the first break: an edited
row (its hash no longer matches), a deleted row (a gap in ``chain_seq``), a cut-off or
truncated log (the head is beyond the last row), rows written with the chain trigger
switched off (no hash). The payload is built here with the same expressions as
``chain_payload()`` in the migration, but independently of it, so a redefined database
function cannot make a forged row verify.

An operator who records the head printed by ``cgm audit verify`` (e.g. with each ASIC
report) can later check it with ``--anchor``: that also catches an attacker who rewrote the
whole chain and its head, which no check inside one database can.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

GENESIS = bytes(32)
CHAINS = ("audit_log", "ingest_batch")
_EPOCH_US = "(extract(epoch FROM t.at) * 1000000)::bigint"
PAYLOAD = {
    "audit_log": (
        "pg_catalog.jsonb_build_array(t.chain_seq, t.id, " + _EPOCH_US + ", t.table_name,"
        " t.op, t.old_row, t.new_row, t.db_user, t.actor, t.reason)::text"
    ),
    "ingest_batch": (
        "pg_catalog.jsonb_build_array(t.chain_seq, t.id, " + _EPOCH_US + ", t.db_user,"
        " t.actor, t.source, t.target, t.received, t.inserted, t.unchanged, t.superseded,"
        " t.kept_manual)::text"
    ),
}
_FETCH = 5000


@dataclass(frozen=True)
class Anchor:
    """A head recorded earlier: chain ``chain`` had hash ``hash`` at ``seq``."""

    chain: str
    seq: int
    hash: bytes

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``CHAIN:SEQ:HEX`` as printed by ``cgm audit verify``."""
        try:
            chain, seq, hexhash = text.split(":")
            anchor = cls(chain, int(seq), bytes.fromhex(hexhash))
        except ValueError:
            raise ValueError(f"anchor {text!r} is not CHAIN:SEQ:HEX") from None
        if chain not in CHAINS or len(anchor.hash) != 32 or anchor.seq < 1:
            raise ValueError(f"anchor {text!r} is not CHAIN:SEQ:HEX with a known chain")
        return anchor

    def __str__(self) -> str:
        return f"{self.chain}:{self.seq}:{self.hash.hex()}"


@dataclass
class ChainReport:
    """The result for one chain: ``problem`` is the first break, None when intact."""

    chain: str
    rows: int = 0
    head: Anchor | None = None
    problem: str | None = None
    unchained: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)


def verify(url: str, anchors: Iterable[Anchor] = ()) -> VerifyReport:
    """Recompute both chains at ``url`` (one repeatable-read snapshot) and check anchors."""
    wanted: dict[str, list[Anchor]] = {c: [] for c in CHAINS}
    for a in anchors:
        wanted[a.chain].append(a)
    report = VerifyReport()
    with psycopg.connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for chain in CHAINS:
            report.chains.append(_verify_chain(conn, chain, wanted[chain]))
    return report


def _verify_chain(conn: psycopg.Connection, chain: str, anchors: list[Anchor]) -> ChainReport:
    rep = ChainReport(chain)
    head = conn.execute("SELECT seq, hash FROM audit_chain WHERE chain = %s", (chain,)).fetchone()
    table = sql.Identifier(chain)
    (rep.unchained,) = conn.execute(  # type: ignore[misc]
        sql.SQL("SELECT count(*) FROM {} WHERE hash IS NULL").format(table)
    ).fetchone()
    at_seq = {a.seq: a for a in anchors}
    expected_seq, prev = 1, GENESIS
    with conn.cursor(name=f"verify_{chain}") as cur:
        cur.itersize = _FETCH
        cur.execute(
            sql.SQL(
                "SELECT t.chain_seq, t.id, t.prev_hash, t.hash, {payload} FROM {table} t"
                " WHERE t.chain_seq IS NOT NULL ORDER BY t.chain_seq"
            ).format(payload=sql.SQL(PAYLOAD[chain]), table=table)
        )
        for seq, row_id, prev_hash, stored, payload in cur:
            rep.rows += 1
            if rep.problem:
                continue
            if seq != expected_seq:
                rep.problem = (
                    f"rows with chain_seq {expected_seq}..{seq - 1} are missing "
                    f"(deleted; next present is id {row_id})"
                )
                continue
            if bytes(prev_hash) != prev:
                rep.problem = f"row id {row_id} (seq {seq}) does not link to the row before it"
                continue
            digest = hashlib.sha256(prev + payload.encode()).digest()
            if digest != bytes(stored):
                rep.problem = f"row id {row_id} (seq {seq}) was changed after it was written"
                continue
            if seq in at_seq and at_seq.pop(seq).hash != digest:
                rep.problem = f"seq {seq} does not match the recorded anchor"
                continue
            prev, expected_seq = digest, seq + 1
    last_seq = expected_seq - 1
    if rep.problem is None:
        if head is None:
            rep.problem = "the chain head (audit_chain) is missing"
        elif head[0] < last_seq:
            rep.problem = f"the chain head (seq {head[0]}) is behind the rows (seq {last_seq})"
        elif head[0] != last_seq or bytes(head[1]) != (prev if last_seq else GENESIS):
            rep.problem = (
                f"the chain head is at seq {head[0]} but the rows end at seq {last_seq}: "
                "rows were removed from the end (deleted or truncated)"
            )
        elif at_seq:
            seq = min(at_seq)
            rep.problem = f"recorded anchor seq {seq} is beyond the chain (ends at {last_seq})"
        elif rep.unchained:
            rep.problem = (
                f"{rep.unchained} row(s) carry no hash: written with the chain trigger switched off"
            )
    if last_seq:
        rep.head = Anchor(chain, last_seq, prev)
    return rep
