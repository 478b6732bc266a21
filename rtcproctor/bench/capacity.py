"""`rtcproctor bench capacity`: how many students one server analyses in real time.

N simulated students stream real speech (audio only: the shadow peer receives nothing
else, so video would load only the generator) over WebRTC into the server's shadow
proctor. Every k-th student gets a second voice over theirs (or, with --takeover,
instead of theirs) at known moments; a proctor client holding the exam's key times each
`alert` from the helper's onset, so the latency covers the whole real path (RTP,
decoding, resampling, batched inference, the store, the push). Single-voice students
give the false alerts.

Over a steady window after everyone is live it prints the server's CPU (all threads,
as a share of one core per stream), its memory, the audio frames analysed against the
frames sent, the alert latencies and whether they grow, the generator's own CPU, the
machine's cores and load average, and a verdict line. With `--server` (repeatable) it
measures servers that already run (students are spread over them round robin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import socketio

from rtcproctor.bench.cluster import Cluster, RedisMissing
from rtcproctor.bench.procstat import CpuSample, pid_listening_on, sample
from rtcproctor.bench.replay import (
    PACKET_TIME,
    STUN_ANSWER_WAIT,
    Episode,
    Microphone,
    VoiceStudent,
    browser_like_consent,
    voice_media,
)
from rtcproctor.bench.server import BenchServer
from rtcproctor.bench.shadow import health, wait_voice
from rtcproctor.bench.speech import EncodedMic, encode_mics, find_speech
from rtcproctor.shadow.peer import OPUS_BITRATE

log = logging.getLogger("rtcproctor.bench")

VOICE_ALERTS = ("multiple_voices", "unknown_voice")
LAG = "rtcproctor_voice_lag_seconds"
STRIDE = "rtcproctor_voice_stride"
LAG_EVERY = 5.0  # seconds between two readings of the voice lag
ANSWER_EVERY = 1.0  # seconds between two timed GET /healthz
LOOP_SECONDS = 20.0  # each microphone loops this much of its speaker
EPISODE_GAP = 14.0  # silence of the helper between two episodes on one student
END_SLACK = 1.0  # an alert whose end is this much before an onset belongs to earlier audio
GENERATOR_NICE = -10
GO_LIVE_GAP = 0.1  # seconds between two students going live (a class arriving)
WATCH_BATCH = 500  # codes per proctor:watch (the protocol's limit)
# What "analysed in real time" means (each criterion is printed with the figures).
FRAMES_MIN = 0.95  # audio frames analysed / frames due by the wall clock
LATENCY_P95_MAX = 10.0  # seconds: a 6 s window, a 2 s hop, the step and the push
GROWTH_MAX = 2.0  # seconds: late episodes' median latency minus early episodes'
DETECTED_MIN = 0.9  # share of second voices alerted within --miss-after


@dataclass
class AlertWatcher:
    """A proctor page holding the exam's key: it watches codes and timestamps `alert`s."""

    url: str
    key: str
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(reconnection=False)
    )

    async def start(self, codes: list[str]) -> None:
        self.sio.on("alert", self._on_alert)
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=10)
        for i in range(0, len(codes), WATCH_BATCH):
            ack = await self.sio.call(
                "proctor:watch", {"codes": codes[i : i + WATCH_BATCH], "key": self.key}, timeout=30
            )
            if not (isinstance(ack, dict) and ack.get("ok")) or ack.get("errors"):
                raise RuntimeError(f"proctor:watch on {self.url} refused: {ack!r}")

    async def _on_alert(self, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("alert"), dict):
            code = str(data.get("code", "")).replace("-", "").upper()
            self.events.append((time.time(), code, data["alert"]))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


@dataclass
class Target:
    """One server under measurement and the students streaming into it."""

    server: BenchServer
    pid: int | None = None
    watcher: AlertWatcher | None = None
    students: list[int] = field(default_factory=list)
    cpu: CpuSample | None = None  # over the window
    rss_before: int | None = None  # bytes (PSS), voice ready and no student yet
    rss_after: int | None = None  # bytes (PSS), at the window's end
    frames: int | None = None  # shadow audio frames analysed during the window
    shadow_peers: int | None = None  # at the end of the window
    lag: list[float] = field(default_factory=list)  # voice lag through the window (/metrics)
    stride: list[float] = field(default_factory=list)  # analysis stride, read with the lag
    # (wall clock, seconds) of GET /healthz once a second, from go-live to the window's end
    answers: list[tuple[float, float]] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # analysis steps in the window
    # the server's part of alert latency (window complete -> pushed), its whole run
    delivery: dict[str, float] | None = None

    def read_pace(self, metrics: dict[str, float]) -> None:
        if LAG in metrics:
            self.lag.append(metrics[LAG])
        if STRIDE in metrics:
            self.stride.append(metrics[STRIDE])


