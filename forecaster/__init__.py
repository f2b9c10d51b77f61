"""Building demand forecasting with numpy and scikit-learn: no asyncio, no BACnet, no OpenADR, no I/O in
`DemandForecaster` (fit, predict). Beside it, for its callers: its SQLite store (store.py) and the reader of a
building's CSV exports (export_csv.py)."""
from .core import PERSISTENCE, DemandForecaster, Forecast

__all__ = ["DemandForecaster", "Forecast", "PERSISTENCE"]
