"""`rtcproctor bench signaling`: clients held, relay rate and latency, Go Live → first frame.

Runs against a server it starts itself (a separate process on 127.0.0.1) unless
`--server` is given; this process is the load generator. Prints its figures next to
the targets and exits 0 when every phase ran (a missed target is a figure, not an error).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import statistics
import sys
import time

from rtcproctor.bench.golive import measure as measure_go_live
from rtcproctor.bench.load import CONNECT_CONCURRENCY, PER_SOCKET_RATE, LoadResult, LoadRun
from rtcproctor.bench.server import BenchServer

log = logging.getLogger("rtcproctor.bench")

TARGET_CLIENTS = 2000
TARGET_RATE = 1000
TARGET_P99_MS = 50.0
TARGET_GO_LIVE_S = 1.5


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an unsorted list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def verdict(ok: bool, at_target_size: bool) -> str:
    if not at_target_size:
        return "(not run at target size)"
    return "MEETS TARGET" if ok else "MISSES TARGET"


def report(
    args: argparse.Namespace,
    server: BenchServer,
    load: LoadResult,
    go_live: list[float],
    go_live_failed: int,
) -> None:
    own = server.process is not None
    p = print
    p("RTCProctor signaling benchmark")
    p(
        f"  server     {server.url} "
        + (
            "(started by the bench: rtcproctor serve --ice-loopback, SQLite in a temp dir)"
            if own
            else "(given with --server)"
        )
    )
    p(
        f"  machine    {os.cpu_count()} cores (os.cpu_count()); server and load generator "
        "are separate processes"
    )
    p("")
    held_ok = load.clients_held >= TARGET_CLIENTS
    p(
        f"  clients    {load.clients_connected} of {load.clients_wanted} connected, "
        f"{load.clients_held} still connected after {args.seconds:g} s "
        f"({load.pings_answered} pings answered, {load.connect_failures} failed to connect)"
    )
    p(
        f"             ({load.idle_students} joined students waiting, {load.pairs} proctors and "
        f"{load.pairs} live students relaying; all connected and joined in "
        f"{load.connect_seconds:.1f} s, {CONNECT_CONCURRENCY} at a time)"
    )
    p(
        f"             target: >= {TARGET_CLIENTS:,} held   "
        f"{verdict(held_ok, load.clients_wanted >= TARGET_CLIENTS)}"
    )
    p(
        f"  relay      {load.rate_achieved:.1f} msg/s achieved at a target of "
        f"{load.rate_target:g} msg/s ({load.pairs} student->proctor pairs at "
        f"{load.rate_target / max(load.pairs, 1):.1f} msg/s each; per-socket limit 20/s)"
    )
    p(
        f"             {load.sent} sent, {load.received} received, {load.lost} lost; acks: "
        f"{load.ack_ok} ok, {load.ack_rate_limited} rate_limited, {load.ack_other} other"
    )
    at_rate = load.rate_target >= TARGET_RATE and load.clients_held >= TARGET_CLIENTS
    if load.latencies:
        ms = [v * 1000 for v in load.latencies]
        p99 = percentile(ms, 0.99)
        p(
            f"  latency    p50 {percentile(ms, 0.50):.1f} ms   p99 {p99:.1f} ms   "
            f"max {max(ms):.1f} ms   (sender -> receiver, {len(ms)} messages)"
        )
        p(
            f"             target: p99 < {TARGET_P99_MS:g} ms at {TARGET_RATE:,} msg/s   "
            f"{verdict(p99 < TARGET_P99_MS and load.rate_achieved >= 0.95 * TARGET_RATE, at_rate)}"
        )
    else:
        p("  latency    no message was relayed")
    period = max(load.elapsed, 1e-9)
    server_cpu = ""
    if load.server_cpu is not None:
        server_cpu = f"server {100 * load.server_cpu / period:.0f}%, "
    p(
        f"  CPU        {server_cpu}load generator {100 * load.load_cpu / period:.0f}% "
        f"of one core during the period; load generator's worst loop stall "
        f"{1000 * load.load_lag_max:.0f} ms"
    )
    waits = [
        f"{name} {1000 * value:.0f} ms"
        for name, value in (("server", load.server_queued), ("load generator", load.load_queued))
        if value is not None
    ]
    if waits:
        p(
            f"  CPU wait   {', '.join(waits)} runnable but waiting for a core during the period "
            "(run-queue delay of each event-loop thread)"
        )
    p(
        f"  machine    load average {' / '.join(f'{v:.2f}' for v in load.load_average)} "
        "(1, 5, 15 min, at the end of the period; anything above 2 competes for these cores)"
    )
    if go_live:
        p(
            f"  go live    median {statistics.median(go_live):.3f} s   max {max(go_live):.3f} s   "
            f"({len(go_live)} runs, {go_live_failed} failed; Go Live -> proctor's first video "
            "frame, aiortc peers)"
        )
        p(
            f"             target: < {TARGET_GO_LIVE_S:g} s   "
            f"{verdict(max(go_live) < TARGET_GO_LIVE_S and not go_live_failed, True)}"
        )
    else:
        p(f"  go live    every run failed ({go_live_failed})")
    sys.stdout.flush()


async def bench(args: argparse.Namespace, server: BenchServer) -> int:
    load = LoadRun(
        server.url, args.clients, args.rate, args.seconds, server.cpu_seconds, server.queued_seconds
    )
    if args.rate / load.result.pairs > 2 * PER_SOCKET_RATE:
        log.warning(
            "%g msg/s over %d pairs exceeds the server's per-socket limit",
            args.rate,
            load.result.pairs,
        )
    started = time.monotonic()
    codes = await asyncio.to_thread(server.codes, load.codes_needed + args.go_live_runs)
    log.info("%d codes made in %.1f s", len(codes), time.monotonic() - started)
    log.info(
        "connecting %d clients, then relaying %g msg/s for %g s",
        args.clients,
        args.rate,
        args.seconds,
    )
    result = await load.run(codes[: load.codes_needed])
    log.info("measuring Go Live -> first video frame, %d runs", args.go_live_runs)
    times, failed = await measure_go_live(server.url, codes[load.codes_needed :])
    report(args, server, result, times, failed)
    return 0 if result.clients_connected and result.received and times else 1


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("RTCPROCTOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aioice", "aiortc", "rtcproctor.sim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from rtcproctor.rtc.hosts import loopback_only

    loopback_only()
    # SIGTERM unwinds like Ctrl-C, so the server we started is stopped in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    budget = 120 + args.seconds + args.clients / 20 + 30 * args.go_live_runs
    server = BenchServer(args.server.rstrip("/")) if args.server else BenchServer.start()
    try:
        return asyncio.run(asyncio.wait_for(bench(args, server), budget))
    except TimeoutError:
        print(f"rtcproctor bench: gave up after {budget:.0f} s", file=sys.stderr)
        return 1
    finally:
        server.stop()