@dataclass
class Run:
    students: int
    window: float
    live: int = 0
    speech: str = ""
    voices: int = 0
    helpers: int = 0
    generator_cpu: float = 0.0
    generator_stall: float = 0.0
    generator_waited: float = 0.0  # seconds per second its threads waited for a core
    packets_sent: int = 0
    renewals: int = 0  # shadow peers the server replaced during the window
    connected: int = 0  # students whose shadow peer is connected at the end of the window
    slowest_stream: float = 0.0  # packets the slowest microphone sent / packets due
    slow_streams: int = 0  # microphones that sent less than FRAMES_MIN of theirs
    worst_loss: float | None = None
    episodes: list[Episode] = field(default_factory=list)
    false_alerts: int = 0
    false_details: list[str] = field(default_factory=list)  # what each false alert was
    single_hours: float = 0.0
    mic_silent: int = 0
    started: float = 0.0  # wall clock at the window's start
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics as {series: value}; empty if it serves none (older servers)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, urllib.error.HTTPError):
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("rtcproctor_"):
            series, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[series] = float(value)
    return found


def step_counters(metrics: dict[str, float]) -> dict[str, float]:
    names = {
        "steps": "rtcproctor_voice_step_seconds_count",
        "seconds": "rtcproctor_voice_step_seconds_sum",
        "windows": "rtcproctor_voice_step_windows_sum",
    }
    return {k: metrics[v] for k, v in names.items() if v in metrics}


ALERT_DELAY = "rtcproctor_voice_alert_delay_seconds"


def delivery_figures(metrics: dict[str, float]) -> dict[str, float] | None:
    """Mean and 95th percentile (a histogram bucket's upper bound) of the server's part of
    each alert's latency: its window's last sample arriving -> the alert stored and pushed."""
    count = metrics.get(f"{ALERT_DELAY}_count", 0.0)
    if not count:
        return None
    bounds = sorted(
        (float(series.split('le="')[1].split('"')[0]), value)
        for series, value in metrics.items()
        if series.startswith(f"{ALERT_DELAY}_bucket") and "+Inf" not in series
    )
    p95 = next((bound for bound, seen in bounds if seen >= 0.95 * count), math.inf)
    return {
        "alerts": int(count),
        "mean_s": round(metrics[f"{ALERT_DELAY}_sum"] / count, 3),
        "p95_at_most_s": p95,
    }


def delivery_words(delivery: dict[str, float]) -> str:
    return f"{delivery['mean_s']:.2f} s on average, 95 % within {delivery['p95_at_most_s']:g} s"


