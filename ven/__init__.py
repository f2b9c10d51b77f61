"""edge-gateway: OpenADR 2.0b VEN, BACnet/IP device and demand forecaster for buildings.

Entry points: `ven.cli:main` (the `edge-gateway` command) and `ven.app.Gateway` (the composition root).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
