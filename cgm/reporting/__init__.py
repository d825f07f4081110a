"""Reports of settled readings to their receivers (the ASIC first).

Reporting reads what validation settled and the registry; it never calls VEE, drivers or the
collector (data flows one way).
"""