def answer_figures(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    return {
        "median": round(1000 * statistics.median(seconds), 1),
        "max": round(1000 * max(seconds), 1),
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Capacity:
    def __init__(self, args: argparse.Namespace, targets: list[Target]) -> None:
        self.args = args
        self.targets = targets
        self.run = Run(students=args.students, window=args.seconds)
        every = args.second_voice_every
        self.with_helper = [every > 0 and (i + 1) % every == 0 for i in range(args.students)]
        self.codes: list[str] = []
        self.mics: list[Microphone] = []
        self.sims: list[VoiceStudent] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[int]] = []

    async def prepare(self) -> list[EncodedMic]:
        args = self.args
        helpers = sum(self.with_helper)
        speech = await asyncio.to_thread(
            find_speech, args.speech or [], args.eval_dir, args.students + helpers, args.seed
        )
        if helpers and len(speech.voices) < 2:
            raise SystemExit("rtcproctor bench capacity: a second voice needs two speakers")
        self.run.speech, self.run.voices, self.run.helpers = (
            speech.description,
            len(speech.voices),
            helpers,
        )
        log.info("encoding %d microphones (%s)", args.students, speech.description)
        return await asyncio.to_thread(
            encode_mics,
            speech,
            args.students,
            self.with_helper,
            LOOP_SECONDS,
            args.seed,
            args.helper_db,
            args.takeover,
        )

    async def setup(self) -> None:
        mics_task = asyncio.ensure_future(self.prepare())
        try:
            for target in self.targets:
                await wait_voice(target.server.url)
            for index in range(self.args.students):
                self.targets[index % len(self.targets)].students.append(index)
            self.codes = [""] * self.args.students
            for target in self.targets:
                codes = await asyncio.to_thread(target.server.codes, len(target.students))
                for index, code in zip(target.students, codes, strict=True):
                    self.codes[index] = code.replace("-", "").upper()
                key = target.server.key
                if not key:
                    raise SystemExit(
                        f"rtcproctor bench capacity: give the proctor key of {target.server.url} "
                        "with --key"
                    )
                target.watcher = AlertWatcher(target.server.url, key)
                await target.watcher.start([self.codes[i] for i in target.students])
                if target.pid is not None:
                    first = sample(target.pid)
                    target.rss_before = first.memory if first else None
            mics = await mics_task
        finally:
            mics_task.cancel()
        self.mics = [Microphone(mic) for mic in mics]

    async def go_live(self) -> None:
        """Students go live one after another; wait until every microphone flows."""
        budget = 60 + 2 * self.args.students
        for index, mic in enumerate(self.mics):
            target = self.targets[index % len(self.targets)]
            student = VoiceStudent(
                target.server.url, self.codes[index], voice_media(mic), label=f"capacity {index}"
            )
            self.sims.append(student)
            self._tasks.append(asyncio.ensure_future(student.run(self._stop)))
            await asyncio.sleep(GO_LIVE_GAP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(m.flowing.wait() for m in self.mics)), budget)
        self.run.live = sum(m.flowing.is_set() for m in self.mics)
        log.info("%d of %d students streaming", self.run.live, self.args.students)

    def schedule(self, start: float, end: float) -> None:
        """Second voices spread over the window, so latency can be compared early and late."""
        helpers = [i for i, yes in enumerate(self.with_helper) if yes]
        episode = self.args.episode
        period = episode + EPISODE_GAP
        for rank, index in enumerate(helpers):
            at = start + 1.0 + rank * period / len(helpers)
            while at + episode <= end:
                ep = Episode(index, self.codes[index], at, episode)
                self.mics[index].episodes.append(ep)
                self.run.episodes.append(ep)
                at += period

    def _renewals(self) -> int:
        return sum(max(0, s.shadow_requests - 1) for s in self.sims)

    async def _watch_answers(self) -> None:
        """How fast the server answers while it works: its event loop also answers the
        peers' STUN consent checks, and a peer whose checks go unanswered for 30 s dies."""
        while True:
            for target in self.targets:
                began = time.perf_counter()
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(health, target.server.url)
                    target.answers.append((time.time(), time.perf_counter() - began))
            await asyncio.sleep(ANSWER_EVERY)

    async def _watch_lag(self) -> None:
        while True:
            for target in self.targets:
                metrics = await asyncio.to_thread(scrape, target.server.url)
                target.read_pace(metrics)
            await asyncio.sleep(LAG_EVERY)

    async def _watch_stall(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            stall = time.perf_counter() - before - 0.01
            self.run.generator_stall = max(self.run.generator_stall, stall)

    async def measure(self) -> None:
        args = self.args
        answers = asyncio.ensure_future(self._watch_answers())
        log.info("warming up for %g s", args.warmup)
        await asyncio.sleep(args.warmup)
        before = {id(t): await asyncio.to_thread(self._snapshot, t) for t in self.targets}
        steps = {
            id(t): step_counters(await asyncio.to_thread(scrape, t.server.url))
            for t in self.targets
        }
        sent_before = [m.sent for m in self.mics]
        renewed_before = self._renewals()
        own_before = time.process_time()
        own_before_sample = sample(os.getpid())
        self.run.load_start = os.getloadavg()
        start = self.run.started = time.time()
        self.schedule(start, start + args.seconds)
        watchers = [
            answers,
            asyncio.ensure_future(self._watch_stall()),
            asyncio.ensure_future(self._watch_lag()),
        ]
        log.info("measuring for %g s", args.seconds)
        try:
            await asyncio.sleep(args.seconds)
        finally:
            for task in watchers:
                task.cancel()
        elapsed = time.time() - start
        self.run.window = elapsed
        self.run.generator_cpu = (time.process_time() - own_before) / elapsed
        own_now = sample(os.getpid())
        if own_before_sample is not None and own_now is not None:
            self.run.generator_waited = own_now.minus(own_before_sample).waited / elapsed
        sent = [m.sent - before for m, before in zip(self.mics, sent_before, strict=True)]
        self.run.packets_sent = sum(sent)
        due = elapsed / PACKET_TIME
        self.run.slowest_stream = min(sent, default=0) / due
        self.run.slow_streams = sum(n < FRAMES_MIN * due for n in sent)
        self.run.renewals = self._renewals() - renewed_before
        self.run.connected = sum(
            s.shadow is not None and s.shadow.connectionState == "connected" for s in self.sims
        )
        self.run.load_end = os.getloadavg()
        for target in self.targets:
            cpu0, frames0 = before[id(target)]
            cpu1, frames1 = await asyncio.to_thread(self._snapshot, target)
            if cpu0 is not None and cpu1 is not None:
                target.cpu = cpu1.minus(cpu0)
                target.rss_after = cpu1.memory
            if frames0 is not None and frames1 is not None:
                target.frames = frames1 - frames0
            metrics = await asyncio.to_thread(scrape, target.server.url)
            target.read_pace(metrics)
            now = step_counters(metrics)
            then = steps[id(target)]
            target.steps = {k: now[k] - then[k] for k in now if k in then}
        await self._wait_for_alerts()
        await self._delivery()
        for target in self.targets:
            target.delivery = delivery_figures(await asyncio.to_thread(scrape, target.server.url))

    def _snapshot(self, target: Target) -> tuple[CpuSample | None, int | None]:
        cpu = sample(target.pid) if target.pid is not None else None
        try:
            state = health(target.server.url)
        except OSError:
            return cpu, None
        target.shadow_peers = int(state.get("shadow_peers", 0))
        return cpu, int(state.get("shadow_audio_frames", 0))

    async def _wait_for_alerts(self) -> None:
        """Keep streaming until every second voice was alerted or can only be missed."""
        onsets = [e.at for e in self.run.episodes]
        deadline = max(onsets, default=time.time()) + self.args.miss_after
        while time.time() < deadline:
            self.match_alerts()
            if all(e.alert_at is not None or e.onset is None for e in self.run.episodes):
                break
            await asyncio.sleep(0.5)
        self.match_alerts()

    def match_alerts(self) -> None:
        events = sorted(
            (e for t in self.targets if t.watcher for e in t.watcher.events), key=lambda e: e[0]
        )
        for episode in self.run.episodes:
            if episode.onset is None or episode.alert_at is not None:
                continue
            for at, code, alert in events:
                if (
                    code == episode.code
                    and alert.get("type") in VOICE_ALERTS
                    and episode.onset <= at <= episode.onset + self.args.miss_after
                    and float(alert.get("end", 0)) >= episode.onset - END_SLACK
                ):
                    episode.alert_at, episode.alert_type = at, str(alert["type"])
                    break

    def count_false_alerts(self) -> None:
        """Voice alerts on single-voice audio: single-voice students, and helpers' students
        before their first second voice."""
        first_onset: dict[str, float] = {}
        first_at: dict[str, float] = {}
        for episode in self.run.episodes:
            first_at[episode.code] = min(first_at.get(episode.code, 1e18), episode.at)
            if episode.onset is not None:
                first_onset[episode.code] = min(first_onset.get(episode.code, 1e18), episode.onset)
        seen: set[tuple[str, Any]] = set()
        silent: set[tuple[str, Any]] = set()
        for target in self.targets:
            for at, code, alert in target.watcher.events if target.watcher else []:
                ident = (code, alert.get("id"))
                if alert.get("type") == "mic_silent":
                    silent.add(ident)
                elif ident not in seen and at < first_onset.get(code, 1e18):
                    seen.add(ident)
                    helper = "helper's student" if code in first_onset else "single voice"
                    start = float(alert.get("start", 0))
                    index = self.codes.index(code) if code in self.codes else -1
                    voice = self.mics[index].mic.voice if index >= 0 else "?"
                    detail = (
                        f"{alert.get('type')} on a {helper} (student {index}, {voice}), "
                        f"{float(alert.get('end', 0)) - start:.1f} s "
                        f"long, confidence {alert.get('confidence', 0):.2f}"
                    )
                    began = self.mics[index].started_at if index >= 0 else None
                    if began is not None:
                        detail += f", its audio from {start - began:.1f} s into the stream"
                    if code in first_at:  # where it stands against the second voice's turn
                        detail += (
                            f", pushed {at - first_at[code]:+.1f} s and its audio from "
                            f"{start - first_at[code]:+.1f} s from that turn's start"
                        )
                    self.run.false_details.append(detail)
        self.run.false_alerts, self.run.mic_silent = len(seen), len(silent)
        end = time.time()
        single = 0.0
        for index, mic in enumerate(self.mics):
            if mic.started_at is not None:
                single += first_onset.get(self.codes[index], end) - mic.started_at
        self.run.single_hours = single / 3600

    async def _delivery(self) -> None:
        worst: float | None = None
        for student in self.sims:
            with contextlib.suppress(Exception):
                got = await student.delivery()
                if got is not None and got[0] > 0:
                    loss = got[1] / got[0]
                    worst = loss if worst is None else max(worst, loss)
        self.run.worst_loss = worst

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=15)
        for target in self.targets:
            if target.watcher is not None:
                await target.watcher.stop()


