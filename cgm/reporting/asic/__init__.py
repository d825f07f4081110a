"""The daily report of readings to the ASIC (XM): format, transport, delivery."""
