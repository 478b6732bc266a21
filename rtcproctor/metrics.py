"""Prometheus metrics of one server process: what an admin watches to know when to add one.

Each app owns a `Metrics` with its own registry (never the global one), so two apps in
one process, as in tests and benchmarks, do not share counts. Counters and histograms
are fed where things happen; every gauge is read from the live objects at scrape time
(`Snapshot`), so it cannot drift from what the server actually holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rtcproctor import __version__

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
VOICE_STATES = ("off", "loading", "ready", "unavailable")
STEP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
STEP_WINDOWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ALERT_DELAY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Snapshot:
    """The process's state right now, read from presence and the shadow proctor."""

    connections: int = 0
    students_connected: int = 0
    students_live: int = 0
    watchers: int = 0
    voice_state: str = "off"
    shadow_peers: int = 0
    voice_streams: int = 0
    pending: Sequence[float] = ()  # per stream: seconds of audio not yet handed to a step
    lag: Sequence[float] = ()  # per stream: newest audio minus the end of the analysed audio
    audio_frames: int = 0  # ever received by shadow peers
    audio_seconds: float = 0.0  # the audio those frames carried
    stride: int = 1  # 1: every window analysed; n: one in n (voice.pacing, under load)
    busy: float = 0.0  # the analysis worker's busy fraction, last measured


class _Live(Collector):
    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        s = self._read()
        yield _gauge("connections", "Socket.IO connections open", s.connections)
        yield _gauge(
            "students_connected",
            "Students with a page connected (live or not)",
            s.students_connected,
        )
        yield _gauge("students_live", "Students streaming their camera", s.students_live)
        yield _gauge("watchers", "Proctor connections watching at least one student", s.watchers)
        yield _gauge("shadow_peers", "Hidden audio peers of the shadow proctor", s.shadow_peers)
        yield _gauge("voice_streams", "Audio streams being analysed", s.voice_streams)
        yield _gauge(
            "voice_pending_seconds",
            "Audio received but not yet handed to an analysis step, summed over streams",
            sum(s.pending),
        )
        yield _gauge(
            "voice_pending_max_seconds",
            "Audio waiting for analysis in the most behind stream",
            max(s.pending, default=0.0),
        )
        yield _gauge(
            "voice_lag_seconds",
            "How far the analysis is behind the newest received audio (max over streams)",
            max(s.lag, default=0.0),
        )
        yield _gauge(
            "voice_stride",
            "1 when every analysis window is taken; n when the load allows only 1 in n",
            s.stride,
        )
        yield _gauge(
            "voice_busy_ratio",
            "Share of the time the analysis worker computed (near 1: add a process)",
            s.busy,
        )
        state = GaugeMetricFamily(
            "rtcproctor_voice_state",
            "Shadow proctor state: 1 for the current one",
            labels=["state"],
        )
        for name in VOICE_STATES:
            state.add_metric([name], 1.0 if name == s.voice_state else 0.0)
        yield state
        yield CounterMetricFamily(
            "rtcproctor_shadow_audio_frames",
            "Audio frames received by shadow peers",
            value=s.audio_frames,
        )
        yield CounterMetricFamily(
            "rtcproctor_shadow_audio_seconds",
            "Seconds of audio received by shadow peers (over frames: the packet time)",
            value=s.audio_seconds,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"rtcproctor_{name}", documentation, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("rtcproctor_build", "RTCProctor version", registry=self.registry).info(
            {"version": __version__}
        )
        self.events = Counter(
            "rtcproctor_signaling_events",
            "Signaling events handled, by event and outcome (ok or the error code)",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "rtcproctor_alerts",
            "Voice alerts raised (new episodes; an ongoing one that grows is not counted again)",
            ["type"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "rtcproctor_voice_step_seconds",
            "Duration of analysis steps that analysed audio (one batched inference each)",
            buckets=STEP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.step_windows = Histogram(
            "rtcproctor_voice_step_windows",
            "Windows analysed per step (the inference batch size)",
            buckets=STEP_WINDOWS_BUCKETS,
            registry=self.registry,
        )
        self.alert_delay = Histogram(
            "rtcproctor_voice_alert_delay_seconds",
            "From the last sample of the window that raised or grew an alert reaching the "
            "server to the alert being stored and pushed (waiting for a step, inference, "
            "storing the evidence)",
            buckets=ALERT_DELAY_BUCKETS,
            registry=self.registry,
        )
        self.windows_skipped = Counter(
            "rtcproctor_voice_windows_skipped",
            "Windows left out to stay in real time (the analysis fell behind the audio)",
            registry=self.registry,
        )

    def read_from(self, read: Callable[[], Snapshot]) -> None:
        """Gauges come from `read()` at every scrape."""
        self.registry.register(_Live(read))

    def event(self, event: str, outcome: str) -> None:
        self.events.labels(event, outcome).inc()

    def alert(self, kind: str) -> None:
        self.alerts.labels(kind).inc()

    def alert_delivered(self, seconds: float) -> None:
        self.alert_delay.observe(max(0.0, seconds))

    def step(self, seconds: float, windows: int, skipped: int = 0) -> None:
        if skipped:
            self.windows_skipped.inc(skipped)
        if windows:
            self.step_seconds.observe(seconds)
            self.step_windows.observe(windows)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