# Reporting


def latency_figures(episodes: list[Episode]) -> dict[str, Any]:
    heard = [e for e in episodes if e.onset is not None]
    timed = sorted((e for e in heard if e.latency is not None), key=lambda e: e.onset or 0)
    latencies = [e.latency for e in timed if e.latency is not None]
    figures: dict[str, Any] = {
        "second_voices": len(heard),
        "alerted": len(latencies),
        "missed": len(heard) - len(latencies),
    }
    if latencies:
        half = len(latencies) // 2
        early, late = latencies[: max(half, 1)], latencies[half:]
        figures |= {
            "median_s": statistics.median(latencies),
            "p95_s": percentile(latencies, 0.95),
            "max_s": max(latencies),
            "early_median_s": statistics.median(early),
            "late_median_s": statistics.median(late),
        }
    return figures


SLOWEST_SHOWN = 3


def slowest_details(cap: Capacity) -> list[str]:
    """The latest alerts, with their student's voice and helper: whether a p95 comes from
    one pair of voices the model finds hard or from the server."""
    timed = [e for e in cap.run.episodes if e.latency is not None]
    timed.sort(key=lambda e: e.latency or 0.0, reverse=True)
    return [
        f"student {e.student} ({cap.mics[e.student].mic.voice}, helper "
        f"{cap.mics[e.student].mic.helper}): {e.latency:.2f} s"
        for e in timed[:SLOWEST_SHOWN]
    ]


