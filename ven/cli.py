"""`edge-gateway` command line. Heavy imports happen inside each command so `--help` stays instant."""
from __future__ import annotations

import argparse
import asyncio
import errno
import faulthandler
import ipaddress
import logging
import math
import os
import re
import signal
import socket
import sys
import time
from typing import Any, Callable

from bacnet_api.settle import span

from . import __version__
from .cert_expiry import cert_expiry_warnings
from .config import ConfigError, GatewayConfig, StartBlocked
from .config_checks import clock_sync_warnings, storage_problems, storage_warnings, tls_file_problems
from .config_load import load_config
from .config_warnings import trunk_warnings
from .config_text import check_bacnet_address
from .logs import QuietAcceptErrors, caution, refusal
from .site import other_site_warnings, site_of

# Exit statuses (README "Exit statuses"). A service manager restarts every failure but EXIT_CONFIG (the shipped unit's
# RestartPreventExitStatus=): a key the operator must edit, which a restart every 5 s only buries in the journal.
EXIT_USAGE = 2      # the command line itself (argparse's own status for a bad option)
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: what the config names is taken now (a port, storage.path): may clear
EXIT_CONFIG = 78    # sysexits.h EX_CONFIG (systemctl status says 78/CONFIG): the configuration must be edited
log = logging.getLogger(__name__)


def _print_config_error(err: ConfigError) -> None:
    # one line per problem, each self-contained, so a journal grep for the key finds the reason
    for line in str(err).splitlines():
        refusal(f"configuration error: {line}")


# a line of tls_file_problems or storage_problems whose key an EDGE_GATEWAY__ variable set: it names that instead
_FROM_VARIABLE = re.compile(r"[a-z_.]+ \(from [A-Z]")


def _file_problems(path: str | None, problems: list[str]) -> ConfigError:
    """What check-config or run finds of the files a config names, each line naming the config file as the load's
    errors do ("gw.toml: storage.path: ..."), or the variable the key came from."""
    return ConfigError("\n".join(line if path is None or _FROM_VARIABLE.match(line) else f"{path}: {line}"
                                 for line in problems))


def _config_or_exit(path: str | None, say_raised: bool = True) -> GatewayConfig:
    """The config, or its errors said and exit 78 (EXIT_CONFIG). `say_raised`: each value the load raised to a floor
    (or cut to fit) is one warning on stderr, as check-config and run say it: read-meter, health, points and the rest
    took the floor unsaid, and the installer checking the meter with them never learnt the file's value was not the
    one used."""
    try:
        cfg = load_config(path)
    except ConfigError as err:
        _print_config_error(err)
        raise SystemExit(EXIT_CONFIG) from None
    if say_raised:
        _say_raised(path, cfg)
    return cfg


def _say_raised(path: str | None, cfg: GatewayConfig) -> None:
    # stderr: stdout is the command's result, which a script may read (points, read-meter)
    for line in cfg.raised():
        caution(f"{path or 'defaults'}: warning: {line}")


def _bacnet_address(text: str) -> str:
    try:
        return check_bacnet_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


async def serve_until_signalled(main, duration: float | None = None) -> None:
    """Run coroutine `main` until it ends, SIGINT/SIGTERM arrives, or `duration` seconds pass."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(QuietAcceptErrors())
    stop = asyncio.Event()
    task = asyncio.ensure_future(main)

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set() and not task.done():
            # a second signal insists, whatever the first one's cancellation met: say so, as the parts
            # not stopped yet (storage flush, sockets) are left as they are
            log.warning("%s while stopping: shutdown cut short", sig.name)
            task.cancel()
        elif not stop.is_set():
            log.info("%s: stopping", sig.name)
        stop.set()

    # SIGHUP too: a closed terminal or `kill -HUP` otherwise ends the process with no clean-up and no line
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _absent_address_warnings(cfg: GatewayConfig) -> list[str]:
    """`run` waits for an address that is on no interface (a late NIC at boot), so a mistyped one would wait
    forever: said here, where the installer checks the file. A port in use is not the question (the gateway
    itself may hold it), so each IP is probed on a port of the system's choosing."""
    def absent(host: str, kind: int) -> bool:
        try:
            found = [(socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET, (host, 0))]
        except ValueError:  # a name may give several addresses (localhost: ::1 on a box without IPv6, 127.0.0.1)
            try:
                found = [(f, sockaddr) for f, _, _, _, sockaddr in
                         socket.getaddrinfo(host, 0, type=kind, flags=socket.AI_PASSIVE)]
            except (OSError, UnicodeError, LookupError):
                unresolved.append(host)     # `run` refuses it: said below
                return False
        for family, sockaddr in found:
            try:    # the socket too: a kernel without IPv6 (ipv6.disable=1) refuses an AF_INET6 one
                with socket.socket(family, kind) as probe:
                    probe.bind(sockaddr)
                return False
            except OSError as err:
                if err.errno != errno.EADDRNOTAVAIL:
                    return False
        return bool(found)

    unresolved: list[str] = []
    probes = [("bacnet.address", cfg.bacnet.address.rpartition(":")[0].partition("/")[0], socket.SOCK_DGRAM)]
    if cfg.http.enabled:
        probes.append(("http.address", cfg.http.address.rpartition(":")[0].strip("[]"), socket.SOCK_STREAM))
    out = [f"{key}: {host} is not on any interface of this machine now: `run` waits for it (a NIC that comes up "
           f"after the service), so a wrong address waits forever" for key, host, kind in probes if absent(host, kind)]
    # only http.address takes a name: check-config said ok, and `run` exited 2 "cannot listen: Name or service not
    # known"
    out += [f"http.address: {host} does not resolve on this machine now: `run` refuses to start (exit 75) until it "
            f"does (an IP address does not depend on a name service)" for host in unresolved]
    if not any(line.startswith("bacnet.address") for line in out):
        from bacnet_api.own_address import LINK, MASK, missing
        problem = missing(cfg.bacnet.address)
        if problem is not None and problem.kind == LINK:
            out.insert(0, f"bacnet.address {cfg.bacnet.address}: {problem.text} now: no BAS reaches the gateway "
                          f"until it is up")
        elif problem is not None and problem.kind == MASK:
            out.insert(0, f"bacnet.address {cfg.bacnet.address}: {problem.text}: the BACnet device could not answer "
                          f"a BAS nor send anything, and `run` waits for that mask: set bacnet.address to the "
                          f"interface's ip/prefix")
    return out


