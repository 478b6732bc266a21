"""`rtcproctor bench delay`: the development set's mixtures through the real WebRTC path.

`bench voice` times the detector on audio. This streams the same mixtures (same seed,
same conditions) from simulated students over WebRTC, as Opus, into a server started
here, and times each second voice from its first word to the `alert` a proctor client
holding the exam's key receives: second voice onset -> alert on the monitor page, with
everything between (packets, decoding, waiting for a step, inference, the store, the
push). Each mixture is a student of its own, going live as it starts (a fresh stream,
enrolled from its own first words), `--concurrent` of them streaming at once, as a
class would. Single-speaker mixtures, and each mixture's part before its second voice,
give the false alerts.

Only conditions that are not already Opus are streamed (opus_quiet10 is quiet10 through
Opus: here every mixture goes through Opus, as WebRTC carries it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtcproctor.bench.capacity import (
    VOICE_ALERTS,
    AlertWatcher,
    delivery_figures,
    delivery_words,
    percentile,
    prioritise_generator,
    scrape,
    setup_generator,
    step_counters,
)
from rtcproctor.bench.replay import (
    PACKET_TIME,
    Microphone,
    VoiceStudent,
    voice_media,
)
from rtcproctor.bench.server import BenchServer
from rtcproctor.bench.shadow import wait_voice
from rtcproctor.bench.speech import NOISE_DBFS, EncodedMic, opus_packets
from rtcproctor.voice.audio import SAMPLE_RATE
from rtcproctor.voice.bench import TARGETED, Corpus, Trial, condition_trials
from rtcproctor.voice.detector import DetectorConfig

log = logging.getLogger("rtcproctor.bench")

CONDITIONS = ("single", "handoff", "overlap", "quiet10", "gap_whisper")
# After its audio a student keeps streaming the room this long, then leaves: a second
# voice is matched until it has left the last window (as `bench voice` scores it).
TAIL = DetectorConfig().window + 4.0
END_SLACK = 1.0  # an alert ending this long before an onset is about earlier audio
GO_LIVE_WITHIN = 60.0  # seconds for a student's audio to flow, else the trial is lost
DELAY_TARGET = 4.0  # the p95, seconds


@dataclass
class Streamed:
    """One mixture as one student: its code, and its microphone's wall clock."""

    trial: Trial
    condition: str
    code: str
    packets: list[bytes] = field(repr=False)
    started_at: float | None = None  # wall clock of the first packet


@dataclass
class Outcome:
    condition: str
    trial: str
    onset: float  # seconds into the mixture
    latency: float | None  # onset -> alert received; None: missed
    alert_type: str | None = None


def encode(trials: dict[str, list[Trial]], codes: list[str], seed: int) -> list[Streamed]:
    """Each mixture with the room after it, as Opus packets at the shadow peer's packet time."""
    rng = np.random.default_rng(seed)
    out: list[Streamed] = []
    flat = [(c, t) for c, ts in trials.items() for t in ts]
    for (condition, trial), code in zip(flat, codes, strict=True):
        tail = rng.normal(0, 10 ** (NOISE_DBFS / 20), int(TAIL * SAMPLE_RATE)).astype(np.float32)
        packets = opus_packets(np.concatenate([trial.audio, tail]))
        out.append(Streamed(trial, condition, code, packets))
    return out


async def stream_one(url: str, item: Streamed) -> None:
    """Go live, play the mixture once (and the room after it), leave."""
    mic = Microphone(EncodedMic(item.trial.name, item.packets))
    student = VoiceStudent(url, item.code, voice_media(mic), label=item.trial.name)
    stop = asyncio.Event()
    task = asyncio.ensure_future(student.run(stop))
    try:
        await asyncio.wait_for(mic.flowing.wait(), GO_LIVE_WITHIN)
        item.started_at = mic.started_at
        assert item.started_at is not None
        await asyncio.sleep(
            max(0.0, item.started_at + len(item.packets) * PACKET_TIME - time.time())
        )
    except TimeoutError:
        log.warning("%s: no audio flowed within %g s", item.trial.name, GO_LIVE_WITHIN)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def lane(url: str, queue: asyncio.Queue[Streamed]) -> None:
    while True:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        await stream_one(url, item)