def episode_records(cap: Capacity) -> list[dict[str, Any]]:
    """Every second voice, for the JSON: who, when (seconds into the measured window),
    how long, and its alert's latency (null: missed, or its helper never spoke)."""
    out = []
    for e in cap.run.episodes:
        mic = cap.mics[e.student].mic
        out.append(
            {
                "student": e.student,
                "voice": mic.voice,
                "helper": mic.helper,
                "at_s": round(e.at - cap.run.started, 2),
                "seconds": round(e.seconds, 2),
                "heard": e.onset is not None,
                "alert_type": e.alert_type,
                "latency_s": None if e.latency is None else round(e.latency, 3),
            }
        )
    return out


def missed_details(cap: Capacity) -> list[str]:
    """Which second voices were missed, where in their student's stream: enough to replay
    that stretch offline (the loop's position is the stream time modulo its length)."""
    out = []
    for e in cap.run.episodes:
        if e.onset is None or e.alert_at is not None:
            continue
        mic = cap.mics[e.student]
        stream = e.onset - mic.started_at if mic.started_at is not None else float("nan")
        out.append(
            f"student {e.student} ({mic.mic.voice}, helper {mic.mic.helper}): "
            f"{e.seconds:.1f} s from {stream:.1f} s into its stream"
        )
    return out


def figures(cap: Capacity) -> dict[str, Any]:
    run, args = cap.run, cap.args
    out: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in run.load_start],
        "load_average_end": [round(v, 2) for v in run.load_end],
        "students": run.students,
        "live": run.live,
        "media": f"audio only (Opus {OPUS_BITRATE // 1000} kbit/s, pre-encoded, replayed)",
        "speech": run.speech,
        "voices": run.voices,
        "second_voice_students": run.helpers,
        "second_voice_db": args.helper_db,
        "second_voice_takes_over": args.takeover,
        "window_s": round(run.window, 1),
        "warmup_s": args.warmup,
        "generator_cpu_cores": round(run.generator_cpu, 3),
        "generator_worst_stall_s": round(run.generator_stall, 3),
        "generator_waited_cores": round(run.generator_waited, 3),
        "packets_sent": run.packets_sent,
        "shadow_peers_renewed": run.renewals,
        "connected_at_end": run.connected,
        "slowest_stream_sent": round(run.slowest_stream, 3),
        "slow_streams": run.slow_streams,
        "packets_due": round(run.live * run.window / PACKET_TIME),
        "worst_stream_loss": run.worst_loss,
        "alerts": latency_figures(run.episodes),
        "miss_after_s": args.miss_after,
        "false_voice_alerts": run.false_alerts,
        "false_voice_alert_details": run.false_details,
        "missed_details": missed_details(cap),
        "slowest_details": slowest_details(cap),
        "episodes": episode_records(cap),
        "single_voice_hours": round(run.single_hours, 3),
        "mic_silent_alerts": run.mic_silent,
        "servers": [],
    }
    for target in cap.targets:
        server: dict[str, Any] = {
            "url": target.server.url,
            "students": len(target.students),
            "shadow_peers": target.shadow_peers,
            "frames_analysed": target.frames,
            "frames_due": round(
                sum(cap.mics[i].flowing.is_set() for i in target.students)
                * run.window
                / PACKET_TIME
            ),
            "voice_lag_s": [round(v, 2) for v in target.lag],
            "voice_stride": [int(v) for v in target.stride],
            "healthz_ms": {
                "warmup": answer_figures([s for t, s in target.answers if t < run.started]),
                "window": answer_figures([s for t, s in target.answers if t >= run.started]),
            },
            "voice_steps": target.steps,
            "alert_delivery": target.delivery,
        }
        if target.cpu is not None:
            streams = max(1, len(target.students))
            server |= {
                "cpu_cores": round(target.cpu.total / run.window, 3),
                "cpu_per_stream_pct": round(100 * target.cpu.total / run.window / streams, 2),
                "cpu_loop_cores": round(target.cpu.loop / run.window, 3),
                "cpu_worker_cores": round(target.cpu.children / run.window, 3),
                "cpu_waited_cores": round(target.cpu.waited / run.window, 3),
                "rss_mib": round((target.rss_after or 0) / 2**20, 1),
                "rss_before_mib": round((target.rss_before or 0) / 2**20, 1),
            }
        out["servers"].append(server)
    out["real_time"] = criteria(out)
    return out


