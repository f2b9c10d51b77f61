"""bacpypes3 calls inspect.getattr_static when it builds a Sequence (once for each element left out: an object has
dozens), when a local object's property is read or written, and when it lists an object's properties. On Python
3.11 each call walks the class's MRO, and for every class in it the metaclass's MRO, with an exception per miss:
about 3.4 ms of CPU for each object the gateway builds, and 8 % of the test suite's CPU (py-spy over a full run,
December 2026). The class's side of the answer depends only on the class and the name, so it is kept per class;
the instance's own dict is still read each time. The answer is getattr_static's (`tests/test_static_lookup.py`
compares them), on the assumption bacpypes3 keeps too: a class is not changed once its objects are made."""
from __future__ import annotations

import importlib
import inspect
import types
import weakref

_MISSING = object()
# class -> {name: (the class's answer or _MISSING, whether it wins over the instance's dict)}
_by_class: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_getmro = type.__dict__["__mro__"].__get__
_class_dict = type.__dict__["__dict__"].__get__

# the bacpypes3 modules that call inspect.getattr_static, as of bacpypes3 0.0.110
MODULES = ("bacpypes3.constructeddata", "bacpypes3.local.object", "bacpypes3.service.object", "bacpypes3.debugging")


def _shadowed_dict(klass: type):
    """A `__dict__` some class of klass's MRO defines in place of the usual one, else _MISSING (inspect's rule)."""
    for entry in _getmro(klass):
        class_dict = _class_dict(entry).get("__dict__", _MISSING)
        if class_dict is not _MISSING and not (type(class_dict) is types.GetSetDescriptorType
                                               and class_dict.__name__ == "__dict__"
                                               and class_dict.__objclass__ is entry):
            return class_dict
    return _MISSING


def _in_class(klass: type, name: str):
    for entry in _getmro(klass):
        if _shadowed_dict(type(entry)) is _MISSING:
            value = _class_dict(entry).get(name, _MISSING)
            if value is not _MISSING:
                return value
    return _MISSING


def _class_answer(klass: type, name: str) -> tuple[object, bool]:
    found = _in_class(klass, name)
    dict_attr = _shadowed_dict(klass)
    reads_instance = dict_attr is _MISSING or type(dict_attr) is types.MemberDescriptorType
    # a data descriptor on the class is found before the instance's own value, as attribute access finds it
    data_descriptor = found is not _MISSING and _in_class(type(found), "__get__") is not _MISSING and (
        _in_class(type(found), "__set__") is not _MISSING or _in_class(type(found), "__delete__") is not _MISSING)
    return found, data_descriptor or not reads_instance


def getattr_static(obj, name, default=_MISSING):
    """inspect.getattr_static(obj, name[, default]), the class's part kept per class."""
    klass = type(obj)
    if issubclass(klass, type):      # a class itself: its metaclass is looked at too; bacpypes3 never asks this
        return inspect.getattr_static(obj, name) if default is _MISSING else inspect.getattr_static(obj, name, default)
    answers = _by_class.get(klass)
    if answers is None:
        answers = _by_class[klass] = {}
    answer = answers.get(name)
    if answer is None:
        answer = answers[name] = _class_answer(klass, name)
    found, class_wins = answer
    if not class_wins:
        try:
            own = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            own = {}
        value = dict.get(own, name, _MISSING)
        if value is not _MISSING:
            return value
    if found is not _MISSING:
        return found
    if default is not _MISSING:
        return default
    raise AttributeError(name)


class _Inspect:
    """What the modules see as `inspect`: this getattr_static, everything else inspect's own."""
    getattr_static = staticmethod(getattr_static)

    def __getattr__(self, name):
        return getattr(inspect, name)


def install() -> None:
    """Give bacpypes3's modules the kept lookup (idempotent)."""
    for name in MODULES:
        module = importlib.import_module(name)
        if module.__dict__.get("inspect") is inspect:
            module.inspect = _Inspect()
