"""Composition root: the one place that knows bacnet_api, forecaster and the VEN, and wires them.

Start-up order matters to the people downstream: the BACnet device comes up first (the BAS sees the
gateway within seconds), then the persisted event schedule restores ADR-Event-Level before any network
peer is needed, then the meter, the forecaster, the VTN and the operator API.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timedelta, timezone

from bacnet_api import points as P
from bacnet_api.device import GatewayDevice
from bacnet_api.meter import MeterClient, MeterReading

from . import __version__
from .config import GatewayConfig
from .forecast_service import ForecastService
from .http_api import HttpServer
from .metrics import Metrics
from .schedule import EventSchedule, ScheduleState
from .storage import Storage
from .telemetry import TelemetryQueue
from .vtn import VtnClient

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.started_at = time.time()
        self.metrics = Metrics()
        c = config
        self.device = GatewayDevice(address=c.bacnet.address, device_id=c.bacnet.device_id,
                                    device_name=c.bacnet.device_name,
                                    input_min=c.bacnet.input_min_kw, input_max=c.bacnet.input_max_kw)
        self.storage = Storage(c.storage.path)
        self.schedule = EventSchedule(self.storage, on_change=self._on_schedule)
        self.telemetry = TelemetryQueue(c.storage.path, max_age=timedelta(days=c.openadr.queue_max_days))
        self.vtn = VtnClient(c.openadr, self.schedule, self.telemetry, on_connected=self._on_vtn_connected)
        self.meter = MeterClient(self.device, address=c.meter.address, object=c.meter.object,
                                 property=c.meter.property, router=c.meter.router,
                                 poll_seconds=c.meter.poll_seconds, timeout_seconds=c.meter.timeout_seconds,
                                 on_reading=self._on_meter)
        self.forecast = ForecastService(c.forecaster, c.storage.path, publish=self._on_forecast,
                                        min_kw=c.bacnet.input_min_kw, max_kw=c.bacnet.input_max_kw)
        self.http = HttpServer(self, self.metrics, address=c.http.address, token=c.http.token) \
            if c.http.enabled else None
        self._stack = []
        self._schedule_listeners: list = []

    def add_schedule_listener(self, callback) -> None:
        """Call `callback(ScheduleState)` on every change of the demand-response state (the public hook)."""
        self._schedule_listeners.append(callback)

    async def start(self) -> None:
        c = self.config
        log.info("edge-gateway %s starting: device %d on %s", __version__, c.bacnet.device_id, c.bacnet.address)
        await self._start(self.device)
        self.device.on_write(P.INPUT_POWER, self._on_input_power)
        self.device.on_write(P.OPT_OUT, self._on_opt_out)
        await self._start(self.schedule)
        await self._start(self.forecast)
        await self._start(self.meter)
        await self._start(self.vtn)
        if self.http is not None:
            await self._start(self.http)
        log.info("edge-gateway ready: BACnet %s, VTN %s, meter %s %s", c.bacnet.address, c.openadr.vtn_url,
                 c.meter.address, c.meter.object)

    async def _start(self, part) -> None:
        await part.start()
        self._stack.append(part)

    async def stop(self) -> None:
        while self._stack:
            part = self._stack.pop()
            try:
                await part.stop()
            except Exception as err:  # keep stopping the rest; one line says what refused to stop
                log.warning("stopping %s: %s", type(part).__name__, err)
        self.telemetry.close()
        self.storage.close()
        log.info("edge-gateway stopped")

    # -- callbacks: each keeps one owner's state reflected on the points ------------------------------

    def _on_meter(self, reading: MeterReading) -> None:
        t = reading.timestamp.timestamp()
        if reading.value is None:
            self.device.set_fault(P.METER_POWER, True)
            self.device.set(P.METER_FAULT, True)
            self.metrics.meter_read_failures.inc()
            self.forecast.on_meter(t, None)
            return
        self.device.set(P.METER_POWER, reading.value)
        self.device.set_fault(P.METER_POWER, False)
        self.device.set(P.METER_FAULT, False)
        self.metrics.meter_kw.set(reading.value)
        self.vtn.record_sample(reading.timestamp, reading.value)
        self.forecast.on_meter(t, reading.value)

    def _on_input_power(self, value) -> None:
        if value is not None:
            self.metrics.input_kw.set(value)
        self.forecast.on_input_power(time.time(), value)

    def _on_opt_out(self, value) -> None:
        opted_out = bool(value)
        log.info("ADR-Opt-Out %s by BACnet write", "active" if opted_out else "relinquished")
        self.vtn.set_opt_out(opted_out)  # updates the schedule too

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

    def _on_vtn_connected(self, connected: bool) -> None:
        self.device.set(P.VTN_CONNECTED, connected)

    def _on_forecast(self, f) -> None:
        short, long = self.config.forecaster.horizons_minutes
        for horizon, name in ((short, P.FIFTEEN_MIN_FORECAST), (long, P.ONE_HOUR_FORECAST)):
            kw = f.demand_kw.get(horizon)
            if kw is not None:
                self.device.set(name, kw)
                self.metrics.forecast_kw.labels(horizon=f"{horizon}m").set(kw)
        if f.rate_kw_per_min is not None:
            self.device.set(P.RATE_OF_CHANGE, f.rate_kw_per_min)
        self.device.set(P.HIGH_LOAD, f.high_load)
        self.device.set(P.LOW_LOAD, f.low_load)
        self.metrics.high_load.set(int(f.high_load))
        self.metrics.low_load.set(int(f.low_load))

    # -- the operator's view (ven.http_api.GatewayView) ------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if not self.device.running:
            return False, "BACnet device is not running"
        return True, "ok"

    def status(self) -> dict:
        latest = self.meter.latest
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "now": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": {"device_id": self.config.bacnet.device_id, "name": self.config.bacnet.device_name,
                       "address": self.config.bacnet.address},
            "points": self.device.snapshot(),
            "vtn": self.vtn.status(),
            "events": self.schedule.events(),
            "schedule": dataclasses.asdict(self.schedule.state()),
            "meter": {
                "address": self.config.meter.address, "object": self.config.meter.object,
                "fault": self.meter.fault,
                "last_value_kw": latest.value if latest else None,
                "last_read": latest.timestamp.isoformat(timespec="seconds") if latest else None,
                "last_error": latest.error if latest else None,
            },
            "forecaster": self.forecast.status(),
        }

    def history(self, hours: float) -> dict:
        return self.forecast.history(hours)
