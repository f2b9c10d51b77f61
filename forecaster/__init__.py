"""Building demand forecasting: pure numpy / scikit-learn, no I/O on the hot path, no asyncio."""
from .core import PERSISTENCE, DemandForecaster, Forecast

__all__ = ["DemandForecaster", "Forecast", "PERSISTENCE"]
