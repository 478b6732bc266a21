"""`rtcproctor bench signaling`, `shadow`, `capacity` and `voice`."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="measure and print figures")
    bench.set_defaults(func=run)
    kinds = bench.add_subparsers(dest="bench", required=True)
    from rtcproctor.voice.cli import add_bench_parser

    add_bench_parser(kinds)
    from rtcproctor.bench.shadow import add_parser as add_shadow

    add_shadow(kinds)
    from rtcproctor.bench.capacity import add_parser as add_capacity

    add_capacity(kinds)
    signaling = kinds.add_parser("signaling", help="clients held, relay rate and latency, go-live")
    signaling.add_argument(
        "--server",
        help="measure running server(s) instead of starting them (comma-separated URLs)",
    )
    signaling.add_argument(
        "--processes",
        type=int,
        help="start N server processes over a redis-server of the bench's own (default 1)",
    )
    signaling.add_argument(
        "--compare",
        action="store_true",
        help="step the relay rate with 1 process, then with N (--processes, default 2; or "
        "the first --server, then all), and print the ratio of the rates sustained",
    )
    signaling.add_argument(
        "--rates",
        type=lambda v: [int(r) for r in v.split(",")],
        help="msg/s steps for --compare (comma-separated, increasing; default 250 to 4000)",
    )
    signaling.add_argument("--clients", type=int, default=2000)
    signaling.add_argument("--rate", type=int, default=1000, help="relayed messages per second")
    signaling.add_argument(
        "--seconds", type=float, default=10.0, help="how long clients are held and messages relayed"
    )
    signaling.add_argument(
        "--go-live-runs",
        type=int,
        default=5,
        help="Go Live -> first video frame repetitions (at least 1)",
    )


def run(args: argparse.Namespace) -> int:
    from rtcproctor.bench.signaling import main

    if args.clients < 2 or args.rate <= 0 or args.seconds <= 0 or args.go_live_runs < 1:
        print(
            "rtcproctor bench: need --clients >= 2, --rate > 0, --seconds > 0, --go-live-runs >= 1",
            file=sys.stderr,
        )
        return 2
    servers = [u for u in (args.server or "").split(",") if u.strip()]
    if args.processes is not None and (args.processes < 1 or servers):
        print("rtcproctor bench: --processes >= 1, and not with --server", file=sys.stderr)
        return 2
    if args.compare and (len(servers) == 1 or min(args.rates or [1]) <= 0):
        print(
            "rtcproctor bench: --compare needs two or more --server URLs (or none) and --rates > 0",
            file=sys.stderr,
        )
        return 2
    return main(args)
