"""What a meter's `units` property means for its reading: the factor to kW, or why it is not power.

Many meters publish power in watts or megawatts rather than kW; the BACnet `units` property of the
meter's object says which (EngineeringUnits). Real-power units are converted; anything else (an energy
register in kilowattHours, apparent power in kilovoltAmperes, a current) is refused, since no factor
turns it into the building's kW. A meter that states no unit (`noUnits`, or an object without a `units`
property) is read as kW, which `meter.property` is documented to be.
"""
from __future__ import annotations

from dataclasses import dataclass

# kW per unit of each real-power unit of BACnet's EngineeringUnits (camelCase, as to_plain names them)
KW_PER_UNIT: dict[str, float] = {
    "milliwatts": 1e-6,
    "watts": 1e-3,
    "kilowatts": 1.0,
    "megawatts": 1e3,
}

# the meter states no unit: its value is taken as kW, as configured
UNSTATED = "noUnits"

_WHAT_IT_IS = {  # a word on the common non-power units a meter point carries, for the fault text
    "wattHours": "energy", "kilowattHours": "energy", "megawattHours": "energy",
    "kilowattHoursReactive": "energy", "kilovoltAmpereHours": "energy",
    "voltAmperes": "apparent power", "kilovoltAmperes": "apparent power", "megavoltAmperes": "apparent power",
    "voltAmperesReactive": "reactive power", "kilovoltAmperesReactive": "reactive power",
    "megavoltAmperesReactive": "reactive power",
    "amperes": "current", "milliamperes": "current", "volts": "voltage", "kilovolts": "voltage",
    "powerFactor": "a power factor", "percent": "a percentage", "hertz": "a frequency",
}


class NotPower(ValueError):
    """The meter's units are not a real-power unit: no factor makes its value kW."""

    def __init__(self, units: str) -> None:
        kind = _WHAT_IT_IS.get(units)
        super().__init__(f"units {units} is not a power unit{f' ({kind})' if kind else ''}: "
                         "the gateway needs real power in milliwatts, watts, kilowatts or megawatts")
        self.units = units


@dataclass(frozen=True)
class MeterUnits:
    name: str | None  # what the meter says ("watts"); None when its object has no units property
    kw_per_unit: float

    @property
    def stated(self) -> bool:
        """The meter names a power unit (not noUnits, not missing)."""
        return self.name in KW_PER_UNIT

    def to_kw(self, value: float) -> float:
        return value * self.kw_per_unit

    def describe(self) -> str:
        if self.name is None:
            return "has no units property: its value is taken as kW"
        if self.name == UNSTATED:
            return "states noUnits: its value is taken as kW"
        if self.kw_per_unit == 1.0:
            return "reports kilowatts"
        return f"reports {self.name}: readings are converted to kW (x {self.kw_per_unit:g})"


def meter_units(name: str | None) -> MeterUnits:
    """The conversion for a meter whose `units` reads `name` (camelCase; None: no units property).
    Raises NotPower for any unit that is not real power."""
    if name is None or name == UNSTATED:
        return MeterUnits(name, 1.0)
    if name in KW_PER_UNIT:
        return MeterUnits(name, KW_PER_UNIT[name])
    raise NotPower(name)
