"""`rtcproctor simulate student|proctor`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    simulate = sub.add_parser("simulate", help="a headless student or proctor (aiortc)")
    simulate.set_defaults(func=run)
    kinds = simulate.add_subparsers(dest="role", required=True)

    student = kinds.add_parser("student", help="go live with a code and stream files")
    student.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8080")
    student.add_argument("--code", required=True)
    student.add_argument("--name", help="shown in logs only; the server knows the code's name")
    student.add_argument("--audio", type=Path, help="audio file to stream (looped)")
    student.add_argument("--video", type=Path, help="video file to stream (default: synthetic)")
    student.add_argument("--duration", type=float, help="stop after this many seconds")
    student.add_argument(
        "--ice-loopback",
        action="store_true",
        help="offer 127.0.0.1 as an ICE candidate (env RTCPROCTOR_ICE_LOOPBACK)",
    )

    proctor = kinds.add_parser(
        "proctor",
        help="watch codes and print one JSON line per event",
        description="Prints one JSON object per line: type (offline, connected, live, media, "
        "chat, attention, resolved, error, ack), code, ts and the event's fields. Reads "
        'commands from stdin, one JSON object per line: {"chat": {"code": C, "text": T}}, '
        '{"attention": {"code": C}}, {"resolve": {"code": C, "id": N}}, {"renew": {"code": C}}.',
    )
    proctor.add_argument("--server", required=True)
    proctor.add_argument("--code", required=True, help="CODE[,CODE...]")
    proctor.add_argument("--key", help="the exam's proctor key (history, alerts)")
    proctor.add_argument("--duration", type=float, help="stop after this many seconds")
    proctor.add_argument(
        "--ice-loopback",
        action="store_true",
        help="offer 127.0.0.1 as an ICE candidate (env RTCPROCTOR_ICE_LOOPBACK)",
    )


def run(args: argparse.Namespace) -> int:
    from rtcproctor.sim.main import main

    return main(args)
