"""The gateway's BACnet point table: a contract with the technicians who program the BAS.

Object names never change; instances are defaults. Everything else in the application refers to
points by name (the constants below), never by bacpypes3 object.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

INPUT_POWER = "input-power-meter"
ONE_HOUR_FORECAST = "one-hour-future-power"
RATE_OF_CHANGE = "power-rate-of-change"
EVENT_LEVEL = "ADR-Event-Level"
FIFTEEN_MIN_FORECAST = "fifteen-min-future-power"
METER_POWER = "meter-power"
EVENT_START_MINUTES = "ADR-Event-Start-Minutes"
HIGH_LOAD = "high-load-conditions"
LOW_LOAD = "low-load-conditions"
EVENT_ACTIVE = "ADR-Event-Active"
OPT_OUT = "ADR-Opt-Out"
VTN_CONNECTED = "vtn-connected"
METER_FAULT = "meter-fault"
HIGH_LOAD_THRESHOLD = "high-load-threshold"
LOW_LOAD_THRESHOLD = "low-load-threshold"
SHED_POWER = "bas-shed-power"


@dataclass(frozen=True)
class Point:
    name: str
    kind: Literal["analogValue", "binaryValue"]
    instance: int
    access: Literal["read-only", "writable", "commandable"]
    units: str | None  # bacpypes3 EngineeringUnits name; None for binary points
    description: str
    initial: float | bool
    # True while the application has no value yet (statusFlags fault until first set)
    starts_in_fault: bool = False
    # binary points: (inactiveText, activeText), what a BAS graphic shows instead of inactive/active
    texts: tuple[str, str] | None = None
    # commandable analog points: the lowest command taken (None: bacnet.input_min_kw, as input-power-meter)
    lowest: float | None = None

    @property
    def object_id(self) -> str:
        return f"{self.kind} {self.instance}"

    @property
    def writable(self) -> bool:
        return self.access != "read-only"


def _threshold_text(kind: str, percentile: int, days: float) -> str:
    return (f"Threshold {kind}-load-conditions uses now (kW): forecaster.{kind}_load_kw, else the {percentile}th "
            f"percentile of 15-min demand over the last {days:g} days")


POINTS: tuple[Point, ...] = (
    Point(INPUT_POWER, "analogValue", 1, "commandable", "kilowatts",
          "Building power written by the BAS (kW)", 0.0, starts_in_fault=False),
    Point(ONE_HOUR_FORECAST, "analogValue", 2, "read-only", "kilowatts",
          "Forecast 15-min average demand ending 60 min ahead (kW)", 0.0, starts_in_fault=True),
    Point(RATE_OF_CHANGE, "analogValue", 3, "read-only", "noUnits",
          "Trend of building power in kW/min (least squares over recent minutes)", 0.0, starts_in_fault=True),
    Point(EVENT_LEVEL, "analogValue", 4, "read-only", "noUnits",
          "Current OpenADR SIMPLE level 0-3 (0 = no event)", 0.0),
    Point(FIFTEEN_MIN_FORECAST, "analogValue", 5, "read-only", "kilowatts",
          "Forecast 15-min average demand ending 15 min ahead (kW)", 0.0, starts_in_fault=True),
    Point(METER_POWER, "analogValue", 6, "read-only", "kilowatts",
          "Latest meter reading taken by the gateway (kW)", 0.0, starts_in_fault=True),
    Point(EVENT_START_MINUTES, "analogValue", 7, "read-only", "minutes",
          "Minutes until the next event starts (0 while active, -1 when none)", -1.0),
    Point(HIGH_LOAD, "binaryValue", 1, "read-only", None,
          "Forecast approaching peak: shed loads if possible", False, starts_in_fault=True,
          texts=("normal", "high load")),
    Point(LOW_LOAD, "binaryValue", 2, "read-only", None,
          "Forecast valley: charging storage is okay", False, starts_in_fault=True,
          texts=("normal", "low load")),
    Point(EVENT_ACTIVE, "binaryValue", 3, "read-only", None,
          "An OpenADR event interval is active now", False, texts=("no event", "event active")),
    Point(OPT_OUT, "binaryValue", 4, "commandable", None,
          "Write active to opt out of current and pending events, relinquish to opt back in", False,
          texts=("opted in", "opted out")),
    Point(VTN_CONNECTED, "binaryValue", 5, "read-only", None,
          "Registered with the VTN and polling", False, texts=("disconnected", "connected")),
    Point(METER_FAULT, "binaryValue", 6, "read-only", None,
          "The last meter read failed: no answer, a router refused it, the value was unusable (outside the kW "
          "bounds, units not power), or the meter flagged it fault or out of service", False,
          starts_in_fault=True,   # until the first read has ended, "inactive" would claim a good meter
          texts=("normal", "fault")),
    # Added points go last, on the next free instance: BAS programs are bound to the instances above, and
    # a workstation that cached objectList by position finds the earlier objects where they were.
    Point(HIGH_LOAD_THRESHOLD, "analogValue", 8, "read-only", "kilowatts",
          _threshold_text("high", 90, 14), 0.0, starts_in_fault=True),
    Point(LOW_LOAD_THRESHOLD, "analogValue", 9, "read-only", "kilowatts",
          _threshold_text("low", 10, 14), 0.0, starts_in_fault=True),
    # The BAS's own sheds, told so the forecaster learns the building's load without them: a BAS acting on
    # high-load-conditions otherwise teaches it that high load is followed by a drop, and the flag turns itself
    # off mid-shed (bench/closed_loop.py)
    Point(SHED_POWER, "analogValue", 10, "commandable", "kilowatts",
          "kW the BAS is shedding now on its own, not for an OpenADR event (command it while shedding, relinquish "
          "at the end): the forecaster adds it back to the measured power", 0.0, lowest=0.0),
)

BY_NAME: dict[str, Point] = {p.name: p for p in POINTS}
# BAC0 names the device's network port object so
NETWORK_PORT_NAME = "NetworkPort-1"
# names the device's other objects take: BACnet object names are unique within a device (clause 12.1.2),
# and the stack refuses a device named like one of them
TAKEN_NAMES = frozenset(BY_NAME) | {NETWORK_PORT_NAME}


def points_for(horizons: tuple[int, int], threshold_days: float = 14.0) -> tuple[Point, ...]:
    """The point table with descriptions naming the configured horizons and threshold window (the object
    names stay: they are the contract, whatever the site chose)."""
    short, long = horizons
    text = {FIFTEEN_MIN_FORECAST: f"Forecast 15-min average demand ending {short:g} min ahead (kW)",
            ONE_HOUR_FORECAST: f"Forecast 15-min average demand ending {long:g} min ahead (kW)",
            HIGH_LOAD_THRESHOLD: _threshold_text("high", 90, threshold_days),
            LOW_LOAD_THRESHOLD: _threshold_text("low", 10, threshold_days)}
    return tuple(replace(p, description=text[p.name]) if p.name in text else p for p in POINTS)