def _unresolved_router_warnings(cfg: GatewayConfig) -> list[str]:
    """meter.router takes a host name as well as an address; one that does not resolve fails every read."""
    host = cfg.meter.router.rpartition(":")[0]
    if not host:
        return []
    try:
        ipaddress.ip_address(host)
        return []
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
        return []
    except (OSError, UnicodeError):
        return [f"meter.router: {host} does not resolve on this machine now: every meter read fails until it does "
                f"(an IPv4 address does not depend on a name service)"]


def cmd_check_config(args) -> int:
    given = args.file + ([] if args.config is None else [args.config])
    if len(given) != 1:     # two files (a shell's glob, `check-config a.toml b.toml`): one at a time
        print("check-config: give the configuration file once: check-config FILE, or check-config --config FILE",
              file=sys.stderr)
        return EXIT_USAGE
    args.file = given[0]    # "" is a file not found, not the defaults
    cfg = _config_or_exit(args.file, say_raised=False)    # with the other warnings, below
    problems = tls_file_problems(cfg.openadr) + storage_problems(cfg.storage)
    if problems:
        _print_config_error(_file_problems(args.file, problems))
        return EXIT_CONFIG
    machine = clock_sync_warnings()     # last: the ones before are about the file
    files = (cert_expiry_warnings(cfg.openadr, time.time()) + storage_warnings(cfg.storage)
             + other_site_warnings(cfg.storage.path, site_of(cfg.openadr.ven_name, cfg.openadr.vtn_url)))
    network = _absent_address_warnings(cfg) + _unresolved_router_warnings(cfg) + trunk_warnings(cfg)
    # under the unit's ExecStartPre, stdout is the journal: a warning at its priority, so `journalctl -p warning`
    # shows it as it shows run's, not at journald's default (info) among the start's lines
    for warning in cfg.warnings() + files + network + machine:
        caution(f"{args.file}: warning: {warning}", sys.stdout)
    # what the utility will be told and which of its events are followed, said where the technician reads: the
    # 50 Hz / 230 V defaults went to North American VTNs unseen (helper conformance40 C8)
    adr = cfg.openadr
    programmes = ", ".join(adr.market_contexts) if adr.market_contexts else "every market context"
    # a relative storage.path is taken from the directory `run` starts in, which a service manager sets
    print(f"{args.file}: ok (device {cfg.bacnet.device_id} on {cfg.bacnet.address}, "
          f"meter {cfg.meter.address} {cfg.meter.object}, VTN {adr.vtn_url_shown} as {adr.ven_name!r} "
          f"(grid {adr.power_hertz} Hz, {adr.power_voltage:g} V; events of {programmes}), "
          f"storage {os.path.abspath(cfg.storage.path)})")
    return 0