def criteria(out: dict[str, Any]) -> dict[str, bool]:
    alerts = out["alerts"]
    due = sum(s["frames_due"] for s in out["servers"])
    analysed = sum(s["frames_analysed"] or 0 for s in out["servers"])
    checks = {
        "all_live": out["live"] == out["students"]
        and out["connected_at_end"] == out["students"]
        and all(s["shadow_peers"] == s["students"] for s in out["servers"]),
        "frames": due > 0 and analysed >= FRAMES_MIN * due,
    }
    if alerts["second_voices"]:
        checks["detected"] = alerts["alerted"] >= DETECTED_MIN * alerts["second_voices"]
        checks["latency"] = alerts.get("p95_s", math.inf) <= LATENCY_P95_MAX
        checks["not_growing"] = (
            alerts.get("late_median_s", math.inf) - alerts.get("early_median_s", 0) <= GROWTH_MAX
        )
    return checks


def yes(ok: bool) -> str:
    return "yes" if ok else "no"


def print_report(out: dict[str, Any], own_server: bool) -> None:
    p = print
    alerts = out["alerts"]
    p("RTCProctor capacity benchmark")
    load = " / ".join(f"{v:.2f}" for v in out["load_average_end"])
    load0 = " / ".join(f"{v:.2f}" for v in out["load_average_start"])
    p(
        f"  machine    {out['cores']} cores (os.cpu_count()); load average {load0} at the window's "
        f"start, {load} at its end (1/5/15 min; above {out['cores']} means other work competes)"
    )
    for server in out["servers"]:
        how = (
            "started by the bench: rtcproctor serve --ice-loopback, RTCPROCTOR_VOICE=1, "
            "SQLite in a temp dir"
            if own_server
            else "given with --server"
        )
        p(f"  server     {server['url']} ({how}), {server['students']} students")
    p(
        f"  students   {out['live']} of {out['students']} live, {out['media']}: the shadow peer "
        "receives only audio, so video would load only the generator"
    )
    p(
        f"             they wait up to {STUN_ANSWER_WAIT:g} s for each STUN consent answer, "
        "as browsers tolerate late answers (aioice alone: 0.5 s)"
    )
    p(f"  speech     {out['speech']} ({out['voices']} voices)")
    p(
        f"             {out['second_voice_students']} students get a second voice "
        f"{'instead of' if out.get('second_voice_takes_over') else 'over'} theirs "
        f"({_level_words(out['second_voice_db'])}, {alerts['second_voices']} episodes spread "
        "over the window)"
    )
    p(f"  window     {out['window_s']:g} s of steady state after {out['warmup_s']:g} s warm-up")
    for server in out["servers"]:
        if "cpu_cores" in server:
            worker = server["cpu_worker_cores"]
            other = server["cpu_cores"] - server["cpu_loop_cores"] - worker
            per_stream = server["cpu_per_stream_pct"]
            p(
                f"  server CPU {server['cpu_cores']:.2f} cores = {per_stream:.2f} % "
                f"of one core per stream (user+system: event loop "
                f"{server['cpu_loop_cores']:.2f}, other threads {other:.2f} (decoding), "
                f"voice worker process {worker:.2f})"
            )
            receive = (server["cpu_cores"] - worker) / max(1, server["students"])
            p(
                f"             receive path (server without the voice worker) "
                f"{100 * receive:.2f} % of one core per stream"
            )
            p(
                f"             its threads waited {server['cpu_waited_cores']:.2f} s per s for a "
                "core (run queue, server process; high when the machine is oversubscribed)"
            )
            grown = server["rss_mib"] - server["rss_before_mib"]
            per = grown / max(1, server["students"])
            p(
                f"  server mem {server['rss_mib']:.0f} MiB ({server['rss_before_mib']:.0f} MiB "
                f"before students, {per:+.1f} MiB per stream; PSS, voice workers included)"
            )
        else:
            p(f"  server CPU not measurable: {server['url']} is not a process on this machine")
        due, got = server["frames_due"], server["frames_analysed"]
        share = f"{100 * got / due:.1f} %" if got is not None and due else "n/a"
        p(
            f"  audio      {got if got is not None else 'n/a'} frames analysed of {due} due by the "
            f"clock ({share}); {server['shadow_peers']} shadow peers at the end"
        )
        timed = {k: v for k, v in server["healthz_ms"].items() if v}
        if timed:
            p(
                "  answers    GET /healthz took "
                + ", ".join(
                    f"median {v['median']:.0f} ms, max {v['max']:.0f} ms in the {k}"
                    for k, v in timed.items()
                )
                + " (once a second: the event loop's delay, which signaling also waits)"
            )
        lag, steps = server["voice_lag_s"], server["voice_steps"]
        if lag:
            p(
                f"  voice lag  {lag[0]:.1f} s at the start, max {max(lag):.1f} s, {lag[-1]:.1f} s "
                "at the end (newest audio minus analysed audio, worst stream, /metrics)"
            )
        stride = server.get("voice_stride") or []
        if stride:
            p(
                f"  pace       1 window in {stride[-1]} analysed at the end, 1 in {max(stride)} "
                "at most (1: every window; more: the server thinned windows to keep up)"
            )
        if steps.get("steps"):
            n = steps["steps"]
            p(
                f"  voice      {n:.0f} analysis steps in the window, {steps['seconds'] / n:.2f} s "
                f"and {steps.get('windows', 0) / n:.1f} windows each on average "
                f"({1000 * steps['seconds'] / max(1, steps.get('windows', 0)):.0f} ms per window)"
            )
        delivery = server.get("alert_delivery")
        if delivery:
            p(
                f"  server's   {delivery_words(delivery)}: from the last sample of an alert's "
                f"window arriving to the alert pushed ({delivery['alerts']} alerts and revisions)"
            )
    loss = out["worst_stream_loss"]
    p(
        f"  generator  {100 * out['generator_cpu_cores']:.0f} % of one core "
        f"({100 * out['generator_cpu_cores'] / max(1, out['live']):.2f} % per stream); "
        f"{out['packets_sent']} packets sent of {out['packets_due']} due ({out['slow_streams']} "
        f"streams below {FRAMES_MIN:.0%}, slowest {100 * out['slowest_stream_sent']:.0f} %); "
        f"nice {out.get('generator_nice', 0)}, waited {out['generator_waited_cores']:.2f} s "
        "per s for a core; worst loop stall "
        f"{1000 * out['generator_worst_stall_s']:.0f} ms"
    )
    p(
        "  delivery   worst stream loss (RTCP) "
        + (f"{100 * loss:.2f} %" if loss is not None else "n/a")
        + f"; {out['connected_at_end']} of {out['live']} students' shadow peers still connected "
        f"at the end; {out['shadow_peers_renewed']} renewed by the server in the window"
    )
    if alerts["alerted"]:
        p(
            f"  latency    second voice onset -> proctor's alert: median {alerts['median_s']:.2f} s"
            f"   p95 {alerts['p95_s']:.2f} s   max {alerts['max_s']:.2f} s"
        )
        p(
            f"             earlier half median {alerts['early_median_s']:.2f} s, later half "
            f"{alerts['late_median_s']:.2f} s"
        )
        p(f"             slowest: {'; '.join(out['slowest_details'])}")
    p(
        f"  alerts     {alerts['alerted']} of {alerts['second_voices']} second voices alerted, "
        f"{alerts['missed']} missed (none within {out['miss_after_s']:g} s)"
    )
    for detail in out["missed_details"]:
        p(f"             missed: {detail}")
    hours = out["single_voice_hours"]
    p(
        f"  false      {out['false_voice_alerts']} voice alerts on {hours:.2f} h "
        f"of single-voice audio; {out['mic_silent_alerts']} mic_silent alerts"
    )
    for detail in out["false_voice_alert_details"]:
        p(f"             {detail}")
    checks = out["real_time"]
    p(
        "  criteria   "
        + ", ".join(f"{name} {yes(ok)}" for name, ok in checks.items())
        + f" (frames >= {FRAMES_MIN:.0%} of due, alerted >= {DETECTED_MIN:.0%}, "
        f"p95 <= {LATENCY_P95_MAX:g} s, growth <= {GROWTH_MAX:g} s)"
    )
    p(f"capacity: {out['live']} students analysed in real time: {yes(all(checks.values()))}")
    sys.stdout.flush()


