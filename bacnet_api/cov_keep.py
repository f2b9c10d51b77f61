"""The device's COV subscriptions as plain values, and taken back: what a caller keeps across a restart of the
device (the stack holds them in memory only, and a BAS that subscribed with lifetime 0 is never told they are gone).

`subscriptions(device)` lists them as dicts, `restore(device, kept)` puts them back (each notified at once, as a new
subscription is) and `on_change(device, callback)` calls `callback()` whenever one is added, renewed, cancelled or
runs out. Restored ones take their place within the shares a SubscribeCOV is held to (services.py). `note_requests`
keeps restore() from putting back one the subscriber has subscribed to, renewed or cancelled since (a restore after the
device has served a while), and `summary(device)` is what an operator is shown of them."""
from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from typing import Any, Callable

from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from bacpypes3.service.cov import Subscription

from .client import same_station

log = logging.getLogger(__name__)

# why a kept subscription was not restored, as the caller's log line says it
GONE = "to an object the device no longer serves"
OTHER_DEVICE = "to another device instance (bacnet.device_id changed)"
NO_ROOM = "past the device's or its source's share of subscriptions"
OWN_ADDRESS = "naming the device's own address"
TAKEN = "already held again"
SINCE = "cancelled (or renewed, then run out) by the subscriber since the start"
# requests note_requests() notes at most: the file keeps no more than the device holds (MAX_COV_SUBSCRIPTIONS), and a
# flood of cancellations from made-up sources must not grow memory without bound
NOTED_AT_MOST = 1000

_FIELDS = {"recipient": str, "process": int, "object": str, "object_name": str, "device": int, "confirmed": bool,
           "lifetime": int}


def subscriptions(device: Any) -> list[dict]:
    """Each subscription the device holds: {"recipient": address ("ip:port", or "network:mac" behind a router),
    "process", "object" ("analog-value,6"), "object_name", "device" (the device instance), "confirmed",
    "lifetime" (as asked, 0 indefinite), "remaining" (s, None if indefinite), "cov_increment" (None: none asked),
    "forwarded_by" (the host that forwarded a Forwarded-NPDU it came in, whose share it counts against, or None),
    "router" (the router a recipient behind one was reached through, "ip:port", or None)}."""
    app = device.app
    now = asyncio.get_running_loop().time()
    instance = int(app.device_object.objectIdentifier[1])
    listed = []
    for cov in app._cov_subscriptions():
        if cov.obj_ref is None:
            continue
        holder = getattr(cov, "_holder", None)
        listed.append({
            "recipient": str(cov.client_addr),
            "process": int(cov.proc_id),
            "object": str(cov.obj_id),
            "object_name": str(cov.obj_ref.objectName),
            "device": instance,
            "confirmed": bool(cov.confirmed),
            "lifetime": int(cov.lifetime or 0),
            "remaining": None if cov.cancel_handle is None else max(0.0, cov.cancel_handle.when() - now),
            "cov_increment": None if cov.covIncrement is None else float(cov.covIncrement),
            "forwarded_by": _forwarder(holder),
            "router": _router_to(app, cov.client_addr),
        })
    return listed


def summary(device: Any) -> dict:
    """{"count": how many subscriptions the device holds, "subscribers": [{"address": the recipient, "objects": how
    many, "shortest_remaining_seconds": the soonest to run out (None: all indefinite)}], most objects first}."""
    if not device.running:
        return {"count": 0, "subscribers": []}
    by_address: dict[str, list] = {}
    for sub in subscriptions(device):
        by_address.setdefault(sub["recipient"], []).append(sub["remaining"])
    subscribers = [{"address": address, "objects": len(left),
                    "shortest_remaining_seconds": min((round(r, 1) for r in left if r is not None), default=None)}
                   for address, left in by_address.items()]
    subscribers.sort(key=lambda s: (-s["objects"], s["address"]))
    return {"count": sum(s["objects"] for s in subscribers), "subscribers": subscribers}