def _probe_url(address: str) -> str:
    """The URL of /healthz on this host for the address the gateway binds (a wildcard is probed on loopback)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def cmd_health(args) -> int:
    # Docker's HEALTHCHECK knows 0 and 1 and reserves 2, so a bad config is 1 (unhealthy) here, not EXIT_CONFIG.
    import urllib.error
    import urllib.request

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        _print_config_error(err)
        return 1
    _say_raised(args.config, cfg)
    if not cfg.http.enabled:
        print("http.enabled is false: the gateway serves no /healthz to probe")
        return 0
    url = _probe_url(cfg.http.address)
    # no ProxyHandler: a container's HTTP_PROXY must not carry a loopback probe off the box
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as answer:
            said = _healthz_text(url, answer.status, answer.headers, answer.read())
            if said is None:
                return 1
            print(f"{url}: {said}")
            # degraded (the VTN or the meter away) is healthy to a container's check, which would restart a gateway
            # that cannot mend a VTN outage; a monitoring check asks --strict to hear of it
            return 1 if args.strict and said != "ok" else 0
    except urllib.error.HTTPError as err:
        said = _healthz_text(url, err.code, err.headers, err.read())
        if said is not None:
            print(f"{url}: {err.code} {said}")
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        # refused: nothing listens at that port, which the bare errno left to the reader to work out
        why = (": nothing listens there (the gateway not running, or running with another http.address?)"
               if isinstance(reason, ConnectionRefusedError) else "")
        print(f"{url}: no answer ({reason}){why}")
    return 1


def _healthz_text(url: str, status: int, headers, body: bytes) -> str | None:
    """The gateway's answer, one line of plain text with 200 (healthy) or 503; None, said on one line, for another
    program's at http.address: its 404 page printed whole as the probe's answer, and a 200 page taken for healthy."""
    kind = (headers.get_content_type() if headers.get("Content-Type") else "")
    text = body.decode(errors="replace").strip()
    if status in (200, 503) and kind in ("", "text/plain") and "\n" not in text:
        return text
    print(f"{url}: HTTP {status} ({kind or 'no Content-Type'}, {len(body)} bytes): not the gateway's /healthz answer: "
          f"another program answers at this address (the gateway not running, or running with another "
          f"http.address?)")
    return None


def cmd_forget_forecast(args) -> int:
    from .forget_forecast import forget_forecast

    return forget_forecast(_config_or_exit(args.config), args.yes)


def cmd_import_history(args) -> int:
    from .import_history import import_history

    cfg = _config_or_exit(args.config)
    try:
        return import_history(cfg, args)
    except KeyboardInterrupt:   # its rows go in as one transaction: none of them, then
        print("import-history: interrupted, nothing imported", file=sys.stderr)
        return 130


def cmd_points(args) -> int:
    from bacnet_api.points import points_for

    cfg = _config_or_exit(args.config)
    if args.ede:
        return _write_ede(cfg, args.ede)
    print(f"device {cfg.bacnet.device_id} '{cfg.bacnet.device_name}' on {cfg.bacnet.address}")
    print(f"{'object':<16} {'name':<26} {'access':<12} {'units':<10} description")
    for p in points_for(cfg.forecaster.horizons_minutes, cfg.forecaster.threshold_days):
        states = f" (states: {p.texts[0]} / {p.texts[1]})" if p.texts else ""
        print(f"{p.object_id:<16} {p.name:<26} {p.access:<12} {p.units or '':<10} {p.description}{states}")
    return 0


def _write_ede(cfg: GatewayConfig, path: str) -> int:
    from bacnet_api.ede import ede_rows, ede_text, state_texts_path, state_texts_text, write_ede

    from .app import bacnet_device

    device = bacnet_device(cfg)
    try:
        write_ede(path, ede_text(device, author=f"edge-gateway {__version__}"))
    except OSError as err:
        print(f"points: --ede {path}: {_cannot_write(path, err)}", file=sys.stderr)
        return EXIT_USAGE   # a path on the command line, not in the config
    # only once the EDE file is written: a bad path (a directory, a missing one) leaves no state-text file behind
    texts = state_texts_path(path)
    if texts is not None:
        try:
            write_ede(texts, state_texts_text(device))
        except OSError as err:
            print(f"points: --ede {path}: state texts {texts}: {_cannot_write(texts, err)}", file=sys.stderr)
            return EXIT_USAGE
    print(f"{path}: EDE file of device {cfg.bacnet.device_id} '{cfg.bacnet.device_name}', "
          f"{len(ede_rows(device))} objects" + (f"; state texts in {texts}" if texts is not None else ""))
    return 0


def _cannot_write(path, err: OSError) -> str:
    # a bare "No such file or directory" for a file the command is to make reads as if it had to exist already
    parent = os.path.dirname(path) or "."
    if err.errno == errno.ENOENT and not os.path.isdir(parent):
        return f"cannot write it: no directory {parent}"
    return f"cannot write it: {err.strerror or err}"


def cmd_read_meter(args) -> int:
    from bacnet_api.meter import read_meter_once
    from bacnet_api.objects import float32

    from .logs import setup_logging

    cfg = _config_or_exit(args.config)
    setup_logging("WARNING")
    logging.getLogger("bacnet_api.meter").setLevel(logging.ERROR)     # its fault line is the result's, printed below
    m = cfg.meter
    bind = args.bind or cfg.bacnet.address
    reading, units = asyncio.run(read_meter_once(
        bind_address=bind, device_id=cfg.bacnet.device_id, address=m.address, object=m.object,
        property=m.property, router=m.router, timeout=m.timeout_seconds,
        bounds=(float32(cfg.bacnet.input_min_kw), float32(cfg.bacnet.input_max_kw)), units=m.units or None))
    if reading.value is None:
        # the cause first: where read-meter stood. A port taken means the meter was never asked, and "no value"
        # above the hint read as the meter's failure, the hint as an afterthought
        hint, never_asked = _read_meter_hint(cfg, bind, args.bind is not None, reading.error or "")
        if hint:
            print(f"read-meter: {hint}", file=sys.stderr)
        if not never_asked:
            print(f"meter {m.address} {m.object} {m.property}: no value: {reading.error}", file=sys.stderr)
        return 1
    # how the value was taken, which the meter's log lines (silenced above with its fault line) say in `run`: a
    # watts meter stating noUnits read 50000.000 kW here with nothing beside it (helper meters41 W3)
    how = f"; the meter {units.describe()}" if units is not None else ""
    print(f"meter {m.address} {m.object} {m.property}: {reading.value:.3f} kW at "
          f"{reading.timestamp.isoformat(timespec='seconds')}{how}")
    if units is not None and (not units.stated or units.disagrees):
        print(f"read-meter: warning: meter {m.address} {m.object} {units.describe()}: check meter.units",
              file=sys.stderr)
    return 0


def _read_meter_hint(cfg: GatewayConfig, bind: str, bound_elsewhere: bool, error: str) -> tuple[str | None, bool]:
    """What to change when a read failed for where read-meter stood, not for the meter, and whether the meter was
    never asked (the port taken). Run beside the gateway it said only "Address already in use", and with --bind but no
    meter.router "no router ... answered"; neither said what to do (README step 5 does, far from the terminal)."""
    from bacnet_api.client import ensure_port_free, network_of

    ip_mask, sep, port = bind.rpartition(":")
    if not sep:
        ip_mask, port = bind, "47808"   # BACnet/IP's default port, as the stack takes it
    router = ("name the meter's router (meter.router, or EDGE_GATEWAY__METER__ROUTER=ip:port): a broadcast from "
              "another port than the site's BACnet port reaches no router"
              if network_of(cfg.meter.address) is not None and not cfg.meter.router else None)
    try:
        ensure_port_free(bind)
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            return None, False
        other = f"{ip_mask}:{int(port) + 1 if port.isdigit() and int(port) < 65535 else 47809}"
        who = "" if bound_elsewhere else " (by the gateway, running on bacnet.address?)"
        return (f"UDP port {port} is taken{who}, so the meter was not read: beside a running gateway give --bind "
                f"another port of the same address (e.g. --bind {other})" + (f", and {router}" if router else "")), True
    own_port = cfg.bacnet.address.rpartition(":")[2]
    if router and error.startswith("no router to network") and port != own_port:
        return f"--bind's port {port} is not the BACnet port {own_port}: {router}", False
    return None, False


def _ensure_tcp_port_free(address: str) -> None:
    """Raise OSError if `host:port` (IPv6 in brackets) cannot be listened on, binding as aiohttp does."""
    host, _, port = address.rpartition(":")
    family, _, _, _, sockaddr = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
    socket.create_server(sockaddr[:2], family=family).close()   # SO_REUSEADDR, as aiohttp binds


def _bacnet_address_error(err: OSError, address: str) -> ConfigError:
    """A port another program holds may be freed (StartBlocked: restarted); any other refusal needs an edit."""
    if err.errno != errno.EADDRINUSE:
        return ConfigError(f"bacnet.address: {err.strerror or err}")
    return StartBlocked(f"bacnet.address: {err.strerror} (another program on this machine, e.g. a BAS workstation, "
                        f"holds UDP port {address.rpartition(':')[2]}: stop it, or give bacnet.address another port)")


async def _wait_for_bacnet_address(address: str, waiting: Callable[[str], None] = lambda status: None) -> None:
    """Wait until the IP of `address` is on an interface, with the mask it gives. At boot a NIC's address (DHCP, a
    late link) may come after the service starts: waiting is one line in the log, where exiting for the service
    manager to restart was several lines every few seconds, and it comes back under a supervisor that restarts
    nothing. A mask that is not the interface's left the device started and dead (bacpypes3 retries the broadcast
    bind for good, and every send waits for it): waited for alike, said as a mask to set right. A link that is down
    is not waited for: the device starts, its watch says so, and the rest of the gateway runs meanwhile.
    `waiting(status)` is called every second meanwhile (systemd: the start's time-out extended)."""
    from bacnet_api.client import ensure_port_free
    from bacnet_api.own_address import LINK, MASK, must_wait

    ip = address.rpartition(":")[0].partition("/")[0]
    problem = must_wait(address)
    unmasked = problem is not None and problem.kind == MASK
    if unmasked:
        log.warning("bacnet.address %s: %s: the BACnet device could not answer a BAS nor send anything: waiting "
                    "for the interface to have that mask; set bacnet.address to its ip/prefix", address, problem.text)
    elif problem is not None and problem.kind == LINK:     # taken down: its broadcast address went with it
        log.warning("bacnet.address %s: %s: waiting for it; the gateway starts when it is up", address, problem.text)
    else:
        log.warning("bacnet.address %s: %s is not on any interface of this machine (yet: a late link or DHCP "
                    "lease?): waiting for it; the gateway starts when it is there", address, ip)
    began = time.monotonic()
    while True:
        waiting(f"waiting for {ip} with its mask on an interface (bacnet.address)" if unmasked else
                f"waiting for {ip} on an interface (bacnet.address)")
        await asyncio.sleep(1.0)
        try:
            ensure_port_free(address)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                continue
            raise _bacnet_address_error(err, address) from None
        if must_wait(address) is not None:
            continue
        waited = span(time.monotonic() - began)
        if unmasked:    # the IP was there all along (helper verify41)
            log.info("bacnet.address %s: its interface has that mask after %s: starting", address, waited)
        else:
            log.info("bacnet.address %s: %s is there after %s: starting", address, ip, waited)
        return


def cmd_run(args) -> int:
    return run_gateway(args.config)


def private_files() -> None:
    """What the gateway writes (storage.path and its -wal, the run lock, exports) holds the site's events, its load
    history and the forecaster's model, which a start loads as code: for the gateway's user and group, not every user
    of the box, whatever umask the shell or a hand-made unit left (0644 at the usual 022)."""
    os.umask(os.umask(0) | 0o027)


def run_gateway(config_path: str | None, customize: Callable[[Any], None] | None = None) -> int:
    """`edge-gateway run`: the checks before the start (one gateway per storage.path, the ports), the gateway until
    SIGTERM or Ctrl-C, and the exit code. `customize(gateway)` runs before the start: add your own listeners there
    (examples/custom_handler.py)."""
    private_files()     # a gateway run from a program of its own (custom_handler.py) does not pass through main()
    cfg = _config_or_exit(config_path, say_raised=False)     # logged at the start, with the other warnings
    # a directory there (Docker makes one for a bind-mounted file the host lacks), or a file where a directory must be,
    # never opens: the gateway ran on from memory, an ERROR every part, and lost it all at the next restart
    problems = storage_problems(cfg.storage)
    if problems:
        _print_config_error(_file_problems(config_path, problems))
        return EXIT_CONFIG
    from .run_lock import RunLock

    lock = RunLock(cfg.storage.path)    # held until the process ends
    busy = lock.take(running=True)
    if busy:    # a gateway started by hand beside the service, say: it may stop
        return _refused(StartBlocked(f"{busy}: stop that gateway first, or give this one its own storage.path"))
    # an exception out of here (a crash, its traceback on stderr) leaves the lock saying so to the next start
    code = _run_locked(cfg, lock, customize)
    lock.stopped()
    return _leave(code)


def _run_locked(cfg: GatewayConfig, lock, customize: Callable[[Any], None] | None) -> int:
    from bacnet_api.client import ensure_port_free

    from .app import Gateway, freeze_startup_objects
    from .logs import setup_logging
    from .loop_watchdog import exit_when_stuck
    from .systemd_notify import SystemdNotifier

    wait_for_address = False
    try:  # the device probes again when it starts; this turns a busy port into a refusal, not a traceback
        ensure_port_free(cfg.bacnet.address)
    except OSError as err:
        if err.errno != errno.EADDRNOTAVAIL:
            return _refused(_bacnet_address_error(err, cfg.bacnet.address))
        wait_for_address = True   # not on an interface yet: waited for below, once logging is set up
    else:
        from bacnet_api.own_address import must_wait
        wait_for_address = must_wait(cfg.bacnet.address) is not None    # its mask not the interface's
    if cfg.http.enabled:  # likewise before the BACnet device announces itself, not 2 s after
        try:
            _ensure_tcp_port_free(cfg.http.address)
        except OSError as err:
            # an address not on an interface yet is waited for by the HTTP server, the BACnet device meanwhile up
            if err.errno != errno.EADDRNOTAVAIL:
                # taken by another program, or a name the resolver cannot answer yet (DNS late at boot): may clear
                may_clear = err.errno == errno.EADDRINUSE or isinstance(err, socket.gaierror)
                return _refused((StartBlocked if may_clear else ConfigError)(
                    f"http.address {cfg.http.address}: cannot listen: {err.strerror or err}"))
    setup_logging(cfg.log_level)
    faulthandler.enable()   # a fatal signal (systemd's watchdog: SIGABRT) puts every thread's stack in the log
    notifier = SystemdNotifier()

    async def main():
        alive = stuck = None
        try:
            if wait_for_address:
                await _wait_for_bacnet_address(cfg.bacnet.address, notifier.waiting)
            gateway = Gateway(cfg, ended_without_stop=lock.ended_without_stop)
            if customize is not None:
                customize(gateway)
            try:
                await gateway.start()
                freeze_startup_objects()
                notifier.ready(f"ready: BACnet {cfg.bacnet.address}, VTN {cfg.openadr.vtn_url_shown}")
                # both from here: systemd arms its watchdog at the first ping, and the start's one-off work (a
                # damaged storage file read page by page and rebuilt) may hold the loop longer
                alive = asyncio.create_task(notifier.keep_alive(), name="systemd-watchdog")
                stuck = asyncio.create_task(exit_when_stuck(), name="loop-watchdog")
                await asyncio.Event().wait()
            finally:
                notifier.stopping()
                await gateway.stop()
        finally:
            notifier.stopping()     # a stop while bacnet.address was waited for: no gateway to stop
            watches = [w for w in (alive, stuck) if w is not None]
            for watch in watches:   # through the stop, which a fit child may make take seconds
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    try:
        asyncio.run(serve_until_signalled(main()))
    except ConfigError as err:  # e.g. the HTTP port taken after the probe above, or storage.path not to be moved aside
        return _refused(err)
    return 0


def _refused(err: ConfigError) -> int:
    """`run`'s refusal to start said, and its exit status: 75 for what may clear by itself, 78 for an edit."""
    if not isinstance(err, StartBlocked):
        _print_config_error(err)
        return EXIT_CONFIG
    # not "configuration error": the file may be right, and the operator's fix is elsewhere (or nothing: a restart)
    for line in str(err).splitlines():
        refusal(f"cannot start now: {line}")
    return EXIT_TEMPFAIL


def _leave(code: int) -> int:
    """A stop in the first seconds of a start leaves its import thread running (app._in_daemon_thread). At the
    interpreter's exit CPython ends such a thread with pthread_exit when it next takes the GIL; inside an extension
    module's init (C++, or Rust through PyO3) that unwinding can be caught, and glibc aborts: "FATAL: exception not
    rethrown", SIGABRT, a core dump and a failed unit for a clean stop (cpython#87135; seen once in a test run).
    Everything is stopped, closed and logged by then: the process leaves without the interpreter's finalization."""
    from .app import still_importing

    if still_importing():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_simulate_meter(args) -> int:
    from bacnet_api.simulator import check_units, run_simulator

    from .logs import setup_logging

    setup_logging("INFO")
    from .demo_data import load_kw_column

    try:  # a fixed value, else a CSV column, else the shipped building's load shape
        values = [args.value] if args.value is not None else load_kw_column(args.csv, args.value_column)
        check_units(args.units)
        if not any(math.isfinite(v) for v in values):
            raise ValueError(f"{args.csv or 'the series'}: no finite kW value to serve")
    except (OSError, ValueError) as err:
        print(f"simulate-meter: {err}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve_until_signalled(
            run_simulator(args.address, values=values, interval=args.interval, units=args.units,
                          read_multiple=not args.no_read_multiple),
            args.duration))
    except OSError as err:  # the port is taken, or the address is not this host's
        print(f"simulate-meter: {args.address}: {err.strerror or err}: choose another with --address",
              file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo  # before setup_logging: importing openleadr resets its logger level
    from .logs import setup_logging

    from .demo import taken_ports

    setup_logging("INFO")
    problems = taken_ports({"--bacnet-port": (args.bacnet_port, "udp"), "--meter-port": (args.meter_port, "udp"),
                            "--bas-port": (args.bas_port, "udp"), "--vtn-port": (args.vtn_port, "tcp"),
                            "--http-port": (args.http_port, "tcp")})
    if args.storage is not None:
        from .run_lock import RunLock
        busy = RunLock(args.storage).take()     # held until the process ends
        if busy:    # the demo's synthetic building would go into a running gateway's history
            problems.append(f"--storage: {busy}: give the demo a file of its own, or none (a temporary one)")
    for line in problems:
        print(f"demo: {line}", file=sys.stderr)
    # a port or file given on the command line: choose another there
    return EXIT_USAGE if problems else _leave(asyncio.run(run_demo(args)))


def cmd_demo_vtn(args) -> int:
    from .demo import run_demo_vtn
    from .logs import setup_logging

    setup_logging("INFO")
    try:
        return asyncio.run(run_demo_vtn(args))
    except OSError as err:
        print(f"demo-vtn: {args.host}:{args.port}: {err.strerror or err}: choose another with --port",
              file=sys.stderr)
        return EXIT_USAGE


def cmd_forecast_replay(args) -> int:
    from forecaster.replay import ReplayInputError, replay_csv

    from .forecast_service import forecaster_params

    params = {}
    if args.config:
        cfg = _config_or_exit(args.config)
        # the readings the gateway would take: a 150 MW site's peaks over the default bound were dropped unsaid
        params = dict(forecaster_params(cfg.forecaster), min_kw=cfg.bacnet.input_min_kw, max_kw=cfg.bacnet.input_max_kw)
    if args.retrain_minutes is not None:
        params["retrain_minutes"] = args.retrain_minutes
    if args.timezone is not None:
        params["timezone"] = args.timezone
    try:
        summary = replay_csv(args.csv, args.time_column, args.value_column, args.output,
                             cycle_minutes=args.cycle_minutes, fit_processes=args.fit_processes,
                             time_format=args.time_format, encoding=args.encoding, decimal=args.decimal,
                             value_unit=args.value_unit, events_path=args.events, stamped=args.stamped, **params)
    except (ReplayInputError, OSError) as err:
        print(f"forecast-replay: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # a pipe or device took each row as it came (see replay_csv); only a file is left unwritten
        streamed = os.path.exists(args.output) and not os.path.isfile(args.output)
        print(f"forecast-replay: interrupted, {args.output} "
              f"{'has the rows issued until then' if streamed else 'not written'}", file=sys.stderr)
        return 130
    for note in summary.pop("notes"):
        print(f"forecast-replay: {note}", file=sys.stderr)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _ranged(parse, low: float, high: float, rule: str):
    """An argparse type: the text parsed, within low..high (NaN never is), else a message saying `rule`."""
    name = "a whole number" if parse is int else "a number"

    def check(text: str):
        try:
            x = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None
        if not low <= x <= high:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return x
    return check


_BIG = sys.float_info.max
_positive_int = _ranged(int, 1, math.inf, "at least 1")
_port = _ranged(int, 1, 65535, "1..65535")
_finite = _ranged(float, -_BIG, _BIG, "a finite number")
_positive_seconds = _ranged(float, math.ulp(0.0), _BIG, "above 0 seconds")
_seconds = _ranged(float, 0.0, _BIG, "0 seconds or more")
_report_seconds = _ranged(int, 1, 86400, "1..86400 whole seconds (report durations are sent in whole seconds)")
_positive_minutes = _ranged(float, 1.0, _BIG, "at least 1 minute (the history is kept in 1-minute means)")


def _zone(text: str) -> str:
    from zoneinfo import ZoneInfo
    try:
        ZoneInfo(text)
    except (ValueError, LookupError):
        raise argparse.ArgumentTypeError(f"unknown IANA time zone {text!r}, e.g. Europe/Rome") from None
    return text


_CONFIG_HELP = "the gateway's TOML configuration file (README: Configuration)"


def _demo_run_options(p: argparse.ArgumentParser) -> None:
    """What `demo` and `demo-vtn` share: how long they run and when the demo event comes."""
    p.add_argument("--duration", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="stop this many seconds after it is up and running (default: run until Ctrl-C)")
    p.add_argument("--event-delay", type=_seconds, default=60.0, metavar="SECONDS",
                   help="seconds until the demo event starts (default %(default)g)")
    p.add_argument("--interval-seconds", type=_positive_seconds, default=10.0, metavar="SECONDS",
                   help="length of each demo event interval (default %(default)g)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway", description=(
        "OpenADR 2.0b VEN and BACnet/IP gateway with demand forecasting for buildings."))
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP)
    p.set_defaults(func=cmd_run)

    # FILE takes any number so that two (a shell's glob) get check-config's own words, not argparse's "unrecognized
    # arguments" under edge-gateway's usage line; its usage says one
    p = sub.add_parser("check-config", help="validate a configuration file",
                       usage="edge-gateway check-config [-h] (FILE | --config FILE)")
    p.add_argument("file", metavar="FILE", nargs="*", help=_CONFIG_HELP + ": names each bad key and why (exit 78), "
                   "opens the TLS files, warns of settings that lose something, and says where the state file goes")
    # every other command names its file with --config: the same words work here
    p.add_argument("--config", metavar="FILE", help="the same, as the other commands name it")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("health", help="probe the running gateway's /healthz at the address its config names "
                                      "(exit 0 healthy, degraded too unless --strict, 1 not: a container HEALTHCHECK)")
    p.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP + ": http.address says where to probe")
    p.add_argument("--timeout", type=_positive_seconds, default=4.0, metavar="SECONDS",
                   help="seconds to wait for the answer (default %(default)g)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 while degraded too (the VTN or the meter away, ...): for monitoring, not for a "
                        "container's HEALTHCHECK, whose restarts would not bring a VTN back")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("points", help="print the BACnet point table the device serves")
    p.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP + ": the device and horizons")
    p.add_argument("--ede", default=None, metavar="FILE",
                   help="write the points as an EDE file (B.I.G.-EU Engineering-Data-Exchange CSV, layout 2.3) "
                        "for a BAS workstation to import, instead of printing the table; the binary points' "
                        "state texts go beside it, to FILE's name with _StateTexts")
    p.set_defaults(func=cmd_points)

    p = sub.add_parser("read-meter", help="read the meter once and print the value or why it failed")
    p.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP + ": its [meter] section")
    p.add_argument("--bind", default=None, type=_bacnet_address, metavar="IP/MASK:PORT",
                   help="local BACnet address for this one read (default: bacnet.address; "
                        "use another port while the gateway runs)")
    p.set_defaults(func=cmd_read_meter)

    p = sub.add_parser("simulate-meter", help="serve a routed BACnet meter (network 12345, MAC 2, analogInput 2)")
    p.add_argument("--address", default="127.0.0.1/8:47810", metavar="IP/MASK:PORT", type=_bacnet_address,
                   help="the router's BACnet/IP address, what meter.router names (default %(default)s)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--value", type=_finite, default=None, metavar="KW", help="serve this fixed kW value")
    source.add_argument("--csv", default=None, metavar="FILE",
                        help="replay a kW column from this CSV (default: the shipped building)")
    p.add_argument("--value-column", default="Total_Power", metavar="NAME",
                   help="the CSV's kW column (default %(default)s)")
    p.add_argument("--units", default="kilowatts", metavar="UNITS",
                   help="BACnet units the meter publishes: the kW values are scaled to watts or megawatts; "
                        "another unit (e.g. kilowattHours) serves them unscaled (default kilowatts)")
    p.add_argument("--interval", type=_positive_seconds, default=10.0, metavar="SECONDS",
                   help="seconds between replayed values (default %(default)g)")
    p.add_argument("--duration", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--no-read-multiple", action="store_true",
                   help="reject ReadPropertyMultiple, as many small MS/TP meters do")
    p.set_defaults(func=cmd_simulate_meter)

    p = sub.add_parser("demo", help="run VTN, meter, BAS simulator and gateway on loopback")
    _demo_run_options(p)
    p.add_argument("--bacnet-port", type=_port, default=47808, metavar="PORT",
                   help="UDP port of the gateway's BACnet device on 127.0.0.1 (default %(default)s)")
    p.add_argument("--meter-port", type=_port, default=47810, metavar="PORT",
                   help="UDP port of the meter simulator's router (default %(default)s)")
    p.add_argument("--bas-port", type=_port, default=47809, metavar="PORT",
                   help="UDP port of the BAS simulator (default %(default)s)")
    p.add_argument("--vtn-port", type=_port, default=8080, metavar="PORT",
                   help="TCP port of the demo VTN (default %(default)s)")
    p.add_argument("--http-port", type=_port, default=8000, metavar="PORT",
                   help="TCP port of the dashboard and API (default %(default)s)")
    p.add_argument("--storage", default=None, metavar="FILE", help="SQLite file (default: a temporary one)")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="on exit, write what the demo VTN received (JSON)")
    p.add_argument("--telemetry-seconds", type=_report_seconds, default=10, metavar="SECONDS",
                   help="the gateway's report interval, and how often it reads the meter (default %(default)s)")
    p.add_argument("--bas-interval", type=_positive_seconds, default=10.0, metavar="SECONDS",
                   help="how often the BAS simulator writes the building's kW and reads the points "
                        "(default %(default)g)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-vtn", help="run the demo VTN alone (dispatches the demo events)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port to listen on (default %(default)s)")
    _demo_run_options(p)
    p.set_defaults(func=cmd_demo_vtn)

    p = sub.add_parser("forget-forecast", help="delete the forecaster's stored history, model and forecasts, "
                                               "keeping the rest of storage.path (the gateway stopped)")
    p.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP + ": storage.path and bacnet.address")
    p.add_argument("--yes", action="store_true", help="delete; without it, say what would be deleted (exit 1)")
    p.set_defaults(func=cmd_forget_forecast)

    p = sub.add_parser("import-history", help="put a building's metered history into the forecaster's store "
                                              "(the gateway stopped), so it forecasts from its first start")
    p.add_argument("--config", required=True, metavar="FILE",
                   help=_CONFIG_HELP + ": storage.path, bacnet.address and the [forecaster] settings")
    _series_options(p)
    p.set_defaults(func=cmd_import_history)

    p = sub.add_parser("forecast-replay", help="replay a CSV through the forecaster in simulated time")
    _series_options(p)
    p.add_argument("--cycle-minutes", type=_positive_minutes, default=15.0, metavar="MINUTES",
                   help="simulated minutes between forecasts (default %(default)g). A gap in the data longer than "
                        "the forecaster keeps history (44 days by default) is not replayed: the replay "
                        "resumes after it and names the gap, as it names the rows it skips")
    p.add_argument("--output", required=True, metavar="FILE",
                   help="CSV to write, one row per cycle and horizon; written only when the replay succeeds")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="take the [forecaster] settings (thresholds, time zone, holidays...) from this file")
    p.add_argument("--retrain-minutes", type=_positive_minutes, default=None, metavar="MINUTES",
                   help="refit interval in simulated minutes (default: forecaster.retrain_minutes, 1440)")
    p.add_argument("--fit-processes", type=_positive_int, default=None, metavar="N",
                   help="processes that fit the horizons side by side (default: one per horizon, "
                        "at most one per core; 1 fits in this process)")
    p.set_defaults(func=cmd_forecast_replay)
    return parser