async def bench(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    cap = Capacity(args, targets)
    try:
        await cap.setup()
        await cap.go_live()
        if cap.run.live:
            await cap.measure()
        cap.count_false_alerts()
    finally:
        await cap.stop()
    return figures(cap)


def prioritise_generator() -> int:
    """Run the generator ahead of the server (after starting it: children inherit this).

    Phones are not on the server's cores; here they are, and a starved generator would
    offer less audio exactly when the server is busiest. Raising a priority needs
    CAP_SYS_NICE (root); without it the generator stays at its nice value.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, GENERATOR_NICE)
    return os.getpriority(os.PRIO_PROCESS, 0)


def split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def setup_generator() -> None:
    """The load generator's process: its log, peers on loopback only that wait for STUN
    answers as browsers do, and a clean exit on SIGTERM."""
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("RTCPROCTOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aioice", "aiortc", "rtcproctor.sim", "socketio", "engineio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from rtcproctor.rtc.hosts import loopback_only

    loopback_only()
    browser_like_consent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(args: argparse.Namespace) -> int:
    setup_generator()
    urls, keys = split(args.server), split(args.key)
    if keys and len(keys) not in (1, len(urls)):
        print("rtcproctor bench capacity: give one --key, or one per --server", file=sys.stderr)
        return 2
    runs = [1, args.processes] if args.compare else [args.processes]
    outs: list[dict[str, Any]] = []
    for processes in runs:
        try:
            out = measure(args, urls, keys, processes)
        except TimeoutError:
            print("rtcproctor bench capacity: gave up (time budget spent)", file=sys.stderr)
            return 1
        except (RuntimeError, RedisMissing) as exc:  # a server did not start, voice off
            print(f"rtcproctor bench capacity: {exc}", file=sys.stderr)
            return 1
        outs.append(out)
        if not args.json:
            print_report(out, own_server=not urls)
    if args.compare:
        comparison = compare(outs)
        if args.json:
            print(json.dumps({"runs": outs, "comparison": comparison}, indent=2, default=str))
        else:
            print_comparison(comparison)
    elif args.json:
        print(json.dumps(outs[0], indent=2, default=str))
    return 0 if all(out["live"] for out in outs) else 1


def measure(
    args: argparse.Namespace, urls: list[str], keys: list[str], processes: int
) -> dict[str, Any]:
    """One run: the given servers, or `processes` started here (over a Redis of their own
    when more than one)."""
    servers: list[BenchServer] = []
    cluster: Cluster | None = None
    try:
        if urls:
            servers = [
                BenchServer.given(url, keys[min(i, len(keys) - 1)] if keys else None)
                for i, url in enumerate(urls)
            ]
        elif processes > 1:
            cluster = Cluster.start(processes, timeout=120)
            servers = cluster.servers
        else:
            servers = [BenchServer.start(timeout=60, env={"RTCPROCTOR_VOICE": "1"})]
        targets = [
            Target(s, s.process.pid if s.process is not None else pid_listening_on(s.url))
            for s in servers
        ]
        nice = prioritise_generator()
        budget = 300 + args.warmup + args.seconds + args.miss_after + 3 * args.students
        out = asyncio.run(asyncio.wait_for(bench(args, targets), budget))
        out["generator_nice"] = nice
        out["processes"] = len(servers)
        return out
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            for server in servers:
                server.stop()


def analysed_per_second(out: dict[str, Any]) -> float:
    """Windows the servers analysed per second of the steady window, all together."""
    windows = sum(s["voice_steps"].get("windows", 0.0) for s in out["servers"])
    return windows / out["window_s"]


def compare(outs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for out in outs:
        alerts = out["alerts"]
        rows.append(
            {
                "processes": out["processes"],
                "students": out["live"],
                "windows_per_s": round(analysed_per_second(out), 2),
                "cpu_cores": round(sum(s.get("cpu_cores", 0.0) for s in out["servers"]), 2),
                "latency_median_s": alerts.get("median_s"),
                "latency_p95_s": alerts.get("p95_s"),
                "real_time": all(out["real_time"].values()),
            }
        )
    one, many = rows[0]["windows_per_s"], rows[-1]["windows_per_s"]
    return {
        "rows": rows,
        "ratio": round(many / one, 2) if one else None,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def print_comparison(c: dict[str, Any]) -> None:
    print("\ncomparison (same students, same speech; analysis work done per second)")
    for r in c["rows"]:
        median, p95 = r["latency_median_s"], r["latency_p95_s"]
        when = f"median {median:.1f} s, p95 {p95:.1f} s" if median is not None else "no alert"
        print(
            f"  {r['processes']} process{'es' if r['processes'] > 1 else ''}: "
            f"{r['windows_per_s']:.1f} windows analysed per s, server CPU {r['cpu_cores']:.2f} "
            f"cores, alerts {when}, real time: {'yes' if r['real_time'] else 'no'}"
        )
    n = c["rows"][-1]["processes"]
    print(
        f"  ratio {c['ratio']}x (ideal {n}x) on {c['cores']} cores, load average "
        f"{c['load_average'][0]:.2f}"
    )
    if c["cores"] and c["cores"] < 2 * n + 1:
        print(
            f"  why not {n}x: each process needs a core for its event loop and one for its "
            f"voice worker, and the load generator shares them; with {c['cores']} cores "
            "the processes only split the same CPU (more processes add room where there "
            "are cores to give them)"
        )


def _level_words(db: float) -> str:
    if db == 0:
        return "same level"
    return f"{abs(db):g} dB {'quieter' if db < 0 else 'louder'}"


def run(args: argparse.Namespace) -> int:
    if (
        args.students < 1
        or args.seconds <= 0
        or args.warmup < 0
        or args.episode <= 0
        or args.miss_after <= 0
        or args.processes < 1
        or (args.compare and (args.processes < 2 or args.server))
    ):
        print(
            "rtcproctor bench capacity: need --students >= 1, --seconds > 0, --warmup >= 0, "
            "--episode > 0, --miss-after > 0, --processes >= 1 (>= 2 with --compare, "
            "which starts its own servers: no --server)",
            file=sys.stderr,
        )
        return 2
    return main(args)
