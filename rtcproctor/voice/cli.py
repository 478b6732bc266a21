"""`rtcproctor analyze FILE [--json]` and `rtcproctor bench voice`.

Wiring (in rtcproctor/cli.py): `from rtcproctor.voice.cli import add_parser; add_parser(sub)`
for `analyze`, and `add_bench_parser(kinds)` inside the `bench` sub-parsers.
Also runnable alone: `python -m rtcproctor.voice.cli analyze FILE --json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rtcproctor.voice.pacing import MAX_STRIDE as MAX_PACE


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "analyze", help="find extra voices and silences in a recording (same detector as live)"
    )
    parser.add_argument("file", type=Path, help="any audio or video file FFmpeg can read")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--evidence-dir", type=Path, help="write each alert's audio evidence here as WAV"
    )
    _add_pace(
        parser,
        "analyse 1 window in N, as a loaded live server does: about N times faster, "
        "fewer hand-overs caught (default 1: every window)",
    )
    parser.set_defaults(func=run)
    return parser


def _add_pace(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--pace",
        type=int,
        choices=range(1, MAX_PACE + 1),
        default=1,
        metavar=f"1-{MAX_PACE}",
        help=help,
    )


def add_bench_parser(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    from rtcproctor.voice.bench import DEFAULT_EVAL_DIR

    parser = kinds.add_parser("voice", help="voice detector: recall, false alerts, delay, speed")
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--trials", type=int, default=80, help="mixtures per condition (40 missed rare misses)"
    )
    parser.add_argument(
        "--single-minutes", type=float, default=120.0, help="single-speaker audio to score"
    )
    parser.add_argument("--students", type=int, default=50, help="concurrent streams to time")
    parser.add_argument("--quick", action="store_true", help="a few trials only (smoke run)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DetectorConfig field (tuning on the eval set)",
    )
    parser.add_argument("--verbose", action="store_true", help="list misses and false alerts")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of `analyze` on the 1 h file (median printed)"
    )
    _add_pace(parser, "recall as a loaded server analyses it: 1 window in N (default 1)")
    parser.add_argument("--conditions", help="comma-separated subset of the mixture conditions")
    parser.add_argument(
        "--parts",
        default="recall,speed,throughput,ami",
        help="comma-separated subset of recall,speed,throughput,ami",
    )
    parser.set_defaults(func=run_bench)
    return parser


def run(args: argparse.Namespace) -> int:
    from rtcproctor.voice.alerts import write_evidence
    from rtcproctor.voice.offline import analyze_file

    if not args.file.exists():
        print(f"rtcproctor analyze: no such file: {args.file}", file=sys.stderr)
        return 2
    try:
        result = analyze_file(args.file, pace=getattr(args, "pace", 1))
    except Exception as exc:  # unreadable or not audio
        print(f"rtcproctor analyze: cannot analyse {args.file}: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "evidence_dir", None):
        for alert in result.alerts:
            write_evidence(alert, args.evidence_dir)
    data = result.to_dict()
    if args.json:
        print(json.dumps({"alerts": data["alerts"], "turns": data["turns"]}, indent=2))
    else:
        print(f"{args.file}: {result.duration:.1f} s, {len(result.alerts)} alert(s)")
        for a in result.alerts:
            print(f"  {a.start:8.2f} - {a.end:8.2f}  {a.type:<16} confidence {a.confidence:.2f}")
        print(f"  {len(result.turns)} speaker turn(s)")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from rtcproctor.voice.bench import run as bench

    return bench(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtcproctor-voice")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    bench = sub.add_parser("bench", help="measure and print figures")
    add_bench_parser(bench.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
