"""bacpypes3's getattr_static calls answered as inspect answers them, from the lookup kept per class
(bacnet_api/static_lookup.py)."""
from __future__ import annotations

import importlib
import inspect

import pytest
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject

from bacnet_api import static_lookup
from bacnet_api.device import GatewayDevice
from bacnet_api.objects import read_only

MISSING = object()


def both(obj, name):
    """(inspect's answer, the kept lookup's answer); an AttributeError is answered as its type."""
    answers = []
    for lookup in (inspect.getattr_static, static_lookup.getattr_static):
        try:
            answers.append(lookup(obj, name))
        except AttributeError as err:
            answers.append((AttributeError, str(err)))
        answers.append(lookup(obj, name, MISSING))
    return answers[:2], answers[2:]


def names(obj):
    return [*type(obj)._elements, "propertyList", "_debug", "_elements", "__dict__", "read_property", "nothing_such"]


def stack_objects():
    device = DeviceObject(objectIdentifier=("device", 599), objectName="d", vendorIdentifier=999)
    port = NetworkPortObject("127.0.0.1/8:47808", objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    points = GatewayDevice(address="127.0.0.1/8:47808", device_id=599, device_name="d").point_objects()
    return [device, port, *points]


async def test_every_property_of_the_objects_the_gateway_builds_is_found_as_inspect_finds_it():
    # bacpypes3's local objects schedule their _post_init on the running loop
    objects = stack_objects()
    read_only(objects[0])
    for obj in objects:
        for name in names(obj):
            plain, kept = both(obj, name)
            assert kept == plain, (type(obj).__name__, name)
        # a value set afterwards, then taken away: the instance's own dict is read each time
        obj.description = "set later"
        assert both(obj, "description") == ([obj.description] * 2, [obj.description] * 2)
        del vars(obj)["description"]
        plain, kept = both(obj, "description")
        assert kept == plain and kept[1] is MISSING, type(obj).__name__


class _Plain:
    kind = "class"

    def method(self):
        return "method"

    @property
    def prop(self):
        return "property"


class _Slotted:
    __slots__ = ("slot",)


class _OwnDict:
    @property
    def __dict__(self):      # a class that hides the instance's dict: getattr_static does not look there
        return {"kind": "hidden"}


@pytest.mark.parametrize("make, name", [
    (lambda: _Plain(), "kind"),
    (lambda: _with(_Plain(), kind="instance"), "kind"),          # the instance's own value over a class value
    (lambda: _with(_Plain(), method="instance"), "method"),      # ... and over a method (not a data descriptor)
    (lambda: _with(_Plain(), prop="instance"), "prop"),          # a property wins over the instance's dict
    (lambda: _Plain(), "absent"),
    (lambda: _Slotted(), "slot"),
    (lambda: _with_slot(_Slotted()), "slot"),
    (lambda: _OwnDict(), "kind"),
    (lambda: _Plain, "kind"),                                    # a class itself: inspect answers
    (lambda: _Plain, "mro"),
])
def test_the_rules_of_getattr_static_hold(make, name):
    plain, kept = both(make(), name)
    assert kept == plain


def _with(obj, **values):
    obj.__dict__.update(values)
    return obj


def _with_slot(obj):
    obj.slot = 1
    return obj


def test_install_gives_bacpypes3s_modules_the_kept_lookup_and_leaves_inspect_alone(monkeypatch):
    modules = [importlib.import_module(name) for name in static_lookup.MODULES]
    for module in modules:
        monkeypatch.setattr(module, "inspect", inspect)
    static_lookup.install()
    static_lookup.install()
    for module in modules:
        assert module.inspect.getattr_static is static_lookup.getattr_static
        assert module.inspect.iscoroutinefunction is inspect.iscoroutinefunction
    assert inspect.getattr_static is not static_lookup.getattr_static
