"""Prometheus metrics for the gateway, exposed on GET /metrics.

Each Metrics instance owns its CollectorRegistry, so tests (and two gateways in one process) never
collide on the global default registry. The application sets gauges and bumps counters; this module
knows nothing about where the numbers come from.

Gauges whose value is not known yet (no meter reading, no forecast) start as NaN, so a dashboard
shows a gap instead of a plausible-looking 0 kW.
"""
from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client import disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# a counter's <name>_created series (its creation time, one more series per counter) is no use to an alert, and
# docs/operator-api.md's /metrics reference would have to list each
disable_created_metrics()

PREFIX = "edge_gateway"

# Forecast cycles are usually milliseconds (a model predict) and occasionally seconds (a retrain).
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric the gateway exports. Names are a public contract (examples/grafana-dashboard.json)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, horizons_minutes: tuple[int, ...] = (15, 60)) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = PREFIX
        self.meter_kw = Gauge(f"{p}_meter_kw", "Latest meter reading taken by the gateway (kW)", registry=r)
        self.input_kw = Gauge(f"{p}_input_kw", "Building power written by the BAS to input-power-meter (kW)",
                              registry=r)
        self.shed_kw = Gauge(f"{p}_bas_shed_kw", "kW the BAS reports shedding on its own (bas-shed-power; 0 when "
                             "not)", registry=r)
        self.forecast_kw = Gauge(f"{p}_forecast_kw", "Forecast 15-min average demand ending <horizon> ahead (kW)",
                                 ["horizon"], registry=r)
        self.event_level = Gauge(f"{p}_event_level", "Current OpenADR SIMPLE level 0-3 (0 = no event)", registry=r)
        self.high_load = Gauge(f"{p}_high_load", "1 while the high-load-conditions flag is on", registry=r)
        self.low_load = Gauge(f"{p}_low_load", "1 while the low-load-conditions flag is on", registry=r)
        self.vtn_connected = Gauge(f"{p}_vtn_connected", "1 while registered with the VTN and polling", registry=r)
        self.telemetry_queue_depth = Gauge(f"{p}_telemetry_queue_depth",
                                           "Telemetry samples stored and not yet delivered to the VTN", registry=r)
        self.telemetry_oldest_age_seconds = Gauge(f"{p}_telemetry_oldest_sample_age_seconds",
                                                  "Age of the oldest telemetry sample not yet delivered to the VTN "
                                                  "(s; 0 while none waits): a VTN that is unreachable or refuses "
                                                  "reports makes it grow", registry=r)
        self.telemetry_queued = Counter(f"{p}_telemetry_queued", "Telemetry samples queued for the VTN",
                                        registry=r)
        self.telemetry_sent = Counter(f"{p}_telemetry_sent", "Telemetry samples delivered to the VTN", registry=r)
        self.telemetry_dropped = Counter(f"{p}_telemetry_dropped",
                                         "Telemetry samples dropped: older than openadr.queue_max_days, unreadable, "
                                         "or of an interval already reported (kept across restarts)", registry=r)
        self.meter_read_failures = Counter(f"{p}_meter_read_failures", "Meter reads that failed or timed out",
                                           registry=r)
        self.meter_reads = Counter(f"{p}_meter_reads", "Meter reads asked, answered or not (the failures' ratio "
                                   "to these: an intermittent meter)", registry=r)
        self.vtn_poll_failures = Counter(f"{p}_vtn_poll_failures", "VTN polls that failed", registry=r)
        self.vtn_polls = Counter(f"{p}_vtn_polls", "VTN polls sent, answered or not (the failures' ratio "
                                 "tells an intermittent link from a dead one)", registry=r)
        self.vtn_registration_failures = Counter(f"{p}_vtn_registration_failures",
                                                 "Registrations with the VTN that failed (refused, unanswered, "
                                                 "TLS)", registry=r)
        self.forecast_cycle_seconds = Histogram(f"{p}_forecast_cycle_seconds",
                                                "Wall time of one forecast cycle (s)", buckets=CYCLE_BUCKETS,
                                                registry=r)
        self.model_validation_error = Gauge(f"{p}_model_validation_error_kw",
                                            "Root-mean-square error of the model on held-out history (kW)",
                                            ["model", "horizon"], registry=r)
        self.event_loop_lag_seconds = Gauge(f"{p}_event_loop_lag_seconds",
                                            "Worst event-loop lag seen by the HTTP heartbeat recently (s)",
                                            registry=r)
        # the faults the dashboard names, for alerting: each 1 while it lasts (refreshed at scrape time)
        self.meter_fault = Gauge(f"{p}_meter_fault", "1 while the last meter read failed (meter-fault)", registry=r)
        # the faults as the log has them: open from the first failure until steady again, so an intermittent meter
        # or VTN, whose last read or poll is mostly good, is one fault that lasts
        self.meter_fault_open = Gauge(f"{p}_meter_fault_open",
                                      "1 from a failed meter read until the meter answers steadily again "
                                      "(meter.settle_seconds): the fault the log opened and has not closed",
                                      registry=r)
        self.vtn_fault_open = Gauge(f"{p}_vtn_fault_open",
                                    "1 from a failed VTN poll or registration until the VTN answers steadily again "
                                    "(openadr.settle_seconds): the fault the log opened and has not closed",
                                    registry=r)
        self.storage_writable = Gauge(f"{p}_storage_writable",
                                      "0 while storage.path cannot be opened or written (state kept in memory)",
                                      registry=r)
        self.bacnet_initiation_disabled = Gauge(f"{p}_bacnet_initiation_disabled",
                                                "1 while a BACnet client has disabled communication initiation "
                                                "(DeviceCommunicationControl): the meter is not read", registry=r)
        self.bbmd_registration_failing = Gauge(f"{p}_bbmd_registration_failing",
                                               "1 while the BBMD (bacnet.bbmd_address) refuses or does not answer the "
                                               "foreign-device registration: a BAS on another subnet cannot find the "
                                               "gateway", registry=r)
        self.bacnet_address_missing = Gauge(f"{p}_bacnet_address_missing",
                                            "1 while the machine lacks what bacnet.address names (its IP, the "
                                            "broadcast address of its mask, the interface's link): the BAS reaches "
                                            "no point and the meter is not read", registry=r)
        self.bacnet_cov_subscriptions = Gauge(f"{p}_bacnet_cov_subscriptions",
                                              "COV subscriptions the BACnet device holds (kept across restarts): a BAS "
                                              "whose graphics take live values has one per point it shows; 0 after "
                                              "a restart, a BAS that no longer gets them", registry=r)
        # a job failing on a bug: the forecast cycle's leaves the forecast points in fault to the BAS, the event
        # schedule's its level; an alert needs a series, beside /healthz and /api/status bugs
        self.job_failing = Gauge(f"{p}_job_failing",
                                 "1 while a job the gateway repeats fails on a bug (or short of memory, threads or "
                                 "files), from the log's ERROR to its 'works again'; <what> names it as the log does",
                                 ["what"], registry=r)
        self.telemetry_unrequested = Gauge(f"{p}_telemetry_unrequested",
                                           "1 while registered and the VTN has not requested the telemetry report "
                                           "for openadr.request_wait_seconds: readings only pile up", registry=r)
        self.telemetry_not_taken = Gauge(f"{p}_telemetry_not_taken",
                                         "1 while the VTN answers polls but fails or refuses the telemetry updates, "
                                         "or refuses the report offer: readings only pile up", registry=r)
        self.opt_answers_not_taken = Gauge(f"{p}_opt_answers_not_taken",
                                           "1 while the VTN answers polls but has not taken the site's answers "
                                           "(optIn/optOut) to events: it counts the site as it last heard it",
                                           registry=r)
        self.readings_not_reported = Gauge(f"{p}_readings_not_reported",
                                           "Meter readings not reported to the VTN since the log's WARNING that the "
                                           "wall clock is not set (a date before this version, or behind the run "
                                           "before's last read); 0 once it is", registry=r)
        self.bacnet_writes_refused = Counter(f"{p}_bacnet_writes_refused",
                                             "BACnet writes and DeviceCommunicationControl refused: their source is "
                                             "not in bacnet.write_from, or the point could not take the value",
                                             registry=r)
        self.http_auth_refused = Counter(f"{p}_http_auth_refused",
                                         "Requests to the operator API refused for a wrong http.token (a request "
                                         "sending none is not counted)", registry=r)
        self.forecast_fit_failing = Gauge(f"{p}_forecast_fit_failing",
                                          "1 while the forecaster's fits fail (the fit process killed short of "
                                          "memory, say): the last model or persistence serves, retried later",
                                          registry=r)
        self.forecast_input_stale = Gauge(f"{p}_forecast_input_stale",
                                          "1 while the forecaster has had no power for forecaster.input_stale_seconds "
                                          "(forecasts and load flags in fault)", registry=r)
        self.input_age_seconds = Gauge(f"{p}_input_age_seconds",
                                       "Seconds since the BAS last wrote input-power-meter (NaN before its first "
                                       "write or once it relinquished the point)", registry=r)
        self.clock_synchronized = Gauge(f"{p}_clock_synchronized",
                                        "1 while the kernel says a time service (NTP) keeps the machine's clock "
                                        "synchronized, 0 while it drifts (NaN: the kernel cannot be asked)", registry=r)
        self.vtn_client_cert_expiry = Gauge(f"{p}_vtn_client_cert_expiry_timestamp_seconds",
                                            "When openadr.cert, the VEN's client certificate, expires (its notAfter, "
                                            "Unix seconds; NaN without a certificate or while it cannot be read)",
                                            registry=r)
        self.forecast_serving_persistence = Gauge(f"{p}_forecast_serving_persistence",
                                                  "1 while persistence serves the <horizon> forecast: no model yet "
                                                  "(the first two days), or the model does not beat persistence "
                                                  "(a new install's: until a day of its live forecasts does, about "
                                                  "the fourth day)",
                                                  ["horizon"], registry=r)
        self.uptime_seconds = Gauge(f"{p}_uptime_seconds", "Seconds since the gateway started", registry=r)
        # the process's memory, CPU and file descriptors (process_*): README's memory bound, the HTTP cap's reason
        # (docs/operator-api.md)
        ProcessCollector(registry=r)
        self.build_info = Info(f"{p}_build", "Gateway version", registry=r)
        for gauge in (self.meter_kw, self.input_kw, self.input_age_seconds, self.clock_synchronized,
                      self.vtn_client_cert_expiry):
            gauge.set(math.nan)
        for horizon in horizons_minutes:
            self.forecast_kw.labels(horizon=f"{horizon}m").set(math.nan)
            self.forecast_serving_persistence.labels(horizon=f"{horizon}m").set(1)   # until a model beats it

    def set_version(self, version: str) -> None:
        self.build_info.info({"version": version})

    def render(self) -> bytes:
        """The Prometheus text exposition of this instance's registry."""
        return generate_latest(self.registry)
