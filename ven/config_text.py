"""The checks of a configuration value as typed, apart from the model that applies them (ven/config.py): text
(control and invisible characters, blanks), hosts and host:port, a BACnet/IP address, the VTN's and the proxy's
URLs (a password in one shown as ***), a token. Each raises ValueError, phrased for the operator."""
from __future__ import annotations

import ipaddress
import re
import unicodedata
import urllib.parse


def fits_a_real(v: float) -> float:
    if abs(v) > 3.4028234663852886e38:   # the largest finite single-precision float
        raise ValueError(f"must be within -3.4e38..3.4e38 (a BACnet Real), got {v:g}")
    return v


# zero-width non-joiner and joiner: typed inside a word of Persian, Hindi and other scripts (and inside an emoji), part
# of the name as it is written there
_JOINERS = "\u200c\u200d"


def typed_text(v: str) -> str:
    """A name, path or URL as typed or pasted: a control character in it (a NUL, a line break from a value pasted or
    set with echo) or a blank around it was taken as part of it, and failed far from here: a registration the VTN
    refused or a URL it did not know, a traceback at `run` for a NUL in a path."""
    bad = next((c for i, c in enumerate(v) if unicodedata.category(c) in ("Cc", "Cf")
                and not (c in _JOINERS and 0 < i < len(v) - 1)), None)
    if bad is not None:
        # Cf: a zero-width space or byte-order mark copied from a web page or a document, invisible in an editor
        what = "a control character" if unicodedata.category(bad) == "Cc" else "an invisible character"
        raise ValueError(f"holds {what} ({bad!r}), got {v!r}")
    if v != v.strip():
        raise ValueError(f"has a blank at its start or end, taken as part of it: remove it, got {v!r}")
    return v


def is_loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":   # "localhost." is the same name, fully qualified
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


# underscores too: not valid in DNS host names, but container names (edgegateway_vtn_1) resolve
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """An IP literal or a DNS name: a value such as "http://127.0.0.1" must fail here, not at bind time."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    # an all-digit last label is a mistyped IPv4 address (300.1.1.1), never a resolvable name
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if (not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536
            or not _is_host(host)):
        raise ValueError(f"{what} must look like host:port (no scheme or path), got {value!r}")
    return value


def check_bacnet_address(value: str) -> str:
    """Raise ValueError unless `value` is an ip/mask:port a BACnet/IP stack can bind to."""
    ip_mask, sep, port = value.rpartition(":")
    mask = ip_mask.partition("/")[2]
    if not sep or "/" not in ip_mask or not (port.isascii() and port.isdigit()):
        raise ValueError(f"must look like ip/mask:port, e.g. 127.0.0.1/8:47808, got {value!r}")
    try:
        ipaddress.IPv4Interface(ip_mask)
    except ValueError as err:
        raise ValueError(f"{value!r}: {err}") from None
    # BAC0 reads the mask with int() and treats 0 as "not given": 255.0.0.0 or /0 would silently
    # become /24 on the default port
    if not (mask.isascii() and mask.isdigit()) or not 1 <= int(mask) <= 32:
        prefix = ipaddress.IPv4Interface(ip_mask).network.prefixlen   # a dotted netmask, as a NIC's settings show it
        meant = f"; did you mean {ip_mask.partition('/')[0]}/{prefix}:{port}?" if "." in mask and prefix else ""
        raise ValueError(f"{value!r}: the mask must be a prefix length 1..32, e.g. /24{meant}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: port must be 1..65535")
    iface = ipaddress.IPv4Interface(ip_mask)
    ip, net = iface.ip, iface.network
    # no NIC holds one of these: bacpypes3 bound to it anyway and the device "answered" nothing (a multicast
    # address), or failed each broadcast in a traceback (the network's broadcast address)
    kind = ("any address" if ip.is_unspecified else "a multicast address" if ip.is_multicast
            else "a broadcast or reserved address" if ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255")
            else f"the broadcast address of {net}" if net.prefixlen <= 30 and ip == net.broadcast_address
            else f"the network address of {net}" if net.prefixlen <= 30 and ip == net.network_address else None)
    if kind:
        raise ValueError(f"{value!r}: {ip} is {kind}, not a station's: give the address of the NIC that faces the BAS")
    return value


def shown_url(url: str) -> str:
    """A URL as the log, check-config and /api/status show it: a password in it (user:password@, which aiohttp
    sends as basic auth) as ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # a URL urlsplit refuses (a stray "[") may still carry a password: mask what looks like one
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}").geturl()


