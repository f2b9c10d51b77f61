"""Composition root: the one place that knows bacnet_api, forecaster and the VEN, and wires them.

Start-up order matters to the people downstream: the BACnet device comes up first (the BAS sees the
gateway within seconds), then the persisted event schedule restores ADR-Event-Level before any network
peer is needed, and the forecast and meter points show what the run before left (ven/points_resume.py) until
this run's own come, then the meter, the forecaster, the VTN and the operator API.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import hashlib
import json
import logging
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bacnet_api import points as P
from bacnet_api.device import GatewayDevice
from bacnet_api.meter import MeterClient, MeterReading
from bacnet_api.objects import WRITER
from bacnet_api.settle import Flapping, span

from . import __version__
from .cert_expiry import CertWatch
from .clock_sync import SyncWatch, metric_value
from .config import GatewayConfig
from .config_checks import memory_limit_warnings
from .command_keep import CommandKeep
from .cov_restore import COV_SUBSCRIPTIONS, CovKeeper
from .device_restore import BACNET_DATABASE, COMMANDS, count_database_revision, restore_commands, served
from .level_log import LevelLog
from .points_resume import METER_KEPT, keep_reading, kept_reading, last_forecast
from .logs import RecentLog
from .read_gaps import ReadGaps
from .metrics import Metrics
from .schedule import EventSchedule, ScheduleState
from .site import SITE_KEY, set_aside_if_other_site, site_of
from .storage import Storage
from .storage_salvage import set_aside_if_damaged
from .storage_fault import StorageFault
from .storage_indexes import IndexCheck
from .tasks import at_most, cancel_and_wait
from .telemetry import TelemetryQueue
from .wallclock import CLOCK_FLOOR, clock_suspect

if TYPE_CHECKING:
    from .forecast_service import ForecastService
    from .http_api import HttpServer
    from .vtn import VtnClient

# what becomes of the answers to events waiting at a stop: not kept; the VTN hears the site's answers as at any start
ANSWERED_AGAIN = "not kept; the next start answers the events the VTN lists as any start does"

log = logging.getLogger(__name__)

# The BAS's commands on ADR-Opt-Out, by priority: a BAS that commanded it once still holds that
# priority after the gateway restarts, so the gateway must too.
OPT_OUT_COMMANDS = COMMANDS + P.OPT_OUT
# bas-shed-power's commands likewise: a BAS that commands it at a shed's start holds it until the end, and writes
# it again only then
SHED_COMMANDS = COMMANDS + P.SHED_POWER
SHED_SINCE = SHED_COMMANDS + ":since"      # when the shed in force began (Unix seconds; "" for none)
# A BAS may write its shed as it estimates it, each scan: a new kW every 10 s would be a commit every 10 s on an SD
# card. A command taken or relinquished is kept at once, a changed kW at most this often, and at the stop.
SHED_SAVE_S = 60.0
# input-power-meter's commands likewise: a BAS that wrote its kW at a priority holds that priority (and a BAS writing on
# change of value may not write again for minutes), so a restart gives them back, as other BACnet devices do. Not as
# a reading: the forecaster learns from the BAS's next write. The kW kept matters only until then: a changed kW is
# kept at most this often (the BAS writes one every few seconds), a command taken or relinquished at once.
INPUT_COMMANDS = COMMANDS + P.INPUT_POWER
INPUT_SAVE_S = 900.0
INPUT_RESTORED = " (the BAS's command, not a reading: the forecaster learns from its next write)"
METER_READ = "meter_read"  # the last meter a reading came from (address, object, property, units)
# The clock and certificate watchers are looked at this often (at most; more often when one asks more often, as a
# test's), each asking the kernel or reading the file at its own pace (every few minutes) within.
LOOK_EVERY_S, LOOK_FLOOR_S = 60.0, 0.1


def _import_slow_parts() -> None:
    """openleadr, aiohttp and numpy take a second or more to import on 2 cores. Run in a worker
    thread after the BACnet device is up, so the BAS gets I-Am and reads meanwhile."""
    openleadr_level = logging.getLogger("openleadr").level
    from . import forecast_service, http_api, vtn, vtn_transport  # noqa: F401
    logging.getLogger("openleadr").setLevel(openleadr_level)  # importing openleadr resets it to INFO
    vtn_transport.warm_up()


IMPORT_THREAD = "import-slow-parts"


async def _in_daemon_thread(fn) -> None:
    """Run `fn` in a daemon thread and wait for it. Not the loop's executor: a SIGTERM while `fn` still runs
    (the imports above, 6-8 s on a loaded box) would wait for it twice over, as asyncio.run and the
    interpreter's exit join those threads; an import has nothing to clean up when the process ends."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(err: BaseException | None) -> None:
        if done.done():     # cancelled: the start was stopped meanwhile
            return
        if err is not None:
            done.set_exception(err)
        else:
            done.set_result(None)

    def run() -> None:
        err = None
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting start, which raises it
            err = e
        try:
            loop.call_soon_threadsafe(settle, err)
        except RuntimeError:    # the loop closed meanwhile: nobody waits any more
            pass

    threading.Thread(target=run, name=IMPORT_THREAD, daemon=True).start()
    await done


def still_importing() -> bool:
    """Whether a start's import thread (_in_daemon_thread) still runs: the gateway was stopped in its first
    seconds."""
    return any(t.name == IMPORT_THREAD and t.is_alive() for t in threading.enumerate())


def freeze_startup_objects() -> None:
    """Leave what start-up made out of every later pass of Python's cyclic garbage collector.

    The imports and the started gateway leave about 90,000 objects that live as long as the process. A
    full collection walks them all with the GIL held, 50 ms on 2 slow cores, and the event loop and the
    BACnet device wait that long whenever one comes. Collected once here and frozen, they are skipped; what
    the gateway makes later is still collected. For the process that serves (`run`), once it is ready:
    a process that starts and stops gateways, as the tests do, would keep each one's frozen objects."""
    gc.collect()
    gc.freeze()


def _sheds(commands: dict[int, float]) -> bool:
    """Whether bas-shed-power's commands put a shed in force (the highest priority's above 0)."""
    return bool(commands[min(commands)]) if commands else False


def bacnet_device(c: GatewayConfig) -> GatewayDevice:
    """The BACnet device a configuration describes: the one `run` serves and `points --ede` writes down."""
    return GatewayDevice(address=c.bacnet.address, device_id=c.bacnet.device_id, device_name=c.bacnet.device_name,
                         input_min=c.bacnet.input_min_kw, input_max=c.bacnet.input_max_kw,
                         bbmd_address=c.bacnet.bbmd_address, bbmd_ttl=c.bacnet.bbmd_ttl,
                         dcc_password=c.bacnet.dcc_password, write_from=c.bacnet.write_from,
                         points=P.points_for(c.forecaster.horizons_minutes, c.forecaster.threshold_days))


# How long a BAS write's SimpleACK waits for its sync. An SD card syncs in tens of ms; a disk that takes longer
# (a failing card, a machine swapping) would turn the BAS's writes into time-outs and retries, a device shown
# offline, for a window of a second or so in which only a power cut could undo the command.
ACK_WAIT_S = 0.5
LATE_RESTORE_WAIT_S = 2.0     # a few writes into the device's own objects: milliseconds, unless stuck


