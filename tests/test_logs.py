"""The operator log's flood guard, on records as the stacks make them (pure: no handlers but a list)."""
from __future__ import annotations

import logging

from ven.logs import FloodGuard


def _passed(guard: FloodGuard, name: str, msg: str, *args) -> bool:
    return guard.filter(logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args or None, None))


def test_a_stack_message_formatted_by_the_stack_itself_is_one_kind_whatever_its_numbers():
    # openleadr formats its messages itself (f-strings): keyed by their whole text, each repeat with another
    # status, port or request id was a new kind and got its own line
    guard = FloodGuard()
    assert _passed(guard, "openleadr", "Non-OK status 500 when performing a request to "
                                       "http://127.0.0.1:8080/OpenADR2/Simple/2.0b/EiEvent: 7f3a9c01 failed")
    assert not _passed(guard, "openleadr", "Non-OK status 502 when performing a request to "
                                           "http://127.0.0.1:8081/OpenADR2/Simple/2.0b/EiEvent: 0b44e2aa failed")
    assert _passed(guard, "openleadr", "The VTN could not be reached")       # another kind still gets its line


def test_templated_messages_are_keyed_by_their_template():
    guard = FloodGuard()
    assert _passed(guard, "bacpypes3.x", "decoding error from %s", "10.0.0.1")
    assert not _passed(guard, "bacpypes3.x", "decoding error from %s", "10.0.0.2")
    assert _passed(guard, "ven.vtn", "not a stack: %s", "always")            # the gateway's own lines pass
    assert _passed(guard, "ven.vtn", "not a stack: %s", "always")
