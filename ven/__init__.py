"""edge-gateway: OpenADR 2.0b VEN, BACnet/IP device and demand forecaster for buildings.

Entry points: `ven.cli:main` (the `edge-gateway` command) and `ven.app.Gateway` (the composition root).
"""
import warnings
from importlib.metadata import PackageNotFoundError, version

# cryptography 51 deprecates DSA, and signxml (openleadr's XML signatures) names DSA's key type in its signatures at
# import, openleadr when it signs a message: four lines on stderr at every start (in the journal, and under the
# CLI's one-line errors) and two at the first signed message, about an algorithm OpenADR 2.0b does not use. Set
# before openleadr is imported, which any entry point does after this package
warnings.filterwarnings("ignore", message="DSA is deprecated", module="signxml|openleadr")

try:
    __version__ = version("edge-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
