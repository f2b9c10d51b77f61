"""What a meter's `units` property means for its reading: the factor to kW, or why it is not power.

Many meters publish power in watts or megawatts rather than kW; the BACnet `units` property of the
meter's object says which (EngineeringUnits). Real-power units are converted; anything else (an energy
register in kilowattHours, apparent power in kilovoltAmperes, a current) is refused, since no factor
turns it into the building's kW. A meter that states no unit (`noUnits`, or an object without a `units`
property) is read as kW, which `meter.property` is documented to be.

Some meters state noUnits (or nothing) and publish watts: `meter.units` names the unit instead, and then
decides; a meter that names another power unit is warned about, naming both. A unit that is not power
stays a fault (meter.units cannot make an energy register into kW).
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


def check_configured(units: str) -> str:
    """`units` if a configured unit (`meter.units`) can be it, else ValueError saying why."""
    if units not in KW_PER_UNIT:
        raise ValueError(f"must be one of {', '.join(KW_PER_UNIT)} (the BACnet unit the meter's value is in), "
                         f"got {units!r}")
    return units


@dataclass(frozen=True)
class MeterUnits:
    name: str | None  # the unit readings are in ("watts"); None when the meter's object has no units property
    kw_per_unit: float
    configured: bool = False  # `name` is meter.units, not what the meter says
    reported: str | None = None  # with configured: what the meter's units said (None: no units property)

    @property
    def stated(self) -> bool:
        """The unit is known: the meter or meter.units names a power unit (not noUnits, not missing)."""
        return self.name in KW_PER_UNIT

    @property
    def disagrees(self) -> bool:
        """meter.units is followed although the meter names another unit."""
        return self.configured and self.reported not in (None, UNSTATED, self.name)

    def to_kw(self, value: float) -> float:
        return value * self.kw_per_unit

    def describe(self) -> str:
        converted = ("readings are taken as kW" if self.kw_per_unit == 1.0
                     else f"readings are converted to kW (x {self.kw_per_unit:g})")
        if self.configured:
            if self.reported == self.name:
                return f"reports {self.name}, as meter.units says: {converted}"
            if self.reported is None:
                return f"has no units property; meter.units says {self.name}: {converted}"
            if self.reported == UNSTATED:
                return f"states noUnits; meter.units says {self.name}: {converted}"
            return (f"reports {self.reported}, but meter.units says {self.name}: meter.units is followed, "
                    f"{converted}")
        if self.name is None:
            return "has no units property: its value is taken as kW"
        if self.name == UNSTATED:
            return "states noUnits: its value is taken as kW"
        if self.kw_per_unit == 1.0:
            return "reports kilowatts"
        return f"reports {self.name}: {converted}"


def meter_units(name: str | None, configured: str | None = None) -> MeterUnits:
    """The conversion for a meter whose `units` reads `name` (camelCase; None: no units property).
    Raises NotPower for any unit that is not real power. `configured` (meter.units, one of KW_PER_UNIT)
    decides instead of a power unit, noUnits or none. A unit that is not power still raises: meter.units
    relabels power, and cannot make an energy register or a current into the building's kW."""
    if configured is not None:
        if name not in (None, UNSTATED) and name not in KW_PER_UNIT:
            raise NotPower(name)
        return MeterUnits(check_configured(configured), KW_PER_UNIT[configured], configured=True, reported=name)
    if name is None or name == UNSTATED:
        return MeterUnits(name, 1.0)
    if name in KW_PER_UNIT:
        return MeterUnits(name, KW_PER_UNIT[name])
    raise NotPower(name)