# the OpenADR 2.0b services, each a path segment after the VTN's URL
_SERVICES = {"eievent", "eireport", "eiregisterparty", "eiopt", "oadrpoll"}


def _url_text(v: str, shown: str) -> None:
    # a blank pasted after the URL went to the VTN as %20 in every request's path: 404 at each registration; urlsplit
    # itself drops a line break or tab, which aiohttp sends
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in v):
        raise ValueError(f"holds a blank, control or invisible character (pasted with it?), got {shown!r}")


def _scheme_lower(v: str) -> str:
    """A URL's scheme in lower case: it is case-insensitive (RFC 3986), and HTTPS:// copied from a utility's letter was
    refused as not starting with https://; what reads the URL after (the warnings, the transport) compares it as
    written."""
    scheme, sep, rest = v.partition("://")
    return f"{scheme.lower()}{sep}{rest}" if sep and scheme.lower() in ("http", "https") else v


def check_vtn_url(v: str) -> str:
    """Raise ValueError unless `v` is a VTN's base URL (openadr.vtn_url)."""
    # the errors go to the journal (check-config is the unit's ExecStartPre): the password in it as *** there too
    v = _scheme_lower(v)
    shown = shown_url(v)
    _url_text(v, shown)
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {shown!r}")
    try:
        url = urllib.parse.urlsplit(v)
        port = url.port  # urlsplit checks the port only when it is read
    except ValueError as err:
        raise ValueError(f"{shown!r}: {err}") from None
    if port == 0:
        raise ValueError(f"{shown!r}: port must be 1..65535")
    if not url.hostname or not _is_host(url.hostname):
        raise ValueError(f"needs a host, e.g. http://vtn.example:8080/OpenADR2/Simple/2.0b, got {shown!r}")
    # each request goes to vtn_url + "/" + the service: after a query or a fragment, or after a service already
    # (a request URL copied from the VTN's log), every one of them was a 404
    if url.query or url.fragment or v.endswith(("?", "#")):
        raise ValueError(f"takes no ?query or #fragment (the gateway appends /EiEvent, /OadrPoll ... to it), "
                         f"got {shown!r}")
    service = url.path.rstrip("/").rpartition("/")[2]
    if service.lower() in _SERVICES:
        base = shown.rstrip("/").removesuffix(service).rstrip("/")
        raise ValueError(f"ends in the OpenADR service {service} (the gateway appends each service to it): "
                         f"did you mean {base!r}?")
    return v


def check_proxy_url(v: str) -> str:
    """Raise ValueError unless `v` is an HTTP proxy's URL (openadr.proxy); "" passes."""
    if not v:
        return v
    v = _scheme_lower(v)
    shown = shown_url(v)
    _url_text(v, shown)
    example = "e.g. http://proxy.site:3128 or http://user:password@proxy.site:3128"
    if not v.startswith("http://"):
        # https:// to the VTN goes through the proxy too (CONNECT); only the hop to the proxy is plain http
        raise ValueError(f"must start with http:// (the hop to the proxy; an https:// VTN is reached through it "
                         f"with CONNECT), {example}, got {shown!r}")
    try:
        url = urllib.parse.urlsplit(v)
        port = url.port
    except ValueError as err:
        raise ValueError(f"{shown!r}: {err}") from None
    if not url.hostname or not _is_host(url.hostname) or not port:
        raise ValueError(f"needs a host and a port, {example}, got {shown!r}")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"takes no path, {example}, got {shown!r}")
    return v


UNSENDABLE = "a control character inside (a line break?), which no HTTP client can send in a header"


def unsendable(token: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in token)


def not_typed(v: str) -> bool:
    try:
        typed_text(v)
    except ValueError:
        return True
    return False
