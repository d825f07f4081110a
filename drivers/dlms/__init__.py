"""DLMS/COSEM driver (IEC 62056 over the TCP wrapper). See README.md in this package."""

from .driver import DlmsDriver, DlmsParams, DlmsSession

DRIVER = DlmsDriver()

__all__ = ["DRIVER", "DlmsDriver", "DlmsParams", "DlmsSession"]