def check(kept: Any) -> list[dict]:
    """`kept` as subscriptions() lists them, checked: ValueError naming what is wrong with it."""
    if not isinstance(kept, list):
        raise ValueError(f"a list expected, not {type(kept).__name__}")
    seen = set()
    for n, sub in enumerate(kept):
        if not isinstance(sub, dict):
            raise ValueError(f"subscription {n}: an object expected")
        for key, kind in _FIELDS.items():
            value = sub.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"subscription {n}: {key} {value!r}")
        if sub["process"] < 0 or sub["lifetime"] < 0:
            raise ValueError(f"subscription {n}: a negative process or lifetime")
        remaining, increment = sub.get("remaining"), sub.get("cov_increment")
        if remaining is not None and (not _number(remaining) or remaining < 0):
            raise ValueError(f"subscription {n}: remaining {remaining!r}")
        if sub["lifetime"] and remaining is None or not sub["lifetime"] and remaining is not None:
            raise ValueError(f"subscription {n}: lifetime {sub['lifetime']} with remaining {remaining!r}")
        if increment is not None and (not _number(increment) or increment < 0):
            raise ValueError(f"subscription {n}: cov_increment {increment!r}")
        for key in ("forwarded_by", "router"):
            if sub.get(key) is not None and not isinstance(sub[key], str):
                raise ValueError(f"subscription {n}: {key} {sub[key]!r}")
        try:
            address = Address(sub["recipient"])
            router = Address(sub["router"]) if sub.get("router") else None
            ObjectIdentifier(sub["object"])
        except Exception as err:  # noqa: BLE001 - bacpypes3 raises ValueError, TypeError or its own for a bad text
            raise ValueError(f"subscription {n}: {err}") from None
        if address.addrType not in (Address.localStationAddr, Address.remoteStationAddr):
            raise ValueError(f"subscription {n}: recipient {sub['recipient']!r} is not one station")
        if router is not None and router.addrType != Address.localStationAddr:
            raise ValueError(f"subscription {n}: router {sub['router']!r} is not a station of this network")
        key = (str(address), sub["process"], str(ObjectIdentifier(sub["object"])))
        if key in seen:
            raise ValueError(f"subscription {n}: listed twice")
        seen.add(key)
    return kept


async def restore(device: Any, kept: list[dict]) -> Counter:
    """Put back subscriptions as subscriptions() listed them (check()ed), each with its `remaining` lifetime, and
    send each its first notification (the current values) once the loop turns (nothing is awaited after they are
    added). Returns {why not: how many} of those not restored (one of the constants above)."""
    app = _watched(device.app)     # a restored one gives way (_give_way)
    loop = asyncio.get_running_loop()
    asked = app._cov_asked or set()
    await _routes(app, kept)
    instance = int(app.device_object.objectIdentifier[1])
    left: Counter = Counter()
    for sub in kept:
        address, obj_id = Address(sub["recipient"]), ObjectIdentifier(sub["object"])
        obj = app.get_object_id(obj_id)
        if sub["device"] != instance:
            left[OTHER_DEVICE] += 1
            continue
        if obj is None or getattr(obj, "_cov_criteria", None) is None or str(obj.objectName) != sub["object_name"]:
            left[GONE] += 1     # a release with other points: another point may hold the identifier now
            continue
        if same_station(str(address), app._own_address):
            left[OWN_ADDRESS] += 1
            continue
        if any((c.client_addr, c.proc_id, c.obj_id) == (address, sub["process"], obj_id)
               for c in app._cov_subscriptions()):
            left[TAKEN] += 1    # the subscriber came back first, with its own parameters
            continue
        if (str(address), sub["process"], str(obj_id)) in asked:
            left[SINCE] += 1    # its last word since the start was a cancellation, or a lifetime that ran out
            continue
        forwarder = sub.get("forwarded_by")
        holder = (_held_in_forwards(forwarder), False) if forwarder else (str(address), app._listed(address))
        if app._no_room(*holder):
            left[NO_ROOM] += 1
            continue
        detection = app._cov_detections.get(obj_id)
        if detection is None:
            detection = app._cov_detections[obj_id] = obj._cov_criteria(obj)
        lifetime = sub["lifetime"]
        # a lifetime of 0 is indefinite: one with a fraction of a second left must not become that
        cov = Subscription(obj, address, sub["process"], obj_id, sub["confirmed"],
                           max(sub["remaining"], 0.001) if lifetime else 0, sub.get("cov_increment"))
        cov.lifetime = lifetime     # as asked: a renewal without a lifetime of its own is not one
        cov._holder = holder
        cov._restored = True
        app.add_subscription(cov)
        loop.call_soon(detection.send_cov_notifications, cov)
    _changed(app)
    return left


