"""Settings that are valid but lose something the reader of the config likely wants: warnings, not errors (an
install that worked keeps starting), mixed into the sections of ven/config.py that say them; check-config, the
start-up log and /api/status show them. What check-config finds on the machine is ven/config_checks.py's."""
from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Mapping

from .config_checks import zone_mismatch
from .config_text import is_loopback_host, shown_url

# forecaster.features.DEMAND_MINUTES, not imported: it would bring numpy into the start-up before the device answers
_DEMAND_SECONDS = 15 * 60

# A wrong token is answered at most a second late (ven.http_api.REFUSED_DELAY_MAX_S), over 64 connections at once:
# 4 digits fall in minutes. 16 random characters are out of reach however many guesses
MIN_TOKEN_CHARS = 16


class OpenadrWarnings:
    """OpenadrConfig's warnings."""

    def transport_warnings(self) -> list[str]:
        """What a VTN off this machine is exposed to through this configuration. On loopback nothing crosses a
        network (the demo, the examples). The host alone is named: a URL may carry a password."""
        host = urllib.parse.urlsplit(self.vtn_url).hostname or ""
        if is_loopback_host(host):
            return []
        if self.vtn_url.startswith("http://"):
            # openleadr's VTN checks a VEN's signatures only over TLS; the VEN checks the VTN's (and refuses
            # unsigned answers) only with vtn_fingerprint
            injected = (" (openadr.vtn_fingerprint still refuses events the VTN did not sign)" if self.vtn_fingerprint
                        else ", and anyone on the path can send the gateway events, which drive ADR-Event-Level")
            password = (", the utility account's password (user:password@ in the URL)"
                        if urllib.parse.urlsplit(self.vtn_url).password is not None else "")
            return [f"{self.named('vtn_url')} is plain http to {host}, not loopback: events, opt answers{password} and "
                    f"telemetry cross the network in clear text{injected}: use https:// with openadr.cert and "
                    f"openadr.key"]
        if not self.cert:
            # the VEN then presents no client certificate and signs nothing: openleadr's VTN resets the
            # handshake, or answers 463 once registered
            return [f"{self.named('vtn_url')} is https but openadr.cert and openadr.key are unset: the gateway "
                    f"presents no client certificate, so the VTN refuses it (OpenADR 2.0b requires one) or cannot "
                    f"tell its opt answers and telemetry from anyone else's: set both"]
        return []

    def environment_proxy_warnings(self, environ: Mapping[str, str]) -> list[str]:
        """A proxy variable in the gateway's environment while openadr.proxy is unset: whoever set it (in the unit
        file, the container) expects the VTN to be reached through it, and would find only "VTN unreachable"."""
        host = urllib.parse.urlsplit(self.vtn_url).hostname or ""
        if self.proxy or is_loopback_host(host):
            return []
        scheme = "https" if self.vtn_url.startswith("https://") else "http"
        no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        if no_proxy and urllib.request.proxy_bypass_environment(host, {"no": no_proxy}):
            return []
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
            if environ.get(name):
                return [f"{name} is set in the gateway's environment ({shown_url(environ[name])}) but is not read: "
                        f"requests go straight to {host}; to reach the VTN through that proxy set openadr.proxy"]
        return []


class HttpWarnings:
    """HttpConfig's warnings."""

    def warnings(self) -> list[str]:
        """What the operator API exposes through this configuration. Warnings, not errors: an install that worked
        keeps starting. The token itself is never shown."""
        if not self.enabled:
            return []
        out = []
        if not is_loopback_host(self.address.rpartition(":")[0]):
            out.append(f"http.address {self.address} is not loopback: the dashboard, the API's answers and http.token "
                       f"cross the network in clear text (plain HTTP): put a reverse proxy with TLS in front, with "
                       f"http.address on 127.0.0.1, or reach it through an ssh tunnel")
        if self.token and len(self.token) < MIN_TOKEN_CHARS:
            out.append(f"http.token is {len(self.token)} characters: short enough to be found by trying (wrong tokens "
                       f"are only slowed down a little): use at least {MIN_TOKEN_CHARS} random characters "
                       f"(openssl rand -hex 16 makes 32)")
        return out