def score(
    streamed: list[Streamed], events: list[tuple[float, str, dict[str, Any]]]
) -> tuple[list[Outcome], list[str], float]:
    """Per second voice its latency (None: missed); the false alerts; single-speaker hours."""
    by_code: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for at, code, alert in sorted(events, key=lambda e: e[0]):
        if alert.get("type") in VOICE_ALERTS:
            by_code.setdefault(code, []).append((at, alert))
    outcomes: list[Outcome] = []
    false: list[str] = []
    single = 0.0
    for item in streamed:
        if item.started_at is None:
            continue
        t0, trial = item.started_at, item.trial
        alerts = by_code.get(item.code, [])
        single += trial.single_until
        firsts: dict[Any, float] = {}
        for at, alert in alerts:
            firsts.setdefault(alert.get("id"), at)
        for ident, at in firsts.items():
            if at < t0 + trial.single_until:
                false.append(f"{trial.name}: alert {ident} {at - t0:.1f} s into the mixture")
        for on, off in trial.episodes:
            onset = t0 + on
            horizon = t0 + off + TAIL
            hit = next(
                (
                    (at, alert)
                    for at, alert in alerts
                    if onset < at <= horizon and float(alert.get("end", 0)) >= onset - END_SLACK
                ),
                None,
            )
            outcomes.append(
                Outcome(
                    item.condition,
                    trial.name,
                    on,
                    None if hit is None else hit[0] - onset,
                    None if hit is None else str(hit[1].get("type")),
                )
            )
    return outcomes, false, single / 3600


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    found = [o.latency for o in outcomes if o.latency is not None]
    return {
        "second_voices": len(outcomes),
        "alerted": len(found),
        "recall": round(len(found) / len(outcomes), 3) if outcomes else None,
        "median_s": round(statistics.median(found), 2) if found else None,
        "p95_s": round(percentile(found, 0.95), 2) if found else None,
        "within_target": sum(v <= DELAY_TARGET for v in found),
    }


async def bench(args: argparse.Namespace, server: BenchServer) -> dict[str, Any]:
    corpus = Corpus.load(args.eval_dir / "librispeech-train-clean-100")
    conditions = [c for c in args.conditions.split(",") if c]
    trials = {
        c: condition_trials(corpus, c, args.single if c == "single" else args.trials, args.seed)
        for c in conditions
    }
    count = sum(len(t) for t in trials.values())
    await wait_voice(server.url)
    # As the proctor client reports them: without dashes, upper case.
    codes = [c.replace("-", "").upper() for c in await asyncio.to_thread(server.codes, count)]
    log.info("encoding %d mixtures", count)
    streamed = await asyncio.to_thread(encode, trials, codes, args.seed)
    watcher = AlertWatcher(server.url, server.key or "")
    await watcher.start(codes)
    queue: asyncio.Queue[Streamed] = asyncio.Queue()
    for item in sorted(streamed, key=lambda s: s.trial.audio.size, reverse=True):
        queue.put_nowait(item)  # the longest first: the lanes end together
    began = time.time()
    load_start = os.getloadavg()
    log.info("%d mixtures, %d students at once", count, args.concurrent)
    try:
        await asyncio.gather(*(lane(server.url, queue) for _ in range(args.concurrent)))
        await asyncio.sleep(5.0)  # the last windows' alerts
    finally:
        await watcher.stop()
    metrics = await asyncio.to_thread(scrape, server.url)
    outcomes, false, hours = score(streamed, watcher.events)
    targeted = [o for o in outcomes if o.condition in TARGETED]
    return {
        "cores": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "seed": args.seed,
        "concurrent": args.concurrent,
        "mixtures": count,
        "streamed": sum(s.started_at is not None for s in streamed),
        "seconds": round(time.time() - began, 1),
        "conditions": {
            c: summary([o for o in outcomes if o.condition == c])
            for c in conditions
            if c != "single"
        },
        "pooled": summary(targeted),
        "false_voice_alerts": len(false),
        "false_details": false,
        "single_voice_hours": round(hours, 3),
        "stride_at_end": metrics.get("rtcproctor_voice_stride"),
        "alert_delivery": delivery_figures(metrics),
        "voice_steps": step_counters(metrics),
        "slowest": [
            f"{o.trial}: {o.latency:.2f} s ({o.alert_type})"
            for o in sorted(targeted, key=lambda o: -(o.latency or 0))[:5]
            if o.latency is not None
        ],
        "episodes": [
            {
                "trial": o.trial,
                "onset_s": round(o.onset, 2),
                "latency_s": None if o.latency is None else round(o.latency, 3),
                "alert_type": o.alert_type,
            }
            for o in outcomes
        ],
        "missed": [
            f"{o.trial} (second voice from {o.onset:.1f} s)" for o in outcomes if o.latency is None
        ],
    }


