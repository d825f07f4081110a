"""XM's reading message: ``ArrayOfReadingReportItem``, many frontiers in one request.

The shape follows the one public example of XM's reading web service (XM's note on monthly
reporting under CREG 038, 2016)::

    <ArrayOfReadingReportItem xmlns:xsi="..." xmlns:xsd="...">
      <ReadingReportItem>
        <BorderCode>Frt03003</BorderCode>
        <IsBackup>false</IsBackup>
        <StartDate>2016-05-16T00:00:00</StartDate>
        <ReadingInterval>60</ReadingInterval>
        <ReadingCount>24</ReadingCount>
        <Readings><double>12.5</double>...</Readings>
      </ReadingReportItem>
    </ArrayOfReadingReportItem>

Namespaces, decided: the .NET ``XmlSerializer`` convention for an array of a class — no
target namespace on the elements (so ``<double>`` is unprefixed, as in the example), the
``xsi``/``xsd`` prefixes declared on the root, elements in the example's order.
``StartDate`` is the Colombian local day (or month) start without offset, as in the example.
Readings are kWh of active import (channel 1).

What the XML cannot carry (estimated hours, hours the principal's series took from the backup
meter) stays in the stored delivery record (``asic_document.content``), see format.py.
Built with the standard library's ElementTree: the message needs nothing more.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD = "http://www.w3.org/2001/XMLSchema"
ROOT = "ArrayOfReadingReportItem"
ITEM = "ReadingReportItem"
FIELDS = ("BorderCode", "IsBackup", "StartDate", "ReadingInterval", "ReadingCount", "Readings")
DAILY_COUNT = 24
MONTHLY_COUNT = 1
INTERVAL_MIN = 60


@dataclass(frozen=True)
class ReportItem:
    """One meter's readings for one local day (24 hourly values) or one month (1 value)."""

    border_code: str
    is_backup: bool
    start: date
    readings: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.readings) not in (DAILY_COUNT, MONTHLY_COUNT):
            raise ValueError(
                f"{self.border_code}: {len(self.readings)} readings, need "
                f"{DAILY_COUNT} (daily-hourly) or {MONTHLY_COUNT} (monthly)"
            )
        for v in self.readings:
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{self.border_code}: reading {v} is not a number")

    @property
    def name(self) -> str:
        """The item's key in the ASIC's answer and in ``asic_document.file_name``."""
        stamp = f"{self.start:%Y%m}" if len(self.readings) == 1 else f"{self.start:%Y%m%d}"
        return item_name(self.border_code, self.is_backup, stamp)


def item_name(border_code: str, is_backup: bool, stamp: str) -> str:
    return f"{border_code}_{'R' if is_backup else 'P'}_{stamp}"


def _double(v: float) -> str:
    # repr gives the shortest text that reads back to the same double (xs:double lexical).
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def element(item: ReportItem) -> ET.Element:
    el = ET.Element(ITEM)
    ET.SubElement(el, "BorderCode").text = item.border_code
    ET.SubElement(el, "IsBackup").text = "true" if item.is_backup else "false"
    ET.SubElement(el, "StartDate").text = f"{item.start:%Y-%m-%d}T00:00:00"
    ET.SubElement(el, "ReadingInterval").text = str(INTERVAL_MIN)
    ET.SubElement(el, "ReadingCount").text = str(len(item.readings))
    readings = ET.SubElement(el, "Readings")
    for v in item.readings:
        ET.SubElement(readings, "double").text = _double(v)
    return el


def message(items: Iterable[ReportItem]) -> bytes:
    """The request body: UTF-8 XML with declaration."""
    root = ET.Element(ROOT, {"xmlns:xsi": XSI, "xmlns:xsd": XSD})
    for it in items:
        root.append(element(it))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def parse(body: bytes) -> list[ReportItem]:
    """Read a message back (the round trip a test and the simulator rely on); strict about
    the element order and values, so a malformed message is an error, not a guess."""
    root = ET.fromstring(body)
    if _local(root.tag) != ROOT:
        raise ValueError(f"root is {root.tag}, expected {ROOT}")
    out = []
    for el in root:
        if _local(el.tag) != ITEM:
            raise ValueError(f"unexpected element {el.tag}")
        children = list(el)
        names = tuple(_local(c.tag) for c in children)
        if names != FIELDS:
            raise ValueError(f"item fields {names}, expected {FIELDS}")
        code, backup, start, interval, count, readings = children
        if backup.text not in ("true", "false"):
            raise ValueError(f"IsBackup {backup.text!r}")
        if interval.text != str(INTERVAL_MIN):
            raise ValueError(f"ReadingInterval {interval.text!r}")
        day_text = start.text or ""
        if not day_text.endswith("T00:00:00"):
            raise ValueError(f"StartDate {day_text!r} is not a local day start")
        values = tuple(float(d.text or "") for d in readings if _local(d.tag) == "double")
        if len(values) != len(readings) or str(len(values)) != count.text:
            raise ValueError(f"ReadingCount {count.text} but {len(values)} <double> readings")
        out.append(
            ReportItem(code.text or "", backup.text == "true", date.fromisoformat(day_text[:10]),
                       values)
        )  # fmt: skip
    return out


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def pack(
    entries: Sequence[tuple[ReportItem, object]], *, max_items: int, max_bytes: int
) -> list[tuple[bytes, list[object]]]:
    """Messages of at most ``max_items`` items and about ``max_bytes`` bytes (items are
    measured one by one, indentation aside); each entry pairs an item with what the caller
    tracks (its document)."""
    overhead = len(message([]))
    out: list[tuple[bytes, list[object]]] = []
    batch: list[tuple[ReportItem, object]] = []
    size = overhead
    for entry in entries:
        n = len(ET.tostring(element(entry[0]))) + 64
        if overhead + n > max_bytes:
            raise ValueError(f"{entry[0].name} alone exceeds {max_bytes} bytes")
        if batch and (len(batch) >= max_items or size + n > max_bytes):
            out.append((message(i for i, _ in batch), [t for _, t in batch]))
            batch, size = [], overhead
        batch.append(entry)
        size += n
    if batch:
        out.append((message(i for i, _ in batch), [t for _, t in batch]))
    return out