class Gateway:
    def __init__(self, config: GatewayConfig, clock_sync: SyncWatch | None = None, cert_watch: CertWatch | None = None,
                 ended_without_stop: int | None = None):
        """clock_sync: watches whether the machine's clock is synchronized (by default the kernel's word, every
        few minutes; tests give one with their own reader). cert_watch: openadr.cert's expiry, read every few
        minutes (tests read it more often). ended_without_stop: the pid of the run before on storage.path, which
        ended without a stop (RunLock)."""
        self.config = config
        self.started_at = time.monotonic()   # uptime: a wall-clock step (NTP at boot) is not time run
        self._meter_unread: str | None = None   # the configured meter until it gives a reading, if not stored
        self._meter_kept: str | None = None     # METER_KEPT as the start found it, until this run reads the meter
        self._last_good: tuple[float, float] | None = None   # this run's last good reading (kW, epoch s)
        c = config
        # the log's last lines for the dashboard, whose users often have no shell to read the log (RecentLog)
        self.recent = RecentLog()
        # What the file holds is said as it opens, here, after a crash the first lines of the run: before the start
        # line they read as the killed run's last ones, and the dashboard's log (attached at the start) had none
        with self.recent.attached():
            log.info("edge-gateway %s starting: device %d on %s", __version__, c.bacnet.device_id, c.bacnet.address)
            if ended_without_stop is not None:  # else its log just ends, and the next lines are this start's
                log.warning("the gateway that ran before on this storage.path (process %d) ended without a stop: "
                            "killed (SIGKILL, the kernel's out-of-memory killer), crashed, or the power cut; the "
                            "lines before this start are where it ended", ended_without_stop)
            self.metrics = Metrics(c.forecaster.horizons_minutes)
            self.device = bacnet_device(c)
            # A file that cannot be opened does not stop the gateway: the BAS still needs the device and
            # the live points. Both keep their data in memory and write it once the file opens.
            set_aside_if_damaged(c.storage.path)
            site = site_of(c.openadr.ven_name, c.openadr.vtn_url)
            # a box moved to another site: its file is the old site's
            self.moved_aside = set_aside_if_other_site(c.storage.path, site)
            # storage.path refusing writes is one fault in the log, whichever of its parts meets it
            self.storage_fault = StorageFault(
                c.storage.path, c.storage.retry_seconds, settle_seconds=c.storage.settle_seconds,
                parts=[p for p in ("events", "telemetry", "forecaster") if p != "telemetry" or c.openadr.telemetry])
            self.storage = Storage(c.storage.path, reopen_seconds=c.storage.retry_seconds, fault=self.storage_fault)
            # recorded only in a file checked above and open now: one that opens later (a data volume mounted after
            # the start) may be another VEN's, which the next start then finds and moves aside
            if self.storage.conn is not None and self.storage.load_value(SITE_KEY) != site:
                self.storage.save_value(SITE_KEY, site)
            self.telemetry = TelemetryQueue(c.storage.path, max_age=timedelta(days=c.openadr.queue_max_days),
                                            reopen_seconds=c.storage.retry_seconds, fault=self.storage_fault)
        self._level_log = LevelLog(self.storage, event=lambda event_id: self.schedule.get(event_id))
        self.schedule = EventSchedule(self.storage, on_change=self._on_schedule,
                                      programmes=frozenset(c.openadr.market_contexts))
        self.meter = MeterClient(self.device, address=c.meter.address, object=c.meter.object,
                                 property=c.meter.property, router=c.meter.router,
                                 poll_seconds=c.meter.poll_seconds, timeout_seconds=c.meter.timeout_seconds,
                                 bounds=self.device.input_bounds, on_reading=self._on_meter,
                                 units=c.meter.units or None, settle_seconds=c.meter.settle_seconds)
        self._stack = []
        self._late_restore: asyncio.Task | None = None
        self._cov_keeper: CovKeeper | None = None    # once started: the BAS's COV subscriptions kept in storage.path
        self._looking: asyncio.Task | None = None
        self._shed_since_kept: float | None = None     # SHED_SINCE as storage.path has it

        def synced():   # what a kept command's SimpleACK waits for
            return at_most(self.storage.synced(), ACK_WAIT_S)
        # a shed begun or ended by writing 0 at the priority held is kept at once too, or a crash in the minute brings
        # back (or loses) the shed the BAS ended (began)
        self._shed_keep = CommandKeep(self.device, self.storage, P.SHED_POWER, SHED_SAVE_S, synced,
                                      kind=lambda c: (set(c), _sheds(c)))
        self._input_keep = CommandKeep(self.device, self.storage, P.INPUT_POWER, INPUT_SAVE_S, synced)
        # stop() has begun: the device still answers until its part stops, and a timer set now never runs
        self._stopping = False
        self._schedule_listeners: list = []
        self._counted = {"sent": 0, "dropped": 0, "poll_failures": 0, "polls": 0, "registration_failures": 0,
                         "writes_refused": 0}
        self._input_stale = False  # the forecaster had no power input at its last cycle (past the start's grace)
        # its WARNING and INFO: a BAS writing a little less often than input_stale_seconds is one fault
        self._no_input = Flapping(2 * c.forecaster.input_stale_seconds)
        self.clock_sync = clock_sync or SyncWatch()
        self.read_gaps = ReadGaps(self.telemetry, self.clock_sync, c.meter.poll_seconds,
                                  hold=lambda last: self.vtn.hold_readings_until(last),
                                  release=lambda: self._built("vtn") and self.vtn.report_held_readings())
        self.cert_watch = cert_watch or CertWatch(c.openadr)
        self.metrics.set_version(__version__)

    # The forecaster, the VEN and the HTTP API are built on first use: their modules are slow to import
    # (see _import_slow_parts), and start() brings the BACnet device up before they are needed.
    @functools.cached_property
    def forecast(self) -> "ForecastService":
        from .forecast_service import ForecastService

        c = self.config
        low, high = self.device.input_bounds  # as the device compares them: what it takes, the forecaster takes
        service = ForecastService(c.forecaster, c.storage.path, publish=self._on_forecast, min_kw=low, max_kw=high,
                                  reopen_seconds=c.storage.retry_seconds, events=self._kept_events,
                                  stalled=self._on_forecast_stalled, fault=self.storage_fault)
        if self.device.running and (shed := self._commanded(P.SHED_POWER)):
            # a command restored at the start, told before the first sample (a BAS writing input-power-meter in the
            # first seconds builds the forecaster before start() does)
            service.on_shed(time.time(), shed, since=self._stored_shed_since())
        return service

    @functools.cached_property
    def vtn(self) -> "VtnClient":
        from .vtn import VtnClient

        return VtnClient(self.config.openadr, self.schedule, self.telemetry, on_connected=self._on_vtn_connected,
                         online=self._load_under_control, zone=ZoneInfo(self.config.forecaster.timezone))

    @functools.cached_property
    def http(self) -> "HttpServer | None":
        from .http_api import HttpServer

        c = self.config
        return HttpServer(self, self.metrics, address=c.http.address, token=c.http.token) if c.http.enabled else None

    @functools.cached_property
    def config_warnings(self) -> list[str]:
        """GatewayConfig.warnings(), worked out once: the start-up log and /api/status say the same."""
        return self.config.warnings()

    def add_schedule_listener(self, callback) -> None:
        """Call `callback(ScheduleState)` on every change of the demand-response state (the public hook)."""
        self._schedule_listeners.append(callback)

    async def start(self) -> None:
        c = self.config
        self.recent.attach()
        for warning in self.config_warnings:
            log.warning("config: %s", warning)
        for warning in memory_limit_warnings():
            log.warning("%s", warning)
        self.clock_sync.check(time.monotonic())
        # the device answers no one until serve() below: a BAS reading it before would cache the stack's own
        # databaseRevision and the points' defaults, and a write would be taken with nothing to act on it
        await self._start(self.device, serve=False)
        before = count_database_revision(self.device, self.storage)
        await self._restore_opt_out(self.storage.load_value(OPT_OUT_COMMANDS))
        await restore_commands(self.device, self.storage, P.SHED_POWER, self.storage.load_value(SHED_COMMANDS),
                               served_before=served(before, P.SHED_POWER))
        self._shed_keep.restored()
        await restore_commands(self.device, self.storage, P.INPUT_POWER, self.storage.load_value(INPUT_COMMANDS),
                               served_before=served(before, P.INPUT_POWER), note=INPUT_RESTORED, clamp=False)
        self._input_keep.restored()
        self.storage.on_late_open = self._storage_opened_late
        self.device.on_write(P.INPUT_POWER, self._on_input_power)
        self.device.on_write(P.INPUT_POWER, lambda _: self._input_keep.written(at_once=self._stopping))
        # a BAS writing W for kW is told so on the wire, as for a value past the bounds, and the meter stands in
        self.device.judge_writes(P.INPUT_POWER, lambda kw: self.forecast.implausible(kw)
                                 if self._built("forecast") else None)
        # likewise a shed in W: taken, it was added to every sample, which the forecaster then refused, its points in
        # fault for the whole shed while the BAS held its command as taken (a shed of the building's size passes)
        self.device.judge_writes(P.SHED_POWER, lambda kw: self.forecast.implausible(kw)
                                 if self._built("forecast") else None)
        self.device.on_write(P.OPT_OUT, self._on_opt_out)
        self.device.on_write(P.SHED_POWER, self._on_shed)
        await self._start(self.schedule)
        self._show_run_before()
        # last before serve: the first notifications say the set-up values, and go out before a SubscribeCOV that
        # waited for serve() is carried out; stopped after the parts started later, keeping what changed until then
        self._cov_keeper = CovKeeper(self.device, self.storage)
        await self._start(self._cov_keeper)
        self.device.serve()     # the event state is in the points, and the forecast the run before left
        await _in_daemon_thread(_import_slow_parts)
        if self.device.get(P.OPT_OUT):
            self.vtn.set_opt_out(True)  # before the VTN session, so new events are answered optOut
        await self._start(self.forecast)
        self._tell_shed()
        self._note_other_meter()
        if c.openadr.telemetry:
            # nothing is queued while it is false; its stop notes its last read, where the gap at the start it is
            # true again begins (a crash while false leaves the note of the run before)
            self.read_gaps.note_not_running()
        await self._start(self.meter)
        # here, not before the device: cryptography's import is in _import_slow_parts' share (openleadr's)
        self.cert_watch.check(time.monotonic(), time.time())
        await self._start(self.vtn)
        if self.http is not None:
            await self._start(self.http)
        self._looking = asyncio.create_task(self._look_around(), name="clock-and-certificate")
        if self.storage.conn is not None:
            # what the start's quick_check does not look at: an index against its table (ven/storage_indexes.py)
            await self._start(IndexCheck(c.storage.path))
        via = f" through proxy {c.openadr.proxy_shown}" if c.openadr.proxy else ""
        log.info("edge-gateway ready: BACnet %s, VTN %s%s, meter %s %s", c.bacnet.address, c.openadr.vtn_url_shown,
                 via, c.meter.address, c.meter.object)

    async def _start(self, part, **options) -> None:
        await part.start(**options)
        self._stack.append(part)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._looking)
        # storage.path come back since its last retry (a data volume mounted seconds ago): what memory holds goes to
        # it now, or the stop lost it; before the faults are listed, so the stop line does not name one just ended
        self.storage.last_try()
        self.telemetry.last_try()
        if self._built("forecast"):
            await self.forecast.last_try()
        self.storage_fault.look()     # steady for its settle period since the last look: its end, not an open fault
        still_open = self._open_faults()
        try:
            # the merge of the BAS's ADR-Opt-Out commands with the file's is what the file must keep (a storage
            # opened by the last try has just started it); it writes to the device and storage stopped below
            if self._late_restore is not None:
                await at_most(self._late_restore, LATE_RESTORE_WAIT_S)
            await cancel_and_wait(self._late_restore)
        except Exception as err:  # noqa: BLE001 - its failure must not keep the rest running
            log.warning("restoring the BAS's commands and COV subscriptions after the storage opened late: %s", err)
        for keep in (self._shed_keep, self._input_keep):
            if self.device.running:
                keep.keep()     # a kW the BAS changed within save_s of the last one kept
            else:
                keep.cancel()
        while self._stack:
            part = self._stack.pop()
            try:
                await part.stop()
            except Exception as err:  # keep stopping the rest; one line says what refused to stop
                log.warning("stopping %s: %s", type(part).__name__, err)
        if self._built("vtn") and (waiting := self.vtn.answers_waiting()) \
                and not any(waiting in fault for fault in still_open):
            # the BAS's ADR-Opt-Out written in the stop's last moments, or sent as the VEN stopped: the log said the
            # opt-out and never that the utility heard it (the next start tells it, in openleadr's answer to the
            # listing, without a line of its own)
            log.info("%s not told the VTN before the stop: %s", waiting, ANSWERED_AGAIN)
        # whatever openadr.telemetry: a run without it read the meter too, and the next start's gap begins here; the
        # run before's last read if later (a clock behind all this run long dated its reads before it)
        resumed = self.read_gaps.resumed
        read = [t for t in (self.meter.latest and self.meter.latest.timestamp, resumed and resumed[0])
                if t and not clock_suspect(t)]
        if read:
            self.telemetry.note_last_read(max(read))
        self.telemetry.close()
        # on meter-power from the next start's first answer to its first read; not tried while storage.path refuses
        # writes: a reading only shown would be counted among the events and saved state that the stop says are lost
        if self._last_good is not None and not self.storage_fault.open:
            self.storage.save_value(METER_KEPT, keep_reading(*self._last_good))
        self.storage.close()
        # said after every part's last write (the forecaster's last save, the queue's and the events' close), with
        # what each still holds: met by those writes, or ended by them, and only what is still in memory is lost
        if storage := self.storage_fault.fault(held=self._held_in_memory()):
            still_open.append(storage)
        if kept := self.telemetry.taken_in_file:
            # the VTN gets them twice, the second time under the next run's request (an interval it has, another value)
            again = (f"{kept} telemetry reading(s) the VTN took stay in it, their deletion refused: the next start "
                     "reports them again")
            at = next((i for i, f in enumerate(still_open) if f.startswith("storage.path")), None)
            if at is None:
                still_open.append(f"storage.path: {again}")
            else:
                still_open[at] += f", and {again}"
        if still_open:
            log.info("edge-gateway stopped with %s open, so no end line follows: %s",
                     "a fault" if len(still_open) == 1 else f"{len(still_open)} faults", "; ".join(still_open))
        else:
            log.info("edge-gateway stopped")
        self.recent.detach()

    def _held_in_memory(self) -> dict[str, int]:
        """What each part that writes storage.path holds in memory, not written (ven/storage_fault.PARTS' units)."""
        return {"events": self.storage.held, "telemetry": self.telemetry.status()["in_memory"],
                "forecaster": self.forecast.forecaster.dirty_minutes if self._built("forecast") else 0}

    def _built(self, part: str) -> bool:
        """Whether start() has built `part` (a cached property): a stop while their import still runs (the first
        seconds of a start) must not build the VEN, the forecaster or the API to ask them about faults."""
        return part in self.__dict__

    def _open_faults(self) -> list[str]:
        """The faults whose start the log said and whose end it has not: a stop ends none of them, and without
        this the log reads as if each was still going on (or the end line was lost) until the next start."""
        now, wall = time.monotonic(), datetime.now(timezone.utc)
        lasted = lambda since: span((wall - datetime.fromisoformat(since)).total_seconds())
        out = []
        if (problem := self.device.own_address.local_trouble()) is not None:
            out.append(f"bacnet.address {self.config.bacnet.address}: {problem}")
        if (m := self.meter.fault_window()) is not None:
            out.append(f"meter fault for {lasted(m['since'])} ({m['failed_reads']} of {m['reads']} reads failed)")
        if self._built("vtn") and (v := self.vtn.open_fault()) is not None:
            counts = [f"{v['polls_failed']} of {v['polls']} polls failed" if v["polls"] else "",
                      f"{v['registrations_failed']} of {v['registrations']} registrations failed"
                      if v["registrations_failed"] else "",
                      f"registration lost {v['context_losses']} time(s)" if v["context_losses"] else ""]
            # the BAS's opt-out written meanwhile has not reached the utility: said here unless its own item below is
            waiting = self.vtn.answers_waiting() if self.vtn.opts_not_taken() is None else ""
            out.append(f"VTN fault for {lasted(v['since'])} ({', '.join(c for c in counts if c) or 'no answer yet'}, "
                       f"not connected for {span(v['not_connected_seconds'])}{self.vtn.delivered_in_fault()})"
                       + (f", {waiting} not taken: {ANSWERED_AGAIN}" if waiting else ""))
        if self._built("vtn") and (t := self.vtn.telemetry_fault()) is not None:
            # the VTN answers polls but takes no telemetry: its own WARNING and end line, so its own item here
            what = "report(s) refused" if t["kind"] == "refused" else "update(s) unanswered"
            since = f" for {lasted(t['since'])}" if t["since"] else ""
            out.append(f"telemetry not taken by the VTN{since} ({t['count']} {what}: {t['why']})")
        if self._built("vtn") and (o := self.vtn.opts_not_taken()) is not None:
            # which ones: the count alone did not tell the operator whether the utility still counts on a shed
            out.append(f"answers to {o['count']} event(s) not taken by the VTN for {lasted(o['since'])} "
                       f"({self.vtn.answers_waiting() or 'none now'}; the last failure: {o['why']}): {ANSWERED_AGAIN}")
        if self._built("vtn") and (refused := self.vtn.refused_answers()) is not None:
            # not sent again, and the utility counts the site as it last heard it: said until the VTN takes an answer
            # to the event or stops listing it
            out.append(f"{refused['answers']} refused by the VTN for {lasted(refused['since'])} (the last refusal: "
                       f"{self.vtn.opt_answer_error}): {ANSWERED_AGAIN}")
        if self._built("vtn") and (st := self.vtn.status_fault()) is not None:
            # not kept in storage.path (a past status is worth little once the VTN is back): the stop drops them
            out.append(f"TELEMETRY_STATUS updates not answered by the VTN for {lasted(st['since'])} ({st['count']} "
                       f"in a row: {st['why']}; the {st['held']} sample(s) held are dropped with this stop)")
        if self._built("vtn") and (u := self.vtn.telemetry_unrequested()) is not None:
            out.append(f"telemetry not requested by the VTN for {lasted(u['since'])}")
        if self._built("vtn") and self.vtn.report_offer_error:     # set only where telemetry is offered
            out.append(f"telemetry report offer not taken by the VTN ({self.vtn.report_offer_error})")
        if self.telemetry.dropping:
            out.append("telemetry queue dropping its oldest samples")
        if self._no_input.open:
            gap = self._no_input
            # power back, the end line waiting for it to stay: not "without power" up to the stop
            out.append(f"forecaster without power input for {span(gap.last_bad - gap.since)}, back "
                       f"{span(now - gap.last_bad)} ago and not yet steadily" if not self._input_stale else
                       f"forecaster without power input for {span(now - gap.since)}")
        if self._built("vtn") and (held := self.vtn.readings_not_reported()):
            out.append(f"meter readings not reported ({held} so far): the wall clock reading "
                       f"{self.vtn.clock_wrong_why}")
        if self.clock_sync.warned:
            out.append("the machine's clock not synchronized")
        if self.cert_watch.state is not None:
            out.append(f"openadr.cert {self.cert_watch.state}")
        if (comm := self.device.communication())["mode"] != "enable":
            out.append(f"BACnet communication initiation disabled by {comm.get('by') or 'a BACnet client'}")
        if foreign := self.device.foreign_fault():
            out.append(foreign)
        if cov := self.device.cov_refusing():
            out.append(cov)
        if self._built("forecast"):
            out += self.forecast.open_faults()
        if self._built("http") and self.http is not None:
            out += self.http.open_faults()
        return out + self._bugs()

    def _bugs(self) -> list[str]:
        """The jobs failing on a bug in the gateway (BugGuard): each said once, with its traceback, in the log."""
        return [fault for bug in self._bug_guards() if (fault := bug.fault())]

    def _bug_guards(self) -> list:
        owners = [self.meter, self.device, self.schedule] + [getattr(self, p) for p in ("forecast", "vtn")
                                                             if self._built(p)]
        return [bug for owner in owners for bug in owner.bugs]

    # -- callbacks: each keeps one owner's state reflected on the points ------------------------------

    def _on_meter(self, reading: MeterReading) -> None:
        self.clock_sync.look_for_step()     # a step the reading's stamp shows: its own line before its effects'
        self.metrics.meter_reads.inc()
        if self._meter_kept:    # shown until this first read: a crash from here on must not show it again
            self.storage.save_value(METER_KEPT, "")
            self._meter_kept = None
        self.read_gaps.on_reading(reading.timestamp, reading.tick_times[0] if reading.tick_times else None)
        t = reading.timestamp.timestamp()
        if reading.value is None:
            # the meter answering in kWh is not a broken network: the BAS alarm must not send the technician there
            self.device.set_fault(P.METER_POWER, True, unusable=reading.answered, reliability=reading.reliability)
            self.device.set(P.METER_FAULT, True)
            self.metrics.meter_read_failures.inc()
            self.vtn.record_failed_read(reading.tick_times or (reading.timestamp,))
            self.forecast.on_meter(t, None)
            return
        if self._meter_unread is not None:
            self.storage.save_value(METER_READ, self._meter_unread)
            self._meter_unread = None
        self._last_good = (reading.value, t)
        self.device.set(P.METER_POWER, reading.value)
        self.device.set_fault(P.METER_POWER, False)
        self.device.set(P.METER_FAULT, False)
        self.metrics.meter_kw.set(reading.value)
        if self.vtn.record_sample(reading.timestamp, reading.value):
            self.metrics.telemetry_queued.inc()
            self.read_gaps.note_reported(reading.timestamp)
        self.forecast.on_meter(t, reading.value)

    def _on_input_power(self, value) -> None:
        # relinquished at every priority: no BAS input, not its last value flat on a dashboard
        self.metrics.input_kw.set(math.nan if value is None else value)
        self.clock_sync.look_for_step()
        if self._stopping and not (self._built("forecast") and self.forecast in self._stack):
            return  # a reading the stopped forecaster learns nothing from, nor says it "now learns from bacnet_input"
        self.forecast.on_input_power(time.time(), value)

    def _on_shed(self, value):
        # a kW changed while the gateway stops is kept at once: put off, it waited for a timer the stopped loop never
        # ran, and the next start brought back the kW before, a command the BAS was acknowledged lost
        ack = self._shed_keep.written(at_once=self._stopping)
        self._tell_shed(value, by=WRITER.get())
        # a shed begun or ended: the BAS's SimpleACK waits for the disk, as ADR-Opt-Out's does. A power cut after it
        # brought back a shed the BAS had ended, added to every sample learnt until its next shed, which it never
        # relinquished again (a BAS relinquishes once, at the shed's end)
        return ack

    def _tell_shed(self, value: float | None = None, by: str | None = None) -> None:
        """Tell the forecaster the shed the BAS wrote (`value`, from `by`), or, with None, the one restored from
        storage.path."""
        # a write before the forecaster is built (the first seconds of a start) is told once it is
        if self._built("forecast"):
            shed = value if value is not None else self._commanded(P.SHED_POWER)
            self.metrics.shed_kw.set(shed or 0.0)
            self.forecast.on_shed(time.time(), shed, since=None if value is not None else self._stored_shed_since(),
                                  by=by)
            if (since := self.forecast.shed_since) != self._shed_since_kept:
                # at its start and end only: the dashboard's and the alert's 12 hours count across restarts
                self.storage.save_value(SHED_SINCE, "" if since is None else repr(since))
                self._shed_since_kept = since

    def _stored_shed_since(self) -> float | None:
        text = self.storage.load_value(SHED_SINCE)
        try:
            since = float(text or "nan")
        except ValueError:
            since = math.nan
        if text and not math.isfinite(since):
            since = self._shed_start_unreadable(text)
        self._shed_since_kept = since if math.isfinite(since) else None
        if math.isfinite(since) and since < CLOCK_FLOOR.timestamp():
            return None     # stamped by a clock not yet set (a box without a battery clock): begun again now
        return self._shed_since_kept

    def _shed_start_unreadable(self, text: str) -> float:
        """What a damaged SHED_SINCE stands for, said and written back. The shed itself is the BAS's command, restored
        from its own key: whether one is in force does not depend on this. Only its age does (the 12 hours after
        which it is flagged as never relinquished), read as a shed begun at this start; counted instead from the
        start of the event in force, when there is one (the BAS's likely reason to shed, so begun no earlier), a shed
        the BAS never relinquishes is flagged no later than the lost value would have had it."""
        shed, now = self._commanded(P.SHED_POWER), time.time()
        state = self.schedule.state()
        event = self.schedule.get(state.level_event_id) if state.level > 0 and state.level_event_id else None
        if not shed:
            since, instead = math.nan, "no shed is commanded (bas-shed-power relinquished or 0): none in force, cleared"
        elif event is not None and event.start.timestamp() <= now:
            since = event.start.timestamp()
            instead = (f"the {shed:g} kW shed restored from its commands goes on, its age counted from the start of "
                       f"event {event.event_id} ({event.start.isoformat(timespec='seconds')}), in force at level "
                       f"{state.level:g}")
        else:
            since = now
            instead = (f"the {shed:g} kW shed restored from its commands goes on, its age counted from now (no event "
                       f"in force to date it)")
        log.warning("stored %s %.60r unreadable (Unix seconds expected): %s", SHED_SINCE, text, instead)
        self.storage.save_value(SHED_SINCE, repr(since) if math.isfinite(since) else "")
        return since

    def _commanded(self, name: str) -> float | None:
        """A commandable analog point's effective command; None while relinquished at every priority."""
        return self.device.get(name) if self.device.commands(name) else None

    def _on_opt_out(self, value):
        opted_out = bool(value)     # logged by the device (the write) and the VEN (what it does about it)
        commands = json.dumps(self.device.commands(P.OPT_OUT))
        if commands == self.storage.load_value(OPT_OUT_COMMANDS) and opted_out == self.schedule.opted_out:
            # the BAS writing the command it holds, each scan: nothing to keep or tell, and no commit and sync per
            # write (6.7 KB each, more than the rest of the gateway writes)
            return None
        self.storage.save_value(OPT_OUT_COMMANDS, commands)
        self.vtn.set_opt_out(opted_out)  # updates the schedule too
        # the BAS's SimpleACK waits for the command (and the events' answers) to be on the disk, not only in the
        # page cache: a power cut after the ack must not undo a command the BAS holds as taken
        return at_most(self.storage.synced(), ACK_WAIT_S)  # the sync goes on after the ack

    def _note_other_meter(self) -> None:
        # The stored history does not say which meter its readings came from. A replaced meter of the same load
        # should go on from it; a meter.address corrected to another building or circuit, or meter.units set
        # because the readings were watts, mixes two loads: the percentile thresholds and the model learned
        # from the old one drive the load flags for days. The gateway cannot tell which: the technician can.
        m = self.config.meter
        now = " ".join([m.address, m.object, m.property] + ([f"in {m.units}"] if m.units else []))
        was = self.storage.load_value(METER_READ)
        if was == now:
            return
        minutes = self.forecast.forecaster.history_minutes()
        if was is not None and minutes and self.config.forecaster.source != "bacnet_input":
            log.warning("meter changed since the last run (was %s, now %s): the forecaster goes on from its %d "
                        "stored minutes of history, its load thresholds and model, which may hold the old meter's "
                        "readings; right for a replaced meter of the same load, not for another one: for that, stop the "
                        "gateway and run edge-gateway forget-forecast", was, now, minutes)
        # kept once this meter gives a reading: a mistyped address put right at the next start is not another meter
        # the history came from (it read nothing), and was said to be
        self._meter_unread = now

    def _storage_opened_late(self, values: dict[str, str]) -> None:
        saved_opt_out, saved_shed = values.get(OPT_OUT_COMMANDS), values.get(SHED_COMMANDS)
        saved_input, saved_cov = values.get(INPUT_COMMANDS), values.get(COV_SUBSCRIPTIONS)
        # the COV keeper's merge runs with nothing saved too: it then stops noting what the BAS asks
        if saved_opt_out or saved_shed or saved_input or self._cov_keeper is not None:
            database = values.get(BACNET_DATABASE)
            self._late_restore = asyncio.get_running_loop().create_task(
                self._restore_late(saved_opt_out, saved_shed, served(database, P.SHED_POWER), saved_cov,
                                   saved_input, served(database, P.INPUT_POWER)))

    async def _restore_late(self, saved_opt_out: str | None, saved_shed: str | None, shed_served: bool,
                            saved_cov: str | None = None, saved_input: str | None = None,
                            input_served: bool = True) -> None:
        if saved_opt_out:
            await self._restore_opt_out(saved_opt_out, late=True)
        if await restore_commands(self.device, self.storage, P.SHED_POWER, saved_shed, late=True,
                                  served_before=shed_served):
            self._shed_keep.restored()      # the merge, which the restore wrote
            self._tell_shed()
        if await restore_commands(self.device, self.storage, P.INPUT_POWER, saved_input, late=True,
                                  served_before=input_served, note=INPUT_RESTORED, clamp=False):
            self._input_keep.restored()     # the merge, which the restore wrote
        # last: the restored subscriptions' first notifications say the commands restored above
        if self._cov_keeper is not None:
            await self._cov_keeper.late(saved_cov)

    async def _restore_opt_out(self, saved: str | None, late: bool = False) -> None:
        await restore_commands(self.device, self.storage, P.OPT_OUT, saved, late)
        # at start-up start() does this; a stop's last try in the first seconds of a start must not build the VEN
        if late and self._built("vtn") and bool(self.device.get(P.OPT_OUT)) != self.schedule.opted_out:
            self.vtn.set_opt_out(bool(self.device.get(P.OPT_OUT)))

    def _on_schedule(self, state: ScheduleState) -> None:
        self.device.set(P.EVENT_LEVEL, float(state.level))
        self.device.set(P.EVENT_ACTIVE, state.active)
        self.device.set(P.EVENT_START_MINUTES, float(state.start_minutes))
        self.metrics.event_level.set(state.level)
        for callback in self._schedule_listeners:
            try:
                callback(state)
            except Exception:  # a user's handler must never stop the points from updating
                log.exception("schedule listener %r failed", callback)
        # last: the line says a level the points show, and a read of storage.path failing in it leaves them set
        self._level_log.update(state)

    def _kept_events(self) -> list:
        """The events of the forecaster's history: it keeps the hours the building shed out of what it learns
        (none with forecaster.learn_from_events)."""
        if self.config.forecaster.learn_from_events:
            return []
        since = datetime.now(timezone.utc) - timedelta(days=self.forecast.forecaster.keep_days)
        return self.schedule.history_events(since)

    def _load_under_control(self) -> bool:
        """TELEMETRY_STATUS's oadrOnline: the BAS takes the event level from the gateway's device, so the site's load
        follows the gateway while the device serves. DeviceCommunicationControl cannot stop that: `disable` is refused,
        and under `disableInitiation` the device still answers the BAS's reads (helper verify40)."""
        return self.device.running

    def _on_vtn_connected(self, connected: bool) -> None:
        self.device.set(P.VTN_CONNECTED, connected)
        self.metrics.vtn_connected.set(int(connected))

    async def _look_around(self) -> None:
        """The machine's clock (synchronized? stepped?), a run before whose clock was ahead, openadr.cert's expiry and
        the telemetry queue's file, on their own tick: in the forecast's callback they were looked at every
        forecaster.cycle_seconds (hourly with an hour's cycle), and never again while the forecast cycle failed. Each
        watcher asks at its own pace within."""
        every = max(LOOK_FLOOR_S, min(LOOK_EVERY_S, self.clock_sync.every_s, self.cert_watch.every_s,
                                      self.storage_fault.look_every))
        looks = {"the clock's synchronization": lambda: self.clock_sync.check(time.monotonic()),
                 "the run before's last read": self._look_at_held_readings,
                 "openadr.cert": lambda: self.cert_watch.check(time.monotonic(), time.time()),
                 # with openadr.telemetry false no reading tries the queue's file again after it refused a write
                 "storage.path for the telemetry queue": self.telemetry.try_file,
                 # the storage fault's end, once every part has written for its settle period
                 "storage.path's settle period": self.storage_fault.look}
        failing: set[str] = set()
        while True:
            await asyncio.sleep(every)
            for what, look in looks.items():    # each on its own: one that fails does not stop the others
                try:
                    look()
                except Exception:   # a bug: said once with its traceback, and once when the look works again
                    if what not in failing:
                        log.exception("looking at %s failed; tried again every %g s", what, every)
                    failing.add(what)
                else:
                    if what in failing:
                        log.info("looking at %s works again", what)
                    failing.discard(what)

    def _look_at_held_readings(self) -> None:
        if self._built("vtn") and (held := self.vtn.readings_held_before()) is not None:
            self.read_gaps.run_before_was_ahead(held, datetime.now(timezone.utc))

    def _on_forecast(self, f) -> None:
        if self.forecast.last_cycle_seconds is not None:
            self.metrics.forecast_cycle_seconds.observe(self.forecast.last_cycle_seconds)
        # The power source went silent for input_stale_seconds: the last values stay readable, flagged,
        # and the load flags drop (no basis for a claim), flagged too, so "no peak" and "no data" differ.
        stale = self.forecast.input_stale()
        self._log_input_stale(stale)
        self._show_forecast(f, held=stale)

    def _on_forecast_stalled(self) -> None:
        """A forecast cycle failed (a bug, said by its own ERROR line): shown as with no power input, the last
        forecast readable and flagged, both load flags dropped and flagged."""
        self._show_forecast(self.forecast.last_forecast, held=True)

    def _show_forecast(self, f, held: bool) -> None:
        """`f` on the points and in the metrics; `held` (no basis for a new claim): the last values stay, in fault."""
        short, long = self.config.forecaster.horizons_minutes
        demand = f.demand_kw if f is not None else {}
        for horizon, name in ((short, P.FIFTEEN_MIN_FORECAST), (long, P.ONE_HOUR_FORECAST)):
            kw = demand.get(horizon)
            self._set_or_fault(name, None if held else kw)
            # NaN while the point is in fault: the last forecast held flat read as a live one on a chart
            self.metrics.forecast_kw.labels(horizon=f"{horizon}m").set(math.nan if kw is None or held else kw)
        self._set_or_fault(P.RATE_OF_CHANGE, None if held or f is None else f.rate_kw_per_min)
        no_basis = held or demand.get(long) is None
        # No threshold (percentiles need a day of history, and a flat history has none) is no basis
        # either: inactive then means "cannot tell", never "no peak", so the flag shows fault. A flag in
        # fault reads inactive even while its minimum on-time holds it on inside the forecaster.
        high_fault = no_basis or f.high_threshold_kw is None
        low_fault = no_basis or f.low_threshold_kw is None
        high, low = not high_fault and f.high_load, not low_fault and f.low_load
        self.device.set(P.HIGH_LOAD, high)
        self.device.set(P.LOW_LOAD, low)
        self.device.set_fault(P.HIGH_LOAD, high_fault)
        self.device.set_fault(P.LOW_LOAD, low_fault)
        if f is not None:
            # What each flag compares the forecast with, so the BAS can see why it is on and stage its own
            # shedding below it. A threshold rests on the stored history (or the configuration), not on the
            # last minutes of power: it stays live while the forecast is held, and is in fault only while unknown.
            self._set_or_fault(P.HIGH_LOAD_THRESHOLD, f.high_threshold_kw)
            self._set_or_fault(P.LOW_LOAD_THRESHOLD, f.low_threshold_kw)
        # NaN while the flag is in fault: 0 would say "no peak" where the BAS is told "cannot tell"
        self.metrics.high_load.set(math.nan if high_fault else int(high))
        self.metrics.low_load.set(math.nan if low_fault else int(low))

    def _show_run_before(self) -> None:
        """Before the device answers: the last forecast the run before stored, and its last meter reading, on the
        points until this run's first forecast cycle and meter read replace them (ven/points_resume.py). The forecast
        is live when that first cycle's will be (power within input_stale_seconds, a forecast as recent), else
        readable and flagged, as a running gateway holds its last one; the reading flagged until the read."""
        now, stale_s = time.time(), self.config.forecaster.input_stale_seconds
        if (f := last_forecast(self.config.storage.path, now)) is not None:
            held = f.newest_power_at is None or now - f.newest_power_at > stale_s or now - f.issued_at > stale_s
            if held:
                short, long = self.config.forecaster.horizons_minutes
                kept = {P.FIFTEEN_MIN_FORECAST: f.demand_kw.get(short), P.ONE_HOUR_FORECAST: f.demand_kw.get(long),
                        P.RATE_OF_CHANGE: f.rate_kw_per_min}
                for name, value in kept.items():
                    if value is not None:
                        self.device.show_kept(name, value)
            self._show_forecast(f, held=held)
        self._meter_kept = self.storage.load_value(METER_KEPT)
        if (kw := kept_reading(self._meter_kept)) is not None:
            self.device.show_kept(P.METER_POWER, kw)

    def _log_input_stale(self, stale: bool) -> None:
        """One WARNING when the forecaster runs out of power input, one INFO once it has had some for twice
        input_stale_seconds (longer than one write's worth; doubled when it keeps running out): running out
        again meanwhile is the same fault. Not during the first input_stale_seconds after start: no sample
        yet (or only the history resumed from storage) is not yet a silence."""
        c = self.config.forecaster
        now = time.monotonic()
        if stale and now - self.started_at <= c.input_stale_seconds:
            return
        self._input_stale = stale
        if stale and self._no_input.bad(now):
            source = {"bacnet_input": "the BAS has not written input-power-meter",
                      "meter": "no meter reading"}.get(c.source, "neither the BAS (input-power-meter) nor the meter gave power")
            log.warning("forecaster has no power input: %s for %.0f s (forecaster.source %s); forecasts, "
                        "power-rate-of-change and the load flags show fault until power comes in",
                        source, c.input_stale_seconds, c.source)
        elif not stale and self._no_input.good(now):
            times = self._no_input.times
            log.info("forecaster has power input again (%s)%s: forecasts and flags are computed from it again",
                     self.forecast.status().get("active_source") or c.source,
                     f", steadily, after running out {times} times (power came in more than "
                     f"{c.input_stale_seconds:g} s apart)" if times > 1 else "")

    def _set_or_fault(self, name: str, value: float | None) -> None:
        # No value (no recent power to forecast from): the last one stays readable but flagged, so a
        # BAS never reads an old forecast as a live one.
        if value is not None:
            self.device.set(name, value)
        self.device.set_fault(name, value is None)

    # -- the operator's view (ven.http_api.GatewayView) ------------------------------------------------

    def health(self) -> tuple[bool, str]:
        # Only a stopped device makes the gateway unhealthy: a restart brings back neither a VTN, a meter
        # nor a BAS, and it loses what an unwritable storage.path keeps in memory. What cannot work is
        # named in the 200 answer, so `curl /healthz` and the orchestrator's health log say it.
        if not self.device.running:
            return False, "BACnet device is not running"
        degraded = self.degraded()
        return True, f"ok (degraded: {'; '.join(degraded)})" if degraded else "ok"

    def degraded(self) -> list[str]:
        """Each part of the job the gateway cannot do now, in a few words."""
        out = []
        if (own := self.device.own_address.problem) is not None:    # before the meter fault it causes
            out.append({"link": "BACnet interface's link down", "mask": "bacnet.address's mask not its interface's"}
                       .get(own.kind, "bacnet.address not on this machine"))
        comm = self.device.communication()
        if comm["mode"] != "enable":
            out.append(f"BACnet communication initiation disabled by {comm.get('by') or 'a BACnet client'}")
        if not self.vtn.connected and not self.vtn.connecting:   # the start's first registration is no fault
            out.append("VTN not connected")
        if self.meter.fault:
            out.append("meter fault")
        if not self.storage_status()["ok"]:
            out.append("storage.path not writable")
        if self._input_stale:
            out.append("forecaster has no power input")
        if foreign := self.device.foreign_fault():
            out.append(foreign)     # a BAS on another subnet cannot find the gateway
        # the VTN connected, and the utility gets no telemetry (or, with the certificate, soon nothing at all)
        if self.vtn.telemetry_fault() is not None:
            out.append("VTN not taking telemetry")
        elif self.vtn.report_offer_error:
            out.append("VTN not taking the telemetry report offer")
        if self.vtn.connected and self.vtn.opts_not_taken() is not None:
            out.append("VTN not taking the answers to events")
        if self.vtn.refused_answers() is not None:
            # not sent again: the utility counts the site as it last heard it until the VTN takes an answer to the event
            out.append("VTN refused an answer to an event")
        if self.vtn.readings_not_reported():
            out.append("meter readings not reported (the wall clock)")
        if self.telemetry.dropping:
            out.append("telemetry queue dropping its oldest samples")
        if self.cert_watch.state == "expired":
            out.append("openadr.cert expired")
        for twin in self.device.twins():    # the BAS binds one box or the other: a configuration copied
            out.append(f"another device answers as device {self.config.bacnet.device_id}, from {twin['address']}")
        return out + self._bugs()

    def status(self) -> dict:
        latest, good = self.meter.latest, self.meter.last_good
        now = datetime.now(timezone.utc)
        return {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
            # the jobs failing on a bug in the gateway, each as its log line names it (BugGuard)
            "bugs": self._bugs(),
            "now": now.isoformat(timespec="seconds"),
            # the building's zone: the dashboard shows its times in it unless the operator chooses UTC
            "timezone": self.config.forecaster.timezone,
            # the wall clock reads a date before this version was built (not set yet, e.g. no RTC):
            # meter readings are not reported and events the VTN stopped listing are not judged over
            "clock_suspect": clock_suspect(now),
            # this start's clock is behind the meter's last read before it (a fake-hwclock after a power cut): that
            # read, until the clock or a reading is past it; meter readings are not reported meanwhile
            "clock_behind_last_read": behind.isoformat(timespec="seconds")
            if (behind := self.vtn.readings_held_before()) else None,
            # whether a time service (NTP) keeps the clock, by the kernel's word, and whether the log says so
            **self.clock_sync.status(),
            "device": {"device_id": self.config.bacnet.device_id, "name": self.config.bacnet.device_name,
                       "address": self.config.bacnet.address,
                       # what of bacnet.address the machine lacks while the device runs (null: nothing), and since
                       "address_problem": self.device.own_address.status(),
                       # DeviceCommunicationControl: "enable", or who disabled initiation and until when
                       "communication": self.device.communication(),
                       # bacnet.bbmd_address: whether the BBMD took the registration, else why not (null: none)
                       "foreign_device": self.device.foreign_device(),
                       # other devices answering as this instance: a configuration copied to a second box
                       "twins": self.device.twins(),
                       # the BAS's COV subscriptions (kept across restarts): how many, and each subscriber's
                       "cov_subscriptions": self.device.cov_subscriptions(),
                       # bacnet.write_from: who may write, how many writes it refused, the last one
                       **self.device.write_refusals()},
            "points": self.device.snapshot(),
            # openadr.cert's expiry and subject, and whether the log warns of it (null without a certificate)
            "vtn": {**self.vtn.status(), "client_cert": self.cert_watch.status()},
            "events": self.schedule.events(),
            "schedule": dataclasses.asdict(self.schedule.state()),
            "meter": {
                "address": self.config.meter.address, "object": self.config.meter.object,
                "router": self.meter.route,
                # what the meter's units property said at its last (re)connection: watts are converted to kW
                "units": self.meter.units,
                "fault": self.meter.fault,
                # the last value and when it was read; while the meter is silent, attempts go on
                "last_value_kw": good.value if good else None,
                "last_value_at": good.timestamp.isoformat(timespec="seconds") if good else None,
                "last_attempt_at": latest.timestamp.isoformat(timespec="seconds") if latest else None,
                "last_error": latest.error if latest else None,
                # the fault the log opened and has not closed: an intermittent meter's `fault` is mostly
                # false, this says how many of its reads fail (None while it answers steadily)
                "fault_window": self.meter.fault_window(),
            },
            "forecaster": self.forecast.status(),
            "storage": self.storage_status(),
            # settings that are valid but lose something (check-config's warnings): the log says them once,
            # at start, long scrolled away when the operator looks at the dashboard
            "config_warnings": self.config_warnings,
        }

    def storage_status(self) -> dict:
        """Whether each part that writes storage.path is writing it; what the file said when not."""
        # damage a read met while it runs (which no write ends): until the restart the line asks for
        errors = {"events": self.storage.write_error or self.storage.read_damage.error,
                  "telemetry": self.telemetry.write_error or self.telemetry.read_damage.error,
                  "forecaster": None if not self._built("forecast")
                  else self.forecast.read_damage.error if self.forecast.storage_ok
                  else self.forecast.storage_error or "forecast history not stored"}
        return {"path": str(self.config.storage.path), "ok": not any(errors.values()),
                "errors": {part: e for part, e in errors.items() if e},
                # this start found the file another VEN's and moved it aside (ven/site.py); null otherwise
                "moved_aside": self.moved_aside}

    def recent_log(self, min_level: int, limit: int | None) -> dict:
        return self.recent.body(min_level, limit)

    async def history_tag(self, hours: float) -> str:
        """/api/history's ETag for `hours`, from what history(hours) is made of, without making it: a dashboard's
        refresh with nothing new (every second or so) is answered 304 with no read of storage.path and no body. Its
        clock enters as what it changes: the minute (the chart's span), which of the events' times are past and which
        within the chart's "upcoming", and whether the latest forecast is stale. Taken before the body is made, so a
        change meanwhile makes the next refresh a 200, never a 304 to an older body."""
        c = self.config.forecaster
        now = time.time()
        events = self.schedule.history_events(datetime.fromtimestamp(now, timezone.utc) - timedelta(hours=hours))
        held = await asyncio.to_thread(self.forecast.history_state)
        latest = self.forecast.last_forecast_view()
        issued = latest["issued_at"] if latest else None
        times = [t.timestamp() for ev in events for t in _times(ev)]
        upcoming_until = now + max(c.horizons_minutes) * 60
        key = (hours, int(now // 60), held, hash(tuple(events)), sum(t <= now for t in times),
               sum(t <= upcoming_until for t in times), self.forecast.input_stale(), issued,
               issued is not None and now - issued > self._flag_stale_seconds)
        return hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()

    @property
    def _flag_stale_seconds(self) -> float:
        return max(300.0, 3 * self.config.forecaster.cycle_seconds)

    async def history(self, hours: float) -> dict:
        from .history import build_history

        c = self.config.forecaster
        # the schedule belongs to the loop; the SQLite read and shaping do not (its events are frozen values)
        events = self.schedule.history_events(datetime.now(timezone.utc) - timedelta(hours=hours))
        stored = await asyncio.to_thread(self.forecast.history, hours)
        # the BAS reads the forecast points in fault while the input is stale: the chart shows none ahead then
        input_stale = self.forecast.input_stale()
        # what lies ahead is the forecast the points carry, held in memory: the stored ones lag it by up to
        # SAVE_EVERY_CYCLES and stop while storage.path cannot be written
        latest = self.forecast.last_forecast_view()

        def shape() -> dict:
            now = datetime.now(timezone.utc)
            return build_history(now.timestamp(), hours, stored, [ev.describe(now) for ev in events],
                                 horizons=c.horizons_minutes, flag_stale_seconds=self._flag_stale_seconds,
                                 input_stale=input_stale, latest_forecast=latest)
        return await asyncio.to_thread(shape)

    def refresh_metrics(self) -> None:
        """Bring counters owned elsewhere (telemetry queue, VTN client) up to date before a scrape."""
        from forecaster.core import PERSISTENCE     # loaded with self.forecast already (see _import_slow_parts)

        totals = {"sent": self.telemetry.sent_total, "dropped": self.telemetry.dropped,
                  "poll_failures": self.vtn.poll_failures_total, "polls": self.vtn.polls_total,
                  "registration_failures": self.vtn.registration_failures_total,
                  "writes_refused": self.device.write_access.refused}
        counters = {"sent": self.metrics.telemetry_sent, "dropped": self.metrics.telemetry_dropped,
                    "poll_failures": self.metrics.vtn_poll_failures, "polls": self.metrics.vtn_polls,
                    "registration_failures": self.metrics.vtn_registration_failures,
                    "writes_refused": self.metrics.bacnet_writes_refused}
        for key, total in totals.items():
            if total > self._counted[key]:
                counters[key].inc(total - self._counted[key])
            self._counted[key] = total
        self.metrics.telemetry_queue_depth.set(self.telemetry.pending)
        now = time.time()
        oldest = self.telemetry.oldest_undelivered()
        self.metrics.telemetry_oldest_age_seconds.set(max(0.0, now - oldest.ts.timestamp()) if oldest else 0.0)
        self.metrics.meter_fault.set(int(bool(self.meter.fault)))
        self.metrics.meter_fault_open.set(int(self.meter.fault_window() is not None))
        self.metrics.vtn_fault_open.set(int(self.vtn.open_fault() is not None))
        self.metrics.telemetry_unrequested.set(int(self.vtn.telemetry_unrequested() is not None))
        self.metrics.telemetry_not_taken.set(int(self.vtn.telemetry_fault() is not None
                                                 or self.vtn.report_offer_error is not None))
        self.metrics.readings_not_reported.set(self.vtn.readings_not_reported())
        self.metrics.opt_answers_not_taken.set(int(self.vtn.opts_not_taken() is not None))
        self.metrics.storage_writable.set(int(self.storage_status()["ok"]))
        self.metrics.bacnet_initiation_disabled.set(int(self.device.communication()["mode"] != "enable"))
        self.metrics.bbmd_registration_failing.set(int(self.device.foreign_fault() is not None))
        self.metrics.bacnet_address_missing.set(int(self.device.own_address.problem is not None))
        self.metrics.bacnet_cov_subscriptions.set(self.device.cov_subscriptions()["count"])
        for bug in self._bug_guards():
            self.metrics.job_failing.labels(what=bug.what).set(int(bug.failing))
        self.metrics.forecast_input_stale.set(int(self.forecast.input_stale()))
        self.metrics.clock_synchronized.set(metric_value(self.clock_sync.last))
        self.metrics.vtn_client_cert_expiry.set(self.cert_watch.metric_value())
        forecast = self.forecast.status()
        self.metrics.forecast_fit_failing.set(int(not forecast["fit_ok"]))
        written = forecast.get("last_input_at")
        self.metrics.input_age_seconds.set(math.nan if written is None else max(0.0, now - written))
        for horizon, h in forecast.get("horizons", {}).items():
            serving_persistence = self.metrics.forecast_serving_persistence.labels(horizon=f"{horizon}m")
            serving_persistence.set(int(h["serving"] == PERSISTENCE))
            for model, key in (("forecaster", "validation_rmse_kw"), ("persistence", "validation_persistence_rmse_kw")):
                if h.get(key) is not None:
                    self.metrics.model_validation_error.labels(model=model, horizon=f"{horizon}m").set(h[key])


def _times(ev) -> list[datetime]:
    """An event's times that /api/history compares with its clock (what ran, what is to come, its answers)."""
    out = [t for s in ev.signals for i in s.intervals for t in (i.start + ev.start_offset, i.end + ev.start_offset)]
    out += [t for r in ev.ran_before for t in r[:2]] + [t for t, _ in ev.opt_changes]
    return out + [t for t in (ev.received_at, ev.cancelled_at, ev.modified_at) if t is not None]
