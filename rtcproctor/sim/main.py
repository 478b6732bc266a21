"""Run one simulator until Ctrl-C, SIGTERM or `--duration`; logs go to stderr, events to stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from rtcproctor.sim.socket import AckError

log = logging.getLogger("rtcproctor.sim")

TRUE = {"1", "true", "yes", "on"}


def _setup(args: argparse.Namespace) -> None:
    level = os.environ.get("RTCPROCTOR_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if logging.getLogger().level > logging.DEBUG:
        for noisy in ("aioice", "aiortc"):  # every ICE check at INFO drowns the simulator's lines
            logging.getLogger(noisy).setLevel(logging.WARNING)
    loopback = args.ice_loopback or os.environ.get("RTCPROCTOR_ICE_LOOPBACK", "").lower() in TRUE
    if loopback:
        from rtcproctor.rtc.loopback import allow_loopback_candidates

        allow_loopback_candidates()


def _stop_event(duration: float | None) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(max(duration, 0.0), stop.set)
    return stop


def stdin_commands() -> asyncio.Queue[Any]:
    """JSON commands from stdin, one per line.

    Read by a daemon thread, so a read still blocked at exit does not hold the process.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                item: Any = json.loads(line)
            except ValueError:
                item = {"invalid": line.strip()[:200]}
            loop.call_soon_threadsafe(queue.put_nowait, item)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="stdin-commands", daemon=True).start()
    return queue


async def _student(args: argparse.Namespace) -> int:
    from rtcproctor.sim.media import open_media
    from rtcproctor.sim.student import SimStudent

    try:
        media = open_media(args.audio, args.video, args.name or args.code)
    except (OSError, ValueError) as exc:
        print(f"rtcproctor simulate student: {exc}", file=sys.stderr)
        return 2
    student = SimStudent(args.server, args.code, media, label=args.name or "")
    return await student.run(_stop_event(args.duration))


async def _proctor(args: argparse.Namespace) -> int:
    from rtcproctor.sim.events import JsonLines
    from rtcproctor.sim.proctor import SimProctor

    codes = [c.strip() for c in args.code.split(",") if c.strip()]
    if not codes:
        print("rtcproctor simulate proctor: give at least one code", file=sys.stderr)
        return 2
    proctor = SimProctor(args.server, codes, JsonLines(), key=args.key)
    return await proctor.run(_stop_event(args.duration), stdin_commands())


def main(args: argparse.Namespace) -> int:
    _setup(args)
    role = _student if args.role == "student" else _proctor
    try:
        return asyncio.run(role(args))
    except AckError as exc:
        print(f"rtcproctor simulate {args.role}: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
