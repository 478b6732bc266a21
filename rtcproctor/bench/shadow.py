"""`rtcproctor bench shadow`: students join and leave over and over; the server's memory,
with one hidden aiortc peer and one detector stream per live student, must stay flat."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
import urllib.request
from pathlib import Path

from rtcproctor.bench.server import BenchServer
from rtcproctor.rtc.hosts import loopback_only
from rtcproctor.sim.media import open_media
from rtcproctor.sim.student import SimStudent

log = logging.getLogger("rtcproctor.bench")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        return json.load(r)


async def wait_voice(url: str, within: float = 180) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        voice = (await asyncio.to_thread(health, url))["voice"]
        if voice == "ready":
            return
        if voice in ("off", "unavailable"):
            raise RuntimeError(f"voice detection is {voice}")
        await asyncio.sleep(0.5)
    raise RuntimeError("voice detection did not become ready")


async def one_cycle(url: str, code: str, audio: Path | None, hold: float) -> float:
    """Join, go live, stream `hold` seconds into the shadow peer, leave; seconds taken."""
    began = time.monotonic()
    stop = asyncio.Event()
    student = SimStudent(url, code, open_media(audio, None, "churn"), label="churn")
    task = asyncio.ensure_future(student.run(stop))
    await asyncio.sleep(hold)
    stop.set()
    await task
    return time.monotonic() - began


async def churn(args: argparse.Namespace, server: BenchServer) -> int:
    await wait_voice(server.url)
    assert server.process is not None
    pid = server.process.pid
    codes = server.codes(args.parallel)
    samples: list[tuple[int, float]] = []
    durations: list[float] = []
    done = 0

    async def lane(code: str, count: int) -> None:
        nonlocal done
        for _ in range(count):
            durations.append(await one_cycle(server.url, code, args.audio, args.hold))
            done += 1

    per_lane = max(1, args.cycles // args.parallel)
    total = per_lane * args.parallel
    warm = min(args.warmup, per_lane)
    await asyncio.gather(*(lane(c, warm) for c in codes))
    samples.append((done, rss_mib(pid)))
    remaining = per_lane - warm
    step = max(1, remaining // 4)
    while remaining > 0:
        n = min(step, remaining)
        await asyncio.gather(*(lane(c, n) for c in codes))
        remaining -= n
        await asyncio.sleep(2)
        samples.append((done, rss_mib(pid)))
    await asyncio.sleep(3)
    final = health(server.url)
    # Allocator arenas and torch's per-batch-size caches fill during the first ~100
    # cycles; a leak shows as growth that goes on, so compare the second half only.
    half = next(s for s in samples if s[0] >= samples[-1][0] / 2)
    first_cycles, first_rss = half
    last_cycles, last_rss = samples[-1]
    per_100 = (last_rss - first_rss) / max(1, last_cycles - first_cycles) * 100
    print("RTCProctor shadow-peer churn benchmark")
    print(f"  machine    {os.cpu_count()} cores")
    print(
        f"  cycles     {total} join → live → {args.hold:g} s of audio → leave, "
        f"{args.parallel} students at a time ({warm * args.parallel} warm-up)"
    )
    print(f"  cycle      median {statistics.median(durations):.2f} s")
    print("  server RSS " + ", ".join(f"{c} cycles: {m:.0f} MiB" for c, m in samples))
    print(
        f"  growth     {per_100:+.1f} MiB per 100 cycles after warm-up "
        f"({last_rss - first_rss:+.1f} MiB over {last_cycles - first_cycles} cycles)"
    )
    print(
        f"  after      {final['shadow_peers']} shadow peers, {final['live']} live students "
        "(both should be 0)"
    )
    return 0 if final["shadow_peers"] == 0 else 1


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    loopback_only()
    server = BenchServer.start(timeout=60)
    try:
        return asyncio.run(churn(args, server))
    finally:
        server.stop()
