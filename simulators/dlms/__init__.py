"""DLMS/COSEM meter simulator (IEC 62056-47 TCP wrapper) serving SimulatedMeter objects."""

from .objects import DlmsVariant
from .server import DEFAULT_MAX_PDU, DlmsServer, serve

__all__ = ["DEFAULT_MAX_PDU", "DlmsServer", "DlmsVariant", "serve"]
