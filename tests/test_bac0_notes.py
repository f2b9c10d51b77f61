"""BAC0's DEBUG notes name their caller's module without inspect.stack() (bacnet_api/bac0_notes.py)."""
from __future__ import annotations

import inspect
import logging

from BAC0.core.utils import notes
from BAC0.core.utils.notes import note_and_log

from bacnet_api.bac0_notes import find_callers_by_frame


@note_and_log
class _Noted:
    def say(self, text, level="debug"):
        self.log(text, level=level)


def _said(level="debug"):
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    # a gateway started earlier in this worker routed every BAC0 logger to the root's level (device.py)
    level_was = _Noted._log.level
    _Noted._log.setLevel(logging.DEBUG)
    _Noted._log.addHandler(handler)
    try:
        _Noted().say("hello", level=level)
    finally:
        _Noted._log.removeHandler(handler)
        _Noted._log.setLevel(level_was)
    return [r.getMessage() for r in records]


def test_a_debug_note_names_the_same_caller_without_reading_the_stack(monkeypatch):
    monkeypatch.setattr(notes, "inspect", inspect)      # BAC0's own lookup, as it ships
    before = _said()
    assert before and before[0].endswith(f"| {__name__} | hello"), before   # the caller: this module

    find_callers_by_frame()

    def whole_stack(*args, **kwargs):
        raise AssertionError("inspect.stack() called")
    monkeypatch.setattr(inspect, "stack", whole_stack)
    assert _said() == before
    assert _said("info") == ["hello"]       # INFO lines never named the caller
