"""`rtcproctor bench signaling`, `shadow`, `capacity`, `delay` and `voice`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from rtcproctor.voice.bench import DEFAULT_EVAL_DIR

MISS_AFTER = 30.0  # default: an alert later than this after the helper's onset is missed


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="measure and print figures")
    bench.set_defaults(func=run)
    kinds = bench.add_subparsers(dest="bench", required=True)
    from rtcproctor.voice.cli import add_bench_parser

    add_bench_parser(kinds)
    _add_shadow(kinds)
    _add_capacity(kinds)
    _add_delay(kinds)
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


def _later(module: str) -> Callable[[argparse.Namespace], int]:
    """The `run` of a bench module, imported only when that bench runs: the benches
    import aiortc, PyAV and socketio, which every other command (`analyze`) would
    otherwise load while it builds its parser."""

    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).run(args))

    return run


def _add_shadow(kinds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = kinds.add_parser("shadow", help="shadow peers joining and leaving: memory stays flat")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--hold", type=float, default=2.0, help="seconds live per cycle")
    parser.add_argument("--warmup", type=int, default=5, help="cycles per student before measuring")
    parser.add_argument("--audio", type=Path, help="audio to stream (default: a synthetic tone)")
    parser.set_defaults(func=_later("rtcproctor.bench.shadow"))


def _add_capacity(kinds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = kinds.add_parser(
        "capacity", help="students analysed in real time: CPU, memory, alert latency per stream"
    )
    parser.add_argument("--students", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="steady-state window")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds after all are live before measuring"
    )
    parser.add_argument(
        "--second-voice-every",
        type=int,
        default=5,
        metavar="K",
        help="every K-th student gets a second voice (0: none)",
    )
    parser.add_argument(
        "--episode", type=float, default=6.0, help="seconds each second voice talks"
    )
    parser.add_argument(
        "--helper-db",
        type=float,
        default=0.0,
        metavar="DB",
        help="the second voice's level against the student's (-10: a helper 10 dB quieter)",
    )
    parser.add_argument(
        "--takeover",
        action="store_true",
        help="the second voice speaks instead of the student, not over them (a hand-over; "
        "with --helper-db -10, a whisper while the student is silent)",
    )
    parser.add_argument(
        "--miss-after",
        type=float,
        default=MISS_AFTER,
        metavar="SECONDS",
        help="an alert later than this after the second voice's onset counts as missed",
    )
    parser.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help="measure running server(s) (repeat or comma-separate); default: start one",
    )
    parser.add_argument(
        "--key", action="append", help="proctor key for --server (one, or one per server)"
    )
    parser.add_argument(
        "--speech",
        action="append",
        type=Path,
        metavar="FILE",
        help="single-speaker speech files to use instead of the evaluation set (repeat)",
    )
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="start N servers over a redis-server of their own (students spread over them)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run with 1 process, then with --processes, and print the ratio",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=_later("rtcproctor.bench.capacity"))


def _add_delay(kinds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = kinds.add_parser(
        "delay",
        help="the evaluation set's mixtures through WebRTC: second voice onset -> proctor's alert",
    )
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    parser.add_argument("--seed", type=int, default=1234, help="as bench voice: the same mixtures")
    parser.add_argument("--trials", type=int, default=20, help="mixtures per condition")
    parser.add_argument(
        "--single", type=int, default=10, help="single-speaker mixtures (60 s each)"
    )
    parser.add_argument(
        "--conditions",
        default="single,handoff,overlap,quiet10,gap_whisper",
        help="comma-separated, among single,handoff,overlap,quiet10,gap_whisper",
    )
    parser.add_argument("--concurrent", type=int, default=10, help="students streaming at once")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=_later("rtcproctor.bench.delay"))


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
