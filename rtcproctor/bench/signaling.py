"""`rtcproctor bench signaling`: clients held, relay rate and latency, Go Live → first frame.

Runs against servers it starts itself (separate processes on 127.0.0.1: one, or
`--processes N` sharing a redis-server and a data dir) unless `--server` gives running
ones; this process is the load generator. Prints its figures next to the targets and
exits 0 when every phase ran (a missed target is a figure, not an error).

`--compare` measures the relay capacity (the highest rate sustained within the latency
and loss targets, found by stepping the rate) with one process and then with N, and
prints the ratios: what adding processes on this machine buys. On a busy machine the
p99 target mostly measures the scheduler, so a looser figure (the rate the servers keep
up with: median within the target, nothing piling up) and the CPU each message costs
are given too.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rtcproctor.bench.cluster import Cluster, RedisMissing
from rtcproctor.bench.golive import measure as measure_go_live
from rtcproctor.bench.load import (
    CONNECT_CONCURRENCY,
    PER_SOCKET_RATE,
    LoadResult,
    LoadRun,
    Probes,
    RelayStep,
)

log = logging.getLogger("rtcproctor.bench")

TARGET_CLIENTS = 2000
TARGET_RATE = 1000
TARGET_P99_MS = 50.0
TARGET_GO_LIVE_S = 1.5
MAX_LOSS = 0.01  # a step with more lost (or reordered) messages is not sustained
MIN_DELIVERED = 0.95  # share of the target rate that must arrive within the period
FAILS_TO_STOP = 2  # consecutive failed steps end the stepping (one may be a load spike)
COMPARE_RATES = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an unsorted list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def verdict(ok: bool, at_target_size: bool) -> str:
    if not at_target_size:
        return "(not run at target size)"
    return "MEETS TARGET" if ok else "MISSES TARGET"


def p99_ms(step: RelayStep) -> float | None:
    return percentile([v * 1000 for v in step.latencies], 0.99) if step.latencies else None


def carried(step: RelayStep) -> bool:
    """(Almost) nothing lost or reordered, and the rate delivered within the period."""
    return (
        bool(step.latencies)
        and (step.lost + step.out_of_order) < MAX_LOSS * step.sent
        and step.rate_achieved >= MIN_DELIVERED * step.rate_target
    )


def sustained(step: RelayStep) -> bool:
    """The step's rate was carried with p99 within the target."""
    return carried(step) and (p99_ms(step) or math.inf) < TARGET_P99_MS


def keeps_up(step: RelayStep) -> bool:
    """The step's rate was carried with the median within the target: no backlog builds."""
    ms = [v * 1000 for v in step.latencies]
    return carried(step) and percentile(ms, 0.5) < TARGET_P99_MS


def pct(seconds: float | None, period: float) -> str:
    return "-" if seconds is None else f"{100 * seconds / max(period, 1e-9):.0f}%"