def print_report(out: dict[str, Any]) -> None:
    print("RTCProctor detection delay through WebRTC (bench delay)")
    print(
        f"  machine    {out['cores']} cores; load average {out['load_average_start'][0]:.2f} at "
        f"the start, {out['load_average_end'][0]:.2f} at the end"
    )
    print(
        f"  mixtures   {out['streamed']} of {out['mixtures']} streamed (seed {out['seed']}), "
        f"{out['concurrent']} students at once, in {out['seconds']:.0f} s"
    )
    print(f"  {'condition':<13} {'voices':>6} {'recall':>6} {'median s':>9} {'p95 s':>7}  <= 4 s")
    rows = [*out["conditions"].items(), ("ALL targeted", out["pooled"])]
    for name, row in rows:
        if not row["second_voices"]:
            continue
        median = "-" if row["median_s"] is None else f"{row['median_s']:.2f}"
        p95 = "-" if row["p95_s"] is None else f"{row['p95_s']:.2f}"
        print(
            f"  {name:<13} {row['second_voices']:>6} {row['recall']:>6.3f} {median:>9} {p95:>7}"
            f"  {row['within_target']}/{row['second_voices']}"
        )
    for line in out["slowest"]:
        print(f"  slowest    {line}")
    for line in out["missed"]:
        print(f"  missed     {line}")
    hours = out["single_voice_hours"]
    rate = out["false_voice_alerts"] / hours if hours else math.nan
    print(
        f"  false      {out['false_voice_alerts']} voice alerts in {hours:.2f} h of single-speaker "
        f"audio ({rate:.2f} per hour)"
    )
    for line in out["false_details"]:
        print(f"             {line}")
    delivery = out["alert_delivery"]
    if delivery:
        print(
            f"  server's   {delivery_words(delivery)} from a window's last sample to its alert "
            "pushed; "
            f"1 window in {out['stride_at_end'] or 1:g} analysed at the end"
        )
    steps = out["voice_steps"]
    if steps.get("steps"):
        n = steps["steps"]
        print(
            f"  voice      {n:.0f} analysis steps, {steps['seconds'] / n:.3f} s and "
            f"{steps.get('windows', 0) / n:.1f} windows each on average"
        )
    pooled = out["pooled"]
    if pooled["p95_s"] is not None:
        ok = pooled["p95_s"] <= DELAY_TARGET
        print(
            f"delay: p95 {pooled['p95_s']:.2f} s over {pooled['alerted']} alerted second voices "
            f"(target <= {DELAY_TARGET:g} s): {'yes' if ok else 'no'}"
        )
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    unknown = set(args.conditions.split(",")) - set(CONDITIONS) - {""}
    if unknown or args.trials < 1 or args.single < 0 or args.concurrent < 1:
        print(
            "rtcproctor bench delay: need --trials >= 1, --single >= 0, --concurrent >= 1 and "
            f"conditions among {','.join(CONDITIONS)}",
            file=sys.stderr,
        )
        return 2
    if not (args.eval_dir / "librispeech-train-clean-100").is_dir():
        print(f"rtcproctor bench delay: no evaluation set in {args.eval_dir}", file=sys.stderr)
        return 2
    setup_generator()
    server = BenchServer.start(timeout=60, env={"RTCPROCTOR_VOICE": "1"})
    try:
        prioritise_generator()
        out = asyncio.run(bench(args, server))
    except RuntimeError as exc:
        print(f"rtcproctor bench delay: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_report(out)
    return 0 if out["streamed"] == out["mixtures"] else 1
