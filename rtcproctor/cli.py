"""The `rtcproctor` command: every subcommand reads the same configuration as the server."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rtcproctor.config import Settings

SHUTDOWN_TIMEOUT = 3.0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the database and evidence live (env RTCPROCTOR_DATA_DIR, default ./data)",
    )
    parser.add_argument(
        "--database",
        dest="database_url",
        help="SQLAlchemy async URL (env RTCPROCTOR_DATABASE_URL; default SQLite in the data dir)",
    )
    parser.add_argument("--log-level", help="env RTCPROCTOR_LOG_LEVEL, default INFO")


def _settings(args: argparse.Namespace) -> Settings:
    fields = ("host", "port", "data_dir", "database_url", "log_level", "base_url")
    settings = Settings.from_env()
    settings = settings.override(**{f: getattr(args, f, None) for f in fields})
    if getattr(args, "ice_loopback", False):
        settings = settings.override(ice_loopback=True)
    return settings


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from rtcproctor.web import create_app

    settings = _settings(args)
    _logging(settings)
    log = logging.getLogger("rtcproctor")
    if settings.ice_loopback:
        from rtcproctor.rtc.loopback import allow_loopback_candidates

        allow_loopback_candidates()
    if not (settings.turn_secret and settings.turn_urls):
        log.warning(
            "no TURN server configured (RTCPROCTOR_TURN_URLS, RTCPROCTOR_TURN_SECRET): "
            "students and proctors must reach each other directly, e.g. on one LAN"
        )
    ssl_context = None
    if args.tls_self_signed or args.tls_cert:
        from rtcproctor.web.tls import fingerprint, self_signed, server_context

        if args.tls_cert:
            cert, key = args.tls_cert, args.tls_key or args.tls_cert
        else:
            cert, key = self_signed(settings.data_dir / "tls")
            log.warning(
                "self-signed certificate %s (SHA-256 %s): browsers warn once; "
                "check the fingerprint before accepting",
                cert,
                fingerprint(cert),
            )
        ssl_context = server_context(cert, key)
    scheme = "https" if ssl_context else "http"
    log.info(
        "RTCProctor on %s://%s:%d (student page /student, monitor /monitor)",
        scheme,
        settings.host,
        settings.port,
    )
    from rtcproctor.signaling.presence import PresenceUnavailable

    try:
        web.run_app(
            create_app(settings),
            ssl_context=ssl_context,
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            # Pages reconnect by themselves: don't hold a restart for open WebSockets.
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
    except PresenceUnavailable as exc:
        log.error("%s", exc)
        return 2
    return 0


def read_roster(path: Path) -> list[str]:
    """Names from a roster: one per line, or a CSV whose `name` column (else first) holds them.

    `-` reads standard input, so `docker compose exec -T … codes --names - < roster.csv` works.
    """
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8-sig")
    text = text.removeprefix("\ufeff")
    rows = [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    column = header.index("name") if "name" in header else 0
    if "name" in header:
        rows = rows[1:]
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]


async def _codes(settings: Settings, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    from rtcproctor.store import Store
    from rtcproctor.web.app import student_link

    store = await Store.open(settings.resolved_database_url)
    try:
        if args.key:
            exam = await store.exam_by_key(args.key)
            if exam is None:
                raise SystemExit("rtcproctor codes: that proctor key matches no exam")
            key = args.key
        else:
            exam, key = await store.create_exam(args.exam_name or "")
        created = await store.add_students(exam.id, names)
    finally:
        await store.close()
    base = settings.public_base_url()
    return {
        "exam": exam.id,
        "exam_name": exam.name,
        "proctor_key": key,
        "students": [
            {"name": s.name, "code": code, "link": student_link(base, code)} for s, code in created
        ],
    }


def cmd_codes(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.names:
        names = read_roster(args.names)
        if not names:
            print(f"rtcproctor codes: no names in {args.names}", file=sys.stderr)
            return 2
    else:
        names = [f"Student {i}" for i in range(1, args.count + 1)]
    result = asyncio.run(_codes(settings, args, names))
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["name", "code", "link"])
        for s in result["students"]:
            writer.writerow([s["name"], s["code"], s["link"]])
        text = buffer.getvalue()
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if not args.json:
        base = settings.public_base_url()
        print(
            f"exam {result['exam']} ({len(names)} codes)\n"
            f"proctor key: {result['proctor_key']}  (keep it; it is shown only now)\n"
            f"monitor: {base}/monitor#key={result['proctor_key']}",
            file=sys.stderr,
        )
    return 0


def _forbidden_peer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host else (text, 9)


def cmd_check_turn(args: argparse.Namespace) -> int:
    from rtcproctor.rtc.turncheck import check_url
    from rtcproctor.signaling.ice import IceServers

    settings = _settings(args)
    overrides = {
        "turn_urls": tuple(args.url) if args.url else None,
        "turn_secret": args.secret,
    }
    ice = IceServers.from_settings(settings.override(**overrides))
    if not ice.has_turn:
        print(
            "rtcproctor check-turn: set RTCPROCTOR_TURN_URLS and RTCPROCTOR_TURN_SECRET "
            "(or --url and --secret)",
            file=sys.stderr,
        )
        return 2
    credentials = next(s for s in ice.for_client("check-turn") if "username" in s)
    forbidden = tuple(_forbidden_peer(p) for p in args.expect_refused)

    async def run() -> list:
        return [
            await check_url(url, credentials["username"], credentials["credential"], forbidden)
            for url in ice.turn_urls
        ]

    reports = asyncio.run(run())
    if args.json:
        print(json.dumps([r.as_json() for r in reports], indent=2))
    else:
        for r in reports:
            if r.ok:
                refused = ", ".join(f"{k} refused" for k in r.refused)
                print(
                    f"OK    {r.url}: allocated relay {r.relayed[0]}:{r.relayed[1]}, "
                    f"relayed a datagram between two allocations"
                    + (f"; {refused}" if refused else "")
                )
            else:
                problems = [r.error] if r.error else []
                if not r.relay_roundtrip and not r.error:
                    problems.append("no datagram came back through the relay")
                problems += [f"{k} was NOT refused" for k, ok in r.refused.items() if not ok]
                print(f"FAIL  {r.url}: {'; '.join(problems)}")
    return 0 if all(r.ok for r in reports) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from rtcproctor.store import Store
    from rtcproctor.store.report import build_report, report_csv

    settings = _settings(args)

    async def run() -> dict[str, Any] | None:
        store = await Store.open(settings.resolved_database_url)
        try:
            exam = await store.exam_by_key(args.key)
            if exam is None:
                return None
            return await build_report(store, exam, settings.public_base_url())
        finally:
            await store.close()

    report = asyncio.run(run())
    if report is None:
        print("rtcproctor report: that proctor key matches no exam", file=sys.stderr)
        return 2
    text = report_csv(report) if args.format == "csv" else json.dumps(report, indent=2) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of a live SQLite database (the online backup API, safe while serving)."""
    import sqlite3

    from sqlalchemy.engine import make_url

    settings = _settings(args)
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "postgresql":
        libpq = url.set(drivername="postgresql").render_as_string(hide_password=True)
        print(
            "rtcproctor backup copies SQLite databases only. This one is PostgreSQL: back it "
            f"up with pg_dump, e.g.\n  pg_dump --format=custom --file=rtcproctor.dump '{libpq}'\n"
            "and restore with pg_restore.",
            file=sys.stderr,
        )
        return 2
    if url.get_backend_name() != "sqlite" or not url.database:
        print("rtcproctor backup: only for SQLite database files", file=sys.stderr)
        return 2
    if not Path(url.database).exists():
        print(f"rtcproctor backup: no database at {url.database}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(url.database) as source, sqlite3.connect(args.output) as target:
        source.backup(target)
    print(f"backed up {url.database} to {args.output}", file=sys.stderr)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations by hand; `serve` and every other command also upgrade on start."""
    from sqlalchemy.engine import make_url

    from rtcproctor.store import Store, migrate

    settings = _settings(args)
    _logging(settings)
    url = settings.resolved_database_url
    parsed = make_url(url)
    sqlite_file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if args.action == "current" and sqlite_file and not Path(sqlite_file).exists():
        print(f"rtcproctor db: no database at {sqlite_file}", file=sys.stderr)
        return 2

    async def run() -> tuple[str | None, str]:
        store = await Store.open(url, upgrade=args.action == "upgrade")
        try:
            return await migrate.revisions(store.engine)
        finally:
            await store.close()

    current, head = asyncio.run(run())
    if current == head:
        print(f"{current} (head)")
        return 0
    print(f"{current or 'none'} (head is {head}: run `rtcproctor db upgrade`)")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtcproctor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (env RTCPROCTOR_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="env RTCPROCTOR_PORT, default 8080")
    serve.add_argument(
        "--base-url", help="public URL used in student links (env RTCPROCTOR_BASE_URL)"
    )
    serve.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a self-signed certificate kept in the data dir (LAN trials)",
    )
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate")
    serve.add_argument("--tls-key", type=Path, help="the certificate's PEM key")
    serve.add_argument(
        "--ice-loopback",
        action="store_true",
        help="offer 127.0.0.1 as an ICE candidate (loopback-only test networks)",
    )
    serve.set_defaults(func=cmd_serve)

    codes = sub.add_parser("codes", help="create stream codes for an exam (CSV name,code,link)")
    _common(codes)
    group = codes.add_mutually_exclusive_group(required=True)
    group.add_argument("--count", type=int, help="this many codes, named Student 1..N")
    group.add_argument(
        "--names", type=Path, help="roster: one name per line, or CSV with a name column"
    )
    codes.add_argument("--base-url", help="public URL of the server, for the links")
    codes.add_argument("--key", help="add to the exam of this proctor key instead of a new exam")
    codes.add_argument("--exam-name", help="a name for the new exam")
    codes.add_argument("--json", action="store_true", help="print JSON instead of CSV")
    codes.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    codes.set_defaults(func=cmd_codes)

    from rtcproctor.bench.cli import add_parser as add_bench

    turn = sub.add_parser(
        "check-turn", help="allocate and relay through the configured TURN servers"
    )
    _common(turn)
    turn.add_argument(
        "--url", action="append", help="turn:/turns: URL (repeatable; default RTCPROCTOR_TURN_URLS)"
    )
    turn.add_argument("--secret", help="shared secret (default RTCPROCTOR_TURN_SECRET)")
    turn.add_argument(
        "--expect-refused",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="also check that relaying to this address is refused (e.g. 127.0.0.1, 10.0.0.1)",
    )
    turn.add_argument("--json", action="store_true")
    turn.set_defaults(func=cmd_check_turn)

    backup = sub.add_parser(
        "backup", help="copy the SQLite database safely while serving (PostgreSQL: pg_dump)"
    )
    _common(backup)
    backup.add_argument("output", type=Path, help="file to write the copy to")
    backup.set_defaults(func=cmd_backup)

    db = sub.add_parser("db", help="database schema: show or apply migrations")
    _common(db)
    db.add_argument(
        "action",
        choices=("upgrade", "current"),
        help="upgrade: migrate to the newest schema; current: print the schema's revision",
    )
    db.set_defaults(func=cmd_db)

    report = sub.add_parser("report", help="an exam's report: every student's timeline")
    _common(report)
    report.add_argument("--key", required=True, help="the exam's proctor key")
    report.add_argument("--format", choices=("csv", "json"), default="csv")
    report.add_argument("--base-url", help="public URL, for evidence links")
    report.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    report.set_defaults(func=cmd_report)

    from rtcproctor.voice.cli import add_parser as add_analyze

    add_analyze(sub)

    from rtcproctor.sim.cli import add_parser as add_simulate

    add_simulate(sub)
    add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "codes" and args.count is not None and not 1 <= args.count <= 5000:
        parser.error("--count must be between 1 and 5000")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