def load_avg(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def describe_servers(cluster: Cluster) -> list[str]:
    n = len(cluster.servers)
    if not cluster.own:
        return [f"{url} (given with --server)" for url in cluster.urls]
    if n == 1:
        return [
            f"{cluster.urls[0]} (started by the bench: rtcproctor serve --ice-loopback, "
            "SQLite in a temp dir)"
        ]
    assert cluster.redis is not None
    return [
        ", ".join(cluster.urls),
        f"({n} processes started by the bench: rtcproctor serve --ice-loopback with "
        f"RTCPROCTOR_REDIS_URL={cluster.redis.url} (a redis-server of its own), "
        "one SQLite file in a shared temp dir)",
    ]


def server_cpu_text(step: RelayStep, period: float) -> str:
    """`server 85%` for one server; `servers 85% (43% + 42%)` for several."""
    if step.server_cpu is None:
        return ""
    if len(step.server_cpu_each) == 1:
        return f"server {pct(step.server_cpu, period)}, "
    each = " + ".join(pct(v, period) for v in step.server_cpu_each)
    return f"servers {pct(step.server_cpu, period)} ({each}), "


def print_problems(problems: list[str], kept: Path | None, indent: str) -> None:
    if not problems:
        print(f"{indent}logs       no warning or error in the servers' logs")
        return
    where = f" (logs kept in {kept})" if kept else ""
    print(f"{indent}logs       the servers logged (count, port, level, logger, message){where}:")
    for line in problems[:20]:
        print(f"{indent}           {line[:300]}")


def report_problems(cluster: Cluster) -> None:
    if cluster.own:
        problems = cluster.problems()
        print_problems(problems, cluster.save_logs() if problems else None, "  ")


def report(
    args: argparse.Namespace,
    cluster: Cluster,
    load: LoadResult,
    go_live: list[float],
    go_live_failed: int,
) -> None:
    p = print
    step = load.steps[0] if load.steps else RelayStep(args.rate)
    servers = len(cluster.servers)
    p("RTCProctor signaling benchmark")
    for index, line in enumerate(describe_servers(cluster)):
        p(f"  {'server' if index == 0 else '':<10} {line}")
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
    if servers > 1:
        p(
            f"             (spread round robin over {servers} processes; {load.cross_pairs} of "
            f"{load.pairs} pairs have the student and the proctor on different processes)"
        )
    p(
        f"             target: >= {TARGET_CLIENTS:,} held   "
        f"{verdict(held_ok, load.clients_wanted >= TARGET_CLIENTS)}"
    )
    p(
        f"  relay      {step.rate_achieved:.1f} msg/s achieved at a target of "
        f"{step.rate_target:g} msg/s ({load.pairs} student->proctor pairs at "
        f"{step.rate_target / max(load.pairs, 1):.1f} msg/s each; per-socket limit 20/s)"
    )
    p(
        f"             {step.sent} sent, {step.received} received, {step.lost} lost; acks: "
        f"{step.ack_ok} ok, {step.ack_rate_limited} rate_limited, {step.ack_other} other"
    )
    if step.out_of_order or step.late:
        p(
            f"             {step.out_of_order} received out of order (after a later message "
            f"of the same student), {step.late} arrived after the period (counted lost)"
        )
    if servers > 1:
        p(
            f"             {step.received_cross} received across processes (through Redis), "
            f"{step.received - step.received_cross} within one"
        )
    at_rate = step.rate_target >= TARGET_RATE and load.clients_held >= TARGET_CLIENTS
    if step.latencies:
        ms = [v * 1000 for v in step.latencies]
        p99 = percentile(ms, 0.99)
        p(
            f"  latency    p50 {percentile(ms, 0.50):.1f} ms   p99 {p99:.1f} ms   "
            f"max {max(ms):.1f} ms   (sender -> receiver, {len(ms)} messages)"
        )
        p(
            f"             target: p99 < {TARGET_P99_MS:g} ms at {TARGET_RATE:,} msg/s   "
            f"{verdict(p99 < TARGET_P99_MS and step.rate_achieved >= 0.95 * TARGET_RATE, at_rate)}"
        )
    else:
        p("  latency    no message was relayed")
    period = max(step.elapsed, 1e-9)
    redis = "" if step.redis_cpu is None else f"redis-server {pct(step.redis_cpu, period)}, "
    p(
        f"  CPU        {server_cpu_text(step, period)}{redis}load generator "
        f"{pct(step.load_cpu, period)} of one core during the period; load generator's worst "
        f"loop stall {1000 * step.load_lag_max:.0f} ms"
    )
    if step.server_cpu is not None and step.received:
        p(
            f"             {1000 * step.server_cpu / step.received:.2f} s of server CPU per "
            "1,000 relayed messages (idle clients' pings included)"
        )
    if commands := commands_per_message(step):
        p(f"             Redis commands per relayed message: {commands} (heartbeats included)")
    waits = [
        f"{name} {1000 * value:.0f} ms"
        for name, value in (
            ("server" if servers == 1 else "servers", step.server_queued),
            ("load generator", step.load_queued),
        )
        if value is not None
    ]
    if waits:
        p(
            f"  CPU wait   {', '.join(waits)} runnable but waiting for a core during the period "
            "(run-queue delay of each event-loop thread)"
        )
    p(
        f"  machine    load average {load_avg(step.load_average)} "
        "(1, 5, 15 min, at the end of the period; anything above 2 competes for these cores)"
    )
    if go_live:
        where = "" if servers == 1 else "; proctor and student on different processes"
        p(
            f"  go live    median {statistics.median(go_live):.3f} s   max {max(go_live):.3f} s   "
            f"({len(go_live)} runs, {go_live_failed} failed; Go Live -> proctor's first video "
            f"frame, aiortc peers{where})"
        )
        p(
            f"             target: < {TARGET_GO_LIVE_S:g} s   "
            f"{verdict(max(go_live) < TARGET_GO_LIVE_S and not go_live_failed, True)}"
        )
    else:
        p(f"  go live    every run failed ({go_live_failed})")
    report_problems(cluster)
    sys.stdout.flush()


def probes(cluster: Cluster) -> Probes:
    return Probes(
        cluster.cpu_seconds,
        cluster.queued_seconds,
        cluster.redis_cpu_seconds,
        cluster.redis_commands,
    )


def commands_per_message(step: RelayStep, idle: RelayStep | None = None) -> str:
    """`2.00 hgetall, 1.00 publish, …`: Redis commands per relayed message (above idle)."""
    if not step.received or not step.redis_commands:
        return ""
    rest = idle.redis_commands if idle is not None else {}
    scale = step.elapsed / max(idle.elapsed, 1e-9) if idle is not None else 0.0
    per = {
        name: (calls - rest.get(name, 0) * scale) / step.received
        for name, calls in step.redis_commands.items()
    }
    shown = sorted(((v, k) for k, v in per.items() if v >= 0.01), reverse=True)
    return f"{sum(v for v, _ in shown):.2f} = " + ", ".join(f"{v:.2f} {k}" for v, k in shown)


async def prepare(cluster: Cluster, count: int) -> list[str]:
    """Codes on the cluster, with every server done loading its voice models."""
    started = time.monotonic()
    codes = await asyncio.to_thread(cluster.codes, count)
    log.info("%d codes made in %.1f s", len(codes), time.monotonic() - started)
    await cluster.settle()
    return codes


async def bench(args: argparse.Namespace, cluster: Cluster) -> int:
    load = LoadRun(cluster.urls, args.clients, [args.rate], args.seconds, probes(cluster))
    if args.rate / load.result.pairs > 2 * PER_SOCKET_RATE:
        log.warning(
            "%g msg/s over %d pairs exceeds the server's per-socket limit",
            args.rate,
            load.result.pairs,
        )
    codes = await prepare(cluster, load.codes_needed + args.go_live_runs)
    log.info(
        "connecting %d clients to %d server(s), then relaying %g msg/s for %g s",
        args.clients,
        len(cluster.servers),
        args.rate,
        args.seconds,
    )
    result = await load.run(codes[: load.codes_needed])
    log.info("measuring Go Live -> first video frame, %d runs", args.go_live_runs)
    times, failed = await measure_go_live(cluster.urls, codes[load.codes_needed :])
    report(args, cluster, result, times, failed)
    received = sum(s.received for s in result.steps)
    return 0 if result.clients_connected and received and times else 1


# Comparing one process with N


@dataclass
class Setup:
    """One configuration of the comparison and what stepping the rate gave."""

    label: str
    urls: list[str] = field(default_factory=list)
    load: LoadResult | None = None
    problems: list[str] = field(default_factory=list)
    kept: Path | None = None  # where the logs were copied, when they hold problems
    own: bool = True  # started by the bench, so its logs were read

    @property
    def idle(self) -> RelayStep | None:
        """The period without relaying: what the servers spend on held clients alone."""
        return next((s for s in self.load.steps if s.rate_target == 0), None) if self.load else None

    @property
    def steps(self) -> list[RelayStep]:
        return [s for s in self.load.steps if s.rate_target > 0] if self.load else []

    def best(self, passes: Callable[[RelayStep], bool]) -> RelayStep | None:
        """The highest step that passes."""
        passed = [s for s in self.steps if passes(s)]
        return max(passed, key=lambda s: s.rate_target) if passed else None

    def topped_out(self, passes: Callable[[RelayStep], bool]) -> bool:
        """Every step passed: the figure is a lower bound."""
        return bool(self.steps) and all(passes(s) for s in self.steps)

    def per_thousand(self, step: RelayStep) -> tuple[float, float | None] | None:
        """Server (and Redis) CPU seconds per 1,000 relayed messages, above the idle rate."""
        idle = self.idle
        if step.server_cpu is None or not step.received or idle is None:
            return None
        if idle.server_cpu is None:
            return None

        def above(busy: float, rest: float) -> float:
            return 1000 * (busy - rest / max(idle.elapsed, 1e-9) * step.elapsed) / step.received

        redis = None
        if step.redis_cpu is not None and idle.redis_cpu is not None:
            redis = above(step.redis_cpu, idle.redis_cpu)
        return above(step.server_cpu, idle.server_cpu), redis


CRITERIA: tuple[tuple[str, Callable[[RelayStep], bool]], ...] = (
    ("p99 target", sustained),
    ("kept up", keeps_up),
)


def stepper() -> Callable[[RelayStep], bool]:
    """`keep_going` for LoadRun: stop after FAILS_TO_STOP steps in a row not kept up with."""
    fails = 0

    def keep_going(step: RelayStep) -> bool:
        nonlocal fails
        if step.rate_target > 0:
            fails = 0 if keeps_up(step) else fails + 1
        return fails < FAILS_TO_STOP

    return keep_going


async def measure_setup(
    args: argparse.Namespace, rates: list[float], processes: int, given: list[str]
) -> Setup:
    cluster = Cluster.given(given) if given else await asyncio.to_thread(Cluster.start, processes)
    n = len(cluster.servers)
    label = f"{n} process{'es' if n > 1 else ''}"
    if cluster.own:
        label += " over Redis" if n > 1 else " (no Redis)"
    setup = Setup(label, cluster.urls, own=cluster.own)
    try:
        load = LoadRun(
            cluster.urls, args.clients, [0.0, *rates], args.seconds, probes(cluster), stepper()
        )
        codes = await prepare(cluster, load.codes_needed)
        log.info("%s: connecting %d clients, stepping %s msg/s", label, args.clients, rates)
        setup.load = await load.run(codes)
        setup.problems = cluster.problems() if cluster.own else []
        setup.kept = cluster.save_logs() if setup.problems else None
    finally:
        await asyncio.to_thread(cluster.stop)
    return setup


def fixed(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_line(setup: Setup, step: RelayStep) -> str:
    period = max(step.elapsed, 1e-9)
    ms = [v * 1000 for v in step.latencies]
    p50 = percentile(ms, 0.5) if ms else None
    each = (
        " (" + " + ".join(pct(v, period) for v in step.server_cpu_each) + ")"
        if len(step.server_cpu_each) > 1
        else ""
    )
    cost = setup.per_thousand(step) if step.rate_target else None
    rate = f"{step.rate_target:g}" if step.rate_target else "idle"
    ok = ""
    if step.rate_target:
        ok = "p99" if sustained(step) else "up" if keeps_up(step) else "no"
    return (
        f"    {rate:>6} {step.rate_achieved:>9.1f} {fixed(p50):>7} {fixed(p99_ms(step)):>7} "
        f"{100 * step.loss:>6.2f}% {100 * step.out_of_order / max(step.sent, 1):>6.2f}% "
        f"{pct(step.server_cpu, period) + each:>19} {pct(step.redis_cpu, period):>6} "
        f"{pct(step.load_cpu, period):>6} {fixed(cost[0] if cost else None, 2):>8} "
        f"{step.load_average[0]:>6.2f}  {ok}"
    )


def comparison_step(one: Setup, many: Setup) -> tuple[RelayStep, RelayStep] | None:
    """The highest rate both setups kept up with (else their first step): CPU is compared
    there, where neither was overrun."""
    both = [
        (a, b)
        for a in one.steps
        for b in many.steps
        if a.rate_target == b.rate_target and keeps_up(a) and keeps_up(b)
    ]
    if both:
        return max(both, key=lambda pair: pair[0].rate_target)
    if one.steps and many.steps:
        return one.steps[0], many.steps[0]
    return None


def report_setup(setup: Setup, servers: int) -> None:
    p = print
    p(f"  {setup.label}: {', '.join(setup.urls)}")
    if setup.load is None:
        p("    did not run")
        return
    p(
        f"    {setup.load.clients_connected} of {setup.load.clients_wanted} clients connected, "
        f"{setup.load.clients_held} still connected at the end"
    )
    p(
        "    (CPU as % of one core; s/1k: server CPU seconds per 1,000 relayed messages above "
        "the idle period's)"
    )
    p(
        "      rate  achieved  p50 ms  p99 ms    lost  reorder          server CPU  redis "
        "   gen     s/1k  load1  ok"
    )
    for step in setup.load.steps:
        p(step_line(setup, step))
    if servers > 1:
        cross = sum(s.received_cross for s in setup.steps)
        total = sum(s.received for s in setup.steps)
        p(f"    {cross} of {total} received messages crossed processes (through Redis)")
        if setup.steps and (commands := commands_per_message(setup.steps[0], setup.idle)):
            p(
                f"    Redis commands per relayed message at {setup.steps[0].rate_target:g} msg/s "
                f"(above idle): {commands}"
            )
    for name, passes in CRITERIA:
        best = setup.best(passes)
        more = " (every step passed: at least this)" if setup.topped_out(passes) else ""
        figure = "no step" if best is None else f"{best.rate_target:g} msg/s{more}"
        p(f"    {name:<10} {figure}")
    if setup.own:
        print_problems(setup.problems, setup.kept, "    ")


def report_compare(args: argparse.Namespace, setups: list[Setup], load_start: str) -> None:
    p = print
    one, many = setups
    n = len(many.urls)
    first = next((s.load for s in setups if s.load), None)
    p(f"RTCProctor signaling benchmark: relay capacity, 1 process vs {n}")
    p(
        f"  machine    {os.cpu_count()} cores (os.cpu_count()), shared by the servers, "
        "redis-server and this load generator; load average at the start "
        f"{load_start} (1, 5, 15 min)"
    )
    if first is not None:
        p(
            f"  clients    {args.clients} per setup: {first.idle_students} joined students "
            f"waiting, {first.pairs} proctors and {first.pairs} live students relaying "
            f"(student on one process, its proctor on the next)"
        )
    p(
        f"  capacity   the highest relay rate with < {100 * MAX_LOSS:g} % lost or out of order, "
        f">= {100 * MIN_DELIVERED:g} % delivered within the period and p99 < "
        f"{TARGET_P99_MS:g} ms (ok: p99), or p50 < {TARGET_P99_MS:g} ms (ok: up, kept up); "
        f"rates stepped up for {args.seconds:g} s each until {FAILS_TO_STOP} in a row fail both"
    )
    for setup in setups:
        p("")
        report_setup(setup, len(setup.urls))
    p("")
    for name, passes in CRITERIA:
        b1, bn = one.best(passes), many.best(passes)
        if b1 is None or bn is None:
            p(f"  ratio      {name}: not available (a setup passed no step)")
            continue
        bound = {
            (True, False): " (N passed every step: a lower bound)",
            (False, True): " (1 passed every step: an upper bound)",
            (True, True): " (both passed every step: step higher with --rates)",
        }.get((many.topped_out(passes), one.topped_out(passes)), "")
        p(
            f"  ratio      {name}: {bn.rate_target:g} / {b1.rate_target:g} msg/s = "
            f"{bn.rate_target / b1.rate_target:.2f}x with {n} processes (ideal {n}x){bound}"
        )
    pair = comparison_step(one, many)
    cost_one = one.per_thousand(pair[0]) if pair else None
    cost_many = many.per_thousand(pair[1]) if pair else None
    if pair and cost_one and cost_many and cost_one[0] > 0 and cost_many[0] > 0:
        redis = 0.0 if cost_many[1] is None else cost_many[1]
        p(
            f"  CPU        server CPU per 1,000 relayed messages at {pair[0].rate_target:g} msg/s "
            f"(above idle): {cost_one[0]:.2f} s with 1 process, {cost_many[0]:.2f} s with "
            f"{n} + {redis:.2f} s in redis-server = {cost_many[0] / cost_one[0]:.2f}x the work "
            "per message (ideal 1x)"
        )
        cores = os.cpu_count() or 1
        bound = min(n, cores) * cost_one[0] / (cost_many[0] + redis)
        p(
            f"  CPU bound  if CPU were the only limit: one event loop uses at most 1 core, {n} "
            f"use at most {min(n, cores)}, so {n} processes would carry {min(n, cores)} x "
            f"{cost_one[0]:.2f} / {cost_many[0] + redis:.2f} = {bound:.2f}x what 1 does "
            "(before the load generator and the rest of the machine take their share)"
        )
    top = many.steps[-1] if many.steps else None
    generator = (
        f" (which used {pct(top.load_cpu, top.elapsed)} of a core at {top.rate_target:g} msg/s)"
        if top is not None
        else ""
    )
    p(
        f"  why        {os.cpu_count()} cores are shared by {n} servers, redis-server and the "
        f"load generator{generator}, and by everything else on the machine (load average "
        f"{load_avg(os.getloadavg())} now); every cross-process emit is a Redis publish on top "
        "of presence reads in Redis, and each process receives and filters every published "
        "message, so each message costs more CPU in all than in one process"
    )
    sys.stdout.flush()


async def compare(args: argparse.Namespace, urls: list[str]) -> int:
    rates = [float(r) for r in args.rates or COMPARE_RATES]
    load_start = load_avg(os.getloadavg())
    processes = max(2, args.processes or 2)
    setups = [
        await measure_setup(args, rates, 1, urls[:1]),
        await measure_setup(args, rates, processes, urls),
    ]
    report_compare(args, setups, load_start)
    return 0 if all(any(x.received for x in s.steps) for s in setups) else 1


def split(value: str | None) -> list[str]:
    return [v.strip().rstrip("/") for v in (value or "").split(",") if v.strip()]


def budget(args: argparse.Namespace, processes: int) -> float:
    """Seconds the whole run may take before the bench gives up."""
    per_setup = 120 + 60 * processes + args.clients / 10
    if args.compare:
        steps = (1 + len(args.rates or COMPARE_RATES)) * (args.seconds + 10)
        return 2 * per_setup + 60 * processes + 2 * steps + 240
    return per_setup + 240 + args.seconds + 30 * args.go_live_runs


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
    # SIGTERM unwinds like Ctrl-C, so the servers we started are stopped in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    urls = split(args.server)
    processes = len(urls) or args.processes or 1
    limit = budget(args, processes)
    try:
        if args.compare:
            return asyncio.run(asyncio.wait_for(compare(args, urls), limit))
        cluster = Cluster.given(urls) if urls else Cluster.start(processes)
        try:
            return asyncio.run(asyncio.wait_for(bench(args, cluster), limit))
        finally:
            cluster.stop()
    except RedisMissing as exc:
        print(f"rtcproctor bench: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"rtcproctor bench: gave up after {limit:.0f} s", file=sys.stderr)
        return 1
