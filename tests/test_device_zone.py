"""The device's utcOffset and daylightSavingsStatus (clause 12.11) in zones whose clock changes oddly: a BAS takes
UTC as localTime + utcOffset, less an hour while daylightSavingsStatus is TRUE, so the pair must give the zone's real
offset at every moment of the year. Unit-level: the machine's zone is set with TZ in this process (the whole device
across a clock change runs in test_wall_clock)."""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from bacnet_api.services import machine_zone

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def zone():
    """Sets the process's zone (TZ) for one test, and puts back what there was."""
    before = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()
    yield set_zone
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def hours(year: int):
    t = datetime(year, 1, 1, tzinfo=timezone.utc)
    while t.year == year:
        yield t
        t += timedelta(hours=1)


@pytest.mark.parametrize("name", [
    "Europe/Rome", "America/New_York", "Pacific/Chatham", "Pacific/Kiritimati", "Europe/Dublin",
    # the clock goes back an hour for Ramadan (February-March in 2026-2027): utcOffset said -60 and daylight saving
    # FALSE for local time that was UTC itself, so a BAS put its UTC an hour off for a month every year
    "Africa/Casablanca",
    "America/Santiago", "Pacific/Apia", "Asia/Kolkata", "UTC"])
@pytest.mark.parametrize("year", [2026, 2027])
def test_utc_offset_and_daylight_saving_give_the_zone_s_offset_all_year(zone, name, year):
    zone(name)
    info = ZoneInfo(name)
    wrong = []
    for t in hours(year):
        offset, summer = machine_zone(t.timestamp())
        real = t.astimezone(info).utcoffset() // timedelta(minutes=1)
        # clause 12.11: utcOffset is local *standard* time's, west positive; summer time is on top of it
        told = -offset + 60 * summer
        if told != real:
            wrong.append((t.isoformat(), offset, summer, real))
    assert not wrong, f"{len(wrong)} hours wrong, the first {wrong[:2]}"


@pytest.mark.parametrize("name, winter, summer", [
    ("Europe/Rome", (-60, False), (-60, True)),
    ("America/New_York", (300, False), (300, True)),
    # +12:45 standard, +13:45 in the southern summer: -765 all year (within 135's -1440..+1440)
    ("Pacific/Chatham", (-765, True), (-765, False)),
    ("Pacific/Kiritimati", (-840, False), (-840, False)),   # +14, no summer time
    ("Europe/Dublin", (0, False), (0, True)),               # tzdata's winter "negative" daylight saving
])
def test_utc_offset_is_standard_time_s_west_positive(zone, name, winter, summer):
    zone(name)
    january, july = (datetime(2027, m, 15, 12, tzinfo=timezone.utc).timestamp() for m in (1, 7))
    assert (machine_zone(january), machine_zone(july)) == (winter, summer)