async def _routes(app: Any, kept: list[dict]) -> None:
    """The path to each routed recipient's network, as the last run knew it. The stack learns one from a request
    that came through a router, and a restarted one knows none: it would ask the network with a broadcast
    Who-Is-Router-To-Network first, which two routers to that network (or a site that filters broadcasts) leave
    unanswered, and the notification would go nowhere. A path learnt since (a request through another router) stands."""
    cache = app.nsap.router_info_cache
    for sub in kept:
        address = Address(sub["recipient"])
        if not sub.get("router") or address.addrType != Address.remoteStationAddr:
            continue
        for snet in list(app.nsap.adapters):
            if await cache.get_path_info(snet, address.addrNet) is None:
                await cache.update_path_info(snet, Address(sub["router"]), {address.addrNet})


def _router_to(app: Any, address: Any) -> str | None:
    if address.addrType != Address.remoteStationAddr:
        return None
    for (_snet, dnet), (router, _status) in app.nsap.router_info_cache.path_info.items():
        if dnet == address.addrNet:
            return str(router)
    return None


def note_requests(device: Any, on: bool) -> None:
    """From now (`on`) until off, which forgets them: which subscriptions the subscribers subscribe to, renew or cancel.
    A subscription kept from before the restart that its subscriber cancelled meanwhile (answered as any cancellation
    of one the device does not hold) must not come back at a later restore(), nor one it renewed for a while that ran
    out since."""
    _watched(device.app)._cov_asked = set() if on else None


def on_change(device: Any, callback: Callable[[], None] | None) -> None:
    """Call `callback()` (None: nothing) whenever a subscription is added, renewed, cancelled or runs out."""
    _watched(device.app)._cov_changed = callback


_CLASSES: dict[type, type] = {}


def _watched(app: Any) -> Any:
    if not isinstance(app, _Watched):
        cls = type(app)
        if cls not in _CLASSES:     # one class, not one a start
            _CLASSES[cls] = type(f"Watched{cls.__name__}", (_Watched, cls), {})
        app.__class__ = _CLASSES[cls]
    return app


class _Watched:
    _cov_changed: Callable[[], None] | None = None
    _cov_asked: set | None = None   # note_requests(): (recipient, process, object) as text

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        key = (apdu.pduSource, apdu.subscriberProcessIdentifier, apdu.monitoredObjectIdentifier)
        same = [c for c in self._cov_subscriptions() if (c.client_addr, c.proc_id, c.obj_id) == key]
        for cov in same:
            cov._restored = False   # the subscriber holds it: renewed (or cancelled)
        if not same and apdu.issueConfirmedNotifications is not None:
            self._give_way(apdu)
        await super().do_SubscribeCOVRequest(apdu)    # refused: it raised, and nothing changed
        if self._cov_asked is not None and len(self._cov_asked) < NOTED_AT_MOST:
            self._cov_asked.add((str(key[0]), int(key[1]), str(key[2])))
        _changed(self)

    def _give_way(self, apdu: Any) -> None:
        """A new subscription its source's share has no room for takes the place of a restored one of that source to
        the same object that the subscriber has not renewed since: a subscriber that restarted with new process
        identifiers, whose old ones (indefinite, unconfirmed, never refused) would otherwise hold its share for good,
        across restarts of the gateway too, and its new ones be refused."""
        holder = self._cov_holder(apdu.pduSource)
        if not self._no_room(*holder):
            return
        old = next((c for c in self._cov_subscriptions() if getattr(c, "_restored", False)
                    and getattr(c, "_holder", None) == holder and c.obj_id == apdu.monitoredObjectIdentifier), None)
        if old is None:
            return
        if self._first_from("cov-gave-way", holder[0]):
            log.info("BACnet COV subscriptions from %s restored from before the restart give way to its new ones as "
                     "its share fills (a subscriber restarted with new process identifiers?): process %d %s for "
                     "process %d, and so on without a line", holder[0], old.proc_id, old.obj_id,
                     apdu.subscriberProcessIdentifier)
        self.cancel_subscription(old)

    def cancel_subscription(self, cov: Any) -> None:
        super().cancel_subscription(cov)     # a cancellation, a lifetime's end, a subscriber gone silent
        _changed(self)


def _changed(app: Any) -> None:
    callback = getattr(app, "_cov_changed", None)
    if callback is not None:
        callback()


_FORWARDED = " (in Forwarded-NPDUs)"    # services._cov_holder's holder of a forwarded subscription


def _held_in_forwards(host: str) -> str:
    return f"{host}{_FORWARDED}"


def _forwarder(holder: tuple[str, bool] | None) -> str | None:
    if holder is None or not holder[0].endswith(_FORWARDED):
        return None
    return holder[0][:-len(_FORWARDED)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
