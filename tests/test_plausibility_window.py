"""The unit-plausibility window judged from the held minutes alone (judge_held, what add_sample runs each new
quarter-hour) is, to the bit, the one judge_window gives from a snapshot of the thresholds' days (what it ran until
0.4.10): over gaps, frozen spells, clock steps back and resets, reloads, and windows that start before the history."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from forecaster import core
from forecaster.core import DemandForecaster
from forecaster.plausibility import judge_held, judge_window
from forecaster.series import MinuteBins

T0 = dt.datetime(2024, 3, 4, tzinfo=dt.timezone.utc).timestamp()  # a Monday, 00:00 UTC


def _reference(bins: MinuteBins, first: int, last: int, max_gap_minutes: float, days: float):
    """The window as _judge_window took it until 0.4.10: a snapshot from the first minute held in the window on."""
    span = bins.span()
    snap = bins.snapshot(max(first, span[0]), last) if span is not None and span[1] >= first else None
    return judge_window(snap, first, last, max_gap_minutes, days)


def _load(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An office's kW, to the tenth as a BAS writes it (so equal readings happen), with some noise."""
    tod = (t % 86400) / 3600.0
    day = np.clip((tod - 7) / 1.5, 0, 1) * np.clip((19 - tod) / 1.5, 0, 1)
    return np.round(100 + 200 * day + rng.normal(0, 3, t.size), 1)


@pytest.mark.parametrize("days", [14.0, 1.3])     # the default, and a window that is no whole number of quarter-hours
def test_add_sample_judges_the_window_the_snapshot_did_at_every_quarter_hour(monkeypatch, days):
    rng = np.random.default_rng(52)
    fc = DemandForecaster(threshold_days=days, stale_seconds=300.0)
    judged = []

    def judge_both(ks, means, first, last, max_gap_minutes, d, since):
        new = judge_held(ks, means, first, last, max_gap_minutes, d, since)
        judged.append((first, last, new, _reference(fc._bins, first, last, max_gap_minutes, d)))
        return new
    monkeypatch.setattr(core, "judge_held", judge_both)

    def add(t, kw):
        for x, y in zip(t, kw):
            fc.add_sample(float(x), float(y))

    w = days * 86400.0
    # a day and a half of 1-minute readings at jittered seconds, a tenth of the minutes missed, some read twice,
    # with a 5-hour frozen spell and a 20-minute silence (over stale_seconds) in it
    t = T0 + 60.0 * np.arange(int(1.5 * 1440)) + rng.uniform(0, 59, int(1.5 * 1440))
    t = np.sort(np.concatenate([t[rng.random(t.size) > 0.1], t[rng.random(t.size) < 0.05] + 0.5]))
    kw = _load(t, rng)
    kw[(t > T0 + 30_000) & (t < T0 + 48_000)] = 42.0
    keep = ~((t > T0 + 60_000) & (t < T0 + 61_200))
    add(t[keep], kw[keep])
    # then 15-minute readings on the quarter-hour for the window and two days more: a day frozen at one value, rows
    # missed, a 2-hour silence, and readings in W (refused: they never enter the window)
    t = np.arange(T0 + 1.5 * 86400 + 900, T0 + 1.5 * 86400 + w + 2 * 86400, 900.0)
    kw = _load(t, rng)
    kw[(t > T0 + 2 * 86400) & (t < T0 + 3 * 86400)] = 55.5
    kw[rng.random(t.size) < 0.01] *= 300.0
    keep = (rng.random(t.size) > 0.03) & ~((t > t[-1] - 86400) & (t < t[-1] - 79_200))
    add(t[keep], kw[keep])
    # the clock steps back 3 hours (the minutes after are set aside) and goes on
    t = np.arange(t[-1] - 3 * 3600, t[-1] + 86400, 900.0)
    add(t, _load(t, rng))
    # a history loaded mid-quarter-hour (minutes not held yet), as at a restart: judged again with it
    fc.seed(t - 7 * 60.0, _load(t, rng), fill_only=True)
    add([t[-1] + 60.0], [120.0])
    # silent for longer than the window: under a day of demand in it, then a day of readings at 5 minutes past
    t = np.arange(t[-1] + w + 86400 + 300, t[-1] + w + 3 * 86400, 900.0)
    add(t, _load(t, rng))
    # the clock jumps further ahead than the history reaches (all set aside), then steps back further: both resets
    for start in (t[-1] + (fc.keep_days + 5) * 86400, t[-1] + 86400 - (fc.keep_days + 2) * 86400):
        t = np.arange(start, start + 1.2 * 86400, 420.0)
        add(t, _load(t, rng))
    assert fc.clock_resets == 2 and fc.clock_steps == 3 and fc.implausible_rejected > 0

    differ = [(first, last, new, old) for first, last, new, old in judged if new != old]
    assert not differ, f"{len(differ)} of {len(judged)} windows differ, the first: {differ[0]}"
    windows = [new for *_, new, _ in judged if new is not None]
    assert len(judged) > 4 * 96 and len(windows) > 2 * 96       # most quarter-hours were judged, with a window
    assert any(new is None for *_, new, _ in judged[96:])       # after the silence and the resets: none
    assert {x.longest_still_minutes for x in windows} - {None}  # frozen spells measured


def test_judge_held_is_judge_window_over_minutes_held_anywhere():
    # Pure: windows that start before, at and after the first minute held, end past the last, and hold minutes
    # read once, several times, not at all, or in spells of one value
    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(300):
        bins = MinuteBins(10 * 1440)
        n = int(rng.integers(1, 4 * 1440))
        k0 = 1_000_000 + int(rng.integers(0, 15))
        ks = np.sort(rng.choice(np.arange(k0, k0 + n), size=int(rng.integers(1, n + 1)), replace=False))
        kw = np.round(rng.normal(50, 30, ks.size), 0)
        kw[rng.random(ks.size) < 0.3] = 0.0
        bins.add(ks, kw, counts=rng.integers(1, 4, ks.size))
        days = float(rng.uniform(0.9, 3.0))
        last = k0 + int(rng.integers(-60, n + 120))
        first = last - int(days * 1440) + 1
        gap = float(rng.choice([5.0, 30.0, np.inf]))
        held, means = bins.held(first, last)
        since = None if not held.size or bins.holds_before(first) else int(held[0])
        new = judge_held(held, means, first, last, gap, days, since)
        assert new == _reference(bins, first, last, gap, days), (first, last, days, gap)
        compared += new is not None
    assert compared > 50