class GatewayWarnings:
    """GatewayConfig's warnings, each section's among them."""

    def _poll_too_slow(self) -> str | None:
        """The meter read no more often than the forecaster calls its power stale: between two readings the forecast,
        rate and load-flag points went to fault, with a WARNING "no power input" of a meter that answered each read."""
        poll, stale = self.meter.poll_seconds, self.forecaster.input_stale_seconds
        if poll < stale:
            return None
        return (f"meter.poll_seconds ({poll:g}) is not under forecaster.input_stale_seconds ({stale:g}): between two "
                f"meter readings the forecaster has no power input, and the forecast, power-rate-of-change and load "
                f"flag points show fault")

    def _thresholds_beyond_the_input(self) -> list[str]:
        # power outside bacnet.input_min_kw..input_max_kw is refused, and so is a forecast: a threshold beyond them
        # kept its flag off for good (a kW threshold beside an input_max_kw written in MW, say). One at a bound is
        # reached: the bounds take their own value, a flag turns on at its threshold, and a sub-meter's site with
        # input_min_kw 0 forecasts 0 kW each night (low_load_kw 0: its plant is off)
        b, f, out = self.bacnet, self.forecaster, []
        if f.high_load_kw is not None and f.high_load_kw > b.input_max_kw:
            out.append(f"forecaster.high_load_kw ({f.high_load_kw:g}) is above bacnet.input_max_kw "
                       f"({b.input_max_kw:g}): power above that is refused, so high-load-conditions never turns on")
        if f.low_load_kw is not None and f.low_load_kw < b.input_min_kw:
            out.append(f"forecaster.low_load_kw ({f.low_load_kw:g}) is below bacnet.input_min_kw "
                       f"({b.input_min_kw:g}): power below that is refused, so low-load-conditions never turns on")
        return out

    def raised(self) -> list[str]:
        """What the load raised to a floor or cut to fit (ven.config_load): the values used are not the ones given."""
        return list(self._raised.values())

    def warnings(self) -> list[str]:
        """Settings that are valid but lose something the reader of the config likely wants."""
        out = self.raised()    # values used other than the ones given: first, they change what runs
        # (no report interval at all with openadr.telemetry = false)
        if self.openadr.telemetry and self.meter.poll_seconds > self.openadr.telemetry_seconds:
            out.append(f"meter.poll_seconds ({self.meter.poll_seconds:g}) is longer than openadr.telemetry_seconds "
                       f"({self.openadr.telemetry_seconds:g}): report intervals the meter was not read in are not "
                       f"sent to the VTN")
        if self.meter.router:
            from bacnet_api.client import network_of
            if network_of(self.meter.address) is None:
                out.append(f"meter.router ({self.meter.router}) is not used: meter.address {self.meter.address} is a "
                           f"BACnet/IP address, read directly; meter.router is for a meter on another network "
                           f"(network:mac, e.g. 12345:2): leave it empty")
        # warnings, not errors: each costs the forecaster's points only, and a site upgraded with one had its gateway
        # refuse to start, its demand response with it
        why = self._poll_too_slow() if self.forecaster.source != "bacnet_input" else None
        if why:     # auto: only while the meter stands in for a BAS that stopped writing
            out.append(f"{why}: read the meter more often or raise input_stale_seconds" if self.forecaster.source ==
                       "meter" else f"{why} whenever the meter stands in for the BAS input (forecaster.source auto)")
        out += self._thresholds_beyond_the_input()
        password = self.bacnet.dcc_password
        if password != password.strip():
            # not refused: a config an earlier release took must not stop the site's gateway at an upgrade
            out.append("bacnet.dcc_password begins or ends with a blank, which is part of it: a BAS operator must type "
                       "it too, or DeviceCommunicationControl is refused as a wrong password; remove it if not meant")
        stale = self.forecaster.input_stale_seconds
        if stale > _DEMAND_SECONDS:
            out.append(f"forecaster.input_stale_seconds ({stale:g}) is longer than the 15-minute demand window: "
                       f"about 15 minutes without power show the forecasts and the rate in fault while the input "
                       f"does not count as stale yet (no warning, and `auto` does not turn to the meter until "
                       f"{stale:g} s)")
        if self.openadr.ca_file and self.openadr.vtn_url.startswith("http://"):
            # set for a VTN on TLS, with the URL's scheme left at the example's http://
            out.append(f"{self.openadr.named('ca_file')} is set but {self.openadr.named('vtn_url')} is plain http://: "
                       f"it is not used, nothing checks the VTN's certificate (https:// meant?)")
        out += self.openadr.transport_warnings()
        out += self.openadr.environment_proxy_warnings(os.environ)
        out += self.http.warnings()
        zone = zone_mismatch(self.forecaster.timezone)
        if zone:
            out.append(zone)
        return out


def trunk_warnings(cfg) -> list[str]:
    """A meter behind a router read more than once a second: on MS/TP, most such meters' network, that is a share of a
    slow trunk the building's own controllers need, for readings nothing of the gateway's uses at that pace (reports
    are whole seconds, forecasts minutes). check-config's alone: advice to whoever commissions the site, where the
    start-up log and /api/status keep to what a setting loses; the poll may be fast on purpose, and the meter behind a
    router may be on a fast network."""
    from bacnet_api.client import network_of

    poll = cfg.meter.poll_seconds
    # raised to its floor: that key's warning says so already, one per key
    if poll >= 1 or network_of(cfg.meter.address) is None or ("meter", "poll_seconds") in cfg._raised:
        return []
    # a ReadPropertyMultiple and its answer through the router are about 100 bytes with MS/TP's framing: 1,000 bits
    return [f"meter.poll_seconds ({poll:g}) reads meter {cfg.meter.address}, behind a router, {1 / poll:.3g} times a "
            f"second: on MS/TP each read holds the trunk the building's controllers share for about 30 ms at 38,400 "
            f"baud (110 ms at 9,600; three requests for a meter read property by property), and the VTN's reports "
            f"and the forecaster gain little from more than a reading a second: 1 or more is plenty there"]
