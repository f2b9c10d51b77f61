"""What `[meter]`'s address, object and property may say, judged as bacpypes3 reads them: the configuration's
validators ask here, so the BACnet rules stay in the package that speaks BACnet. Each returns the value or raises
ValueError with the reason (the configuration names the key)."""
from __future__ import annotations

import re

# bacpypes3 takes about 0.2 s to import, which `edge-gateway --help` should not pay: the configuration imports this
# module when it reads a file
from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.pdu import Address, combined_pattern
from bacpypes3.primitivedata import ObjectIdentifier, ObjectType

from .client import object_id  # the parse the meter reader applies

_FORM = "network:mac (e.g. 12345:2) or a BACnet/IP meter's ip[:port] (e.g. 192.168.1.20:47808)"


def check_meter_address(v: str) -> str:
    # combined_pattern first: a string it does not match, bacpypes3 resolves as a host name (DNS)
    if "*" in v or not combined_pattern.match(v):
        raise ValueError(f"must be {_FORM}, got {v!r}")
    try:
        addr = Address(v)
    except ValueError as err:
        net, _, mac = v.partition(":")
        # the MS/TP MAC written first, as some meter labels and BAS tools show it ("2:12345")
        swapped = (f"; did you mean {mac}:{net}? (network first)"
                   if net.isdigit() and mac.isdigit() and int(net) <= 255 and 0 < int(mac) < 65535 else "")
        raise ValueError(f"{v!r}: {err} (network 1..65534, mac 0..255 or hex bytes){swapped}") from None
    if addr.addrType != Address.remoteStationAddr and len(addr.addrAddr) != 6:  # 6: IPv4 + port
        raise ValueError(f"must be {_FORM}, got {v!r}")
    for port in re.findall(r"\d+\.\d+\.\d+\.\d+:(\d+)", v):  # bacpypes3 keeps 70000 and fails at send
        if not 0 < int(port) < 65536:
            raise ValueError(f"{v!r}: port must be 1..65535")
    return v


def check_object(v: str) -> str:
    kind, _, inst = object_id(v).partition(",")
    if not kind or not inst:
        raise ValueError(f"must look like 'analogInput 2', got {v!r}")
    try:
        ObjectType(kind)
    except ValueError:
        raise ValueError(f"unknown BACnet object type {kind!r} (e.g. analogInput, analogValue)") from None
    try:
        ObjectIdentifier(f"{kind},{inst}")
    except ValueError:
        raise ValueError(f"instance must be a whole number 0..4194302, got {v!r}") from None
    return v


def check_property(v: str) -> str:
    try:
        PropertyIdentifier(v)
    except ValueError:
        raise ValueError(f"unknown BACnet property {v!r} (e.g. presentValue)") from None
    return v