def _series_options(p) -> None:
    """How forecast-replay and import-history read a meter's history."""
    p.add_argument("--csv", required=True, metavar="FILE", help="the meter's history, one row per reading; "
                   "separated by ',', ';' or tabs, its header the first line naming the columns")
    p.add_argument("--time-column", required=True, action="append", metavar="NAME",
                   help="its time column: ISO 8601 or epoch seconds unless --time-format says otherwise; "
                        "without an offset, in forecaster.timezone. Twice for a date and a time column")
    p.add_argument("--value-column", required=True, metavar="NAME",
                   help="its power column (kW unless --value-unit, its name, e.g. \"P [W]\", a UNITS column or the "
                        "cell says otherwise), or energy per row's interval (\"Usage (kWh)\")")
    p.add_argument("--time-format", default=None, metavar="FORMAT",
                   help="the times' strptime format, e.g. '%%d/%%m/%%Y %%H:%%M' (a trailing %%Z reads CET/CEST "
                        "as forecaster.timezone names them), or epoch or epoch-ms")
    p.add_argument("--timezone", type=_zone, default=None, metavar="ZONE",
                   help="IANA zone of times without an offset (default: forecaster.timezone, UTC)")
    p.add_argument("--encoding", default=None, metavar="NAME",
                   help="the file's text encoding, e.g. cp1252 (default UTF-8, with or without BOM)")
    p.add_argument("--decimal", choices=(".", ","), default=None, metavar="MARK",
                   help="the values' decimal mark, . or , (the other one groups thousands; "
                        "default: what the values show; asked for when they show neither or both)")
    p.add_argument("--value-unit", choices=("W", "kW", "MW", "Wh", "kWh", "MWh"), default=None,
                   help="unit of the values: power, or energy per row's interval (utility interval data, Green "
                        "Button: 15-minute kWh read as kW x 4); default: the column name's (\"P [W]\", \"Usage "
                        "(kWh)\"), else a UNITS column's, else kW")
    p.add_argument("--events", default=None, metavar="FILE",
                   help="CSV of the demand-response events the building shed for, columns start and end (times "
                        "as --csv's): kept out of learning, as the gateway keeps the events it ran")
    p.add_argument("--stamped", choices=("end", "start"), default="end",
                   help="what each row's time marks: when its value was read, or the end of the interval it "
                        "averages (end, the default); or the start of that interval (start: /api/history.csv's "
                        "minutes, interval data stamped at its start)")


def main(argv: list[str] | None = None) -> int:
    # Before anything imports numpy. OpenBLAS starts a thread per core it sees (a cgroup quota, systemd CPUQuota=,
    # is not seen), and each spins about 90 ms of CPU once started: on a box given one CPU that is 90 ms more of
    # its quota, every start. The gateway's products are one row wide and never use them; fits set their own
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    private_files()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MemoryError, ImportError) as err:
        # too little memory to load a library (LimitAS, ulimit -v): "failed to map segment from shared object", in a
        # traceback that said nothing of memory
        if not isinstance(err, MemoryError) and "failed to map segment" not in str(err):
            raise
        refusal(f"edge-gateway {args.command}: out of memory ({type(err).__name__}: {err}): a memory limit (LimitAS, "
                "ulimit -v) or the box's RAM; the gateway needs about 380 MB of address space with its fits (README "
                "\"The box\")")
        return 1
    except BrokenPipeError:
        # `edge-gateway points | head`: the reader has gone, which is no error of ours; stdout to /dev/null, or the
        # interpreter's flush at exit raises it again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
