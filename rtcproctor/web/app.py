"""The aiohttp application: the one object that holds the server's state."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import socketio
from aiohttp import web

from rtcproctor import __version__
from rtcproctor.config import Settings
from rtcproctor.metrics import CONTENT_TYPE, Metrics
from rtcproctor.signaling import SignalingServer
from rtcproctor.signaling import validation as v
from rtcproctor.signaling.ice import IceServers
from rtcproctor.signaling.presence import Limiter, MemoryPresence, Presence
from rtcproctor.signaling.validation import Rejected
from rtcproctor.store import Store
from rtcproctor.web import metrics as scrape
from rtcproctor.web.runtime import tune_gc

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
SIGNALING = web.AppKey("signaling", SignalingServer)
SHADOW = web.AppKey("shadow", object)
SIO = web.AppKey("sio", socketio.AsyncServer)
API_LIMIT = web.AppKey("api_limit", Limiter)
STARTED = web.AppKey("started", float)
METRICS = web.AppKey("metrics", Metrics)

MAX_SOCKET_PACKET = 256 * 1024
MAX_HTTP_BODY = 256 * 1024
MAX_NAMES = 500
SOCKETIO_ESM = Path("node_modules/socket.io-client/dist/socket.io.esm.min.js")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(self), screen-wake-lock=(self)",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if not request.path.startswith("/socket.io"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    if isinstance(response, web.HTTPException) and response.status >= 400:
        raise response
    return response


def _page(name: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.FileResponse:
        path = request.app[SETTINGS].resolved_static_dir / name
        response = web.FileResponse(path)
        response.headers["Cache-Control"] = "no-cache"
        return response

    return handler


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        async with store.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        database = "ok"
    except Exception:
        log.exception("health check: database unreachable")
        database = "unreachable"
    gauges = request.app[SIGNALING].gauges()
    shadow = request.app[SIGNALING].shadow
    voice = "off" if shadow is None else shadow.state
    body = {
        "status": "ok" if database == "ok" else "degraded",
        "version": __version__,
        "database": database,
        "uptime": round(time.time() - request.app[STARTED], 1),
        "connections": gauges["connections"],
        "live": gauges["students_live"],
        "voice": voice,
        "shadow_peers": len(shadow.peers) if shadow is not None else 0,
        "shadow_audio_frames": sum(p.frames for p in shadow.peers.values()) if shadow else 0,
        "shadow_audio_seconds": round(sum(p.seconds for p in shadow.peers.values()), 2)
        if shadow
        else 0.0,
        "shadow_audio_bytes": sum(p.payload_bytes for p in shadow.peers.values()) if shadow else 0,
    }
    return web.json_response(body, status=200 if database == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process, for loopback/private scrapers or a token."""
    refused = scrape.refusal(request, request.app[SETTINGS].metrics_token)
    if refused is not None:
        return refused
    return web.Response(
        body=request.app[METRICS].exposition(),
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


async def api_config(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    ice = IceServers.from_settings(settings)
    return web.json_response({**ice.rtc_configuration(), "video": settings.video.as_json()})


async def ice_servers(request: web.Request) -> web.Response:
    """Fresh short-lived TURN credentials for a page (or any WebRTC client of this server)."""
    ice = IceServers.from_settings(request.app[SETTINGS])
    response = web.json_response(ice.rtc_configuration())
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, rejected: Rejected) -> web.Response:
    return web.json_response(rejected.as_ack(), status=status)


def student_link(base_url: str, code: str) -> str:
    return f"{base_url.rstrip('/')}/student#code={quote(code)}"


async def api_exams(request: web.Request) -> web.Response:
    """Create an exam (or extend one with its key) and a code per name."""
    app = request.app
    settings = app[SETTINGS]
    address = request.remote or "unknown"
    wait = await app[API_LIMIT].spend(address)
    if wait:
        return _error(429, Rejected("rate_limited", "too many requests", retry_after=round(wait)))
    if request.content_type != "application/json":
        return _error(415, v.invalid("send JSON (Content-Type: application/json)"))
    try:
        data = v.payload(await request.json())
        names_raw = v.text_list(data, "names", max_items=MAX_NAMES, max_len=v.MAX_NAME)
        names = [n.strip() for n in names_raw if n.strip()]
        if not names:
            raise v.invalid("give at least one name")
        exam_name = v.text(data, "name", max_len=200, required=False) or ""
        exam_id = v.text(data, "exam", max_len=64, required=False)
        key = v.text(data, "key", max_len=128, required=False)
        base_url = v.text(data, "base_url", max_len=300, required=False)
    except Rejected as rejected:
        return _error(400, rejected)
    except ValueError:
        return _error(400, v.invalid("the body is not valid JSON"))
    if settings.admin_token and not key:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token != settings.admin_token:
            return _error(401, Rejected("unauthorized", "creating an exam needs the admin token"))
    store = app[STORE]
    if key:
        exam = await store.exam_by_key(key)
        if exam is None or (exam_id and exam.id != exam_id):
            return _error(403, Rejected("unauthorized", "this proctor key is not valid"))
        exam_key = key
    else:
        exam, exam_key = await store.create_exam(exam_name)
    created = await store.add_students(exam.id, names)
    if not base_url:
        base_url = settings.base_url or f"{request.scheme}://{request.host}"
    return web.json_response(
        {
            "ok": True,
            "exam": exam.id,
            "exam_name": exam.name,
            "proctor_key": exam_key,
            "students": [
                {"name": s.name, "code": code, "link": student_link(base_url, code)}
                for s, code in created
            ],
        }
    )


async def socketio_client(request: web.Request) -> web.StreamResponse:
    path = request.app[SETTINGS].resolved_static_dir / SOCKETIO_ESM
    if not path.is_file():
        log.error("%s is missing: run the setup step (npm ci --prefix static)", path)
        raise web.HTTPServiceUnavailable(text="socket.io client not installed; run `make install`")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


async def _start_shadow(signaling: SignalingServer) -> None:
    assert signaling.shadow is not None
    await signaling.shadow.start()
    if signaling.shadow.ready:
        await signaling.attach_shadow_to_live_students()


async def _exam_for(request: web.Request):  # type: ignore[no-untyped-def]
    """The exam whose proctor key the request carries (`Authorization: Bearer <key>`)."""
    key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    limiter = request.app[API_LIMIT]
    address = request.remote or "unknown"
    if await limiter.wait(address):
        raise web.HTTPTooManyRequests(text="too many requests")
    exam = await request.app[STORE].exam_by_key(key) if key and len(key) <= 128 else None
    if exam is None:
        await limiter.spend(address, 5)
        raise web.HTTPUnauthorized(
            text="send the exam's proctor key as Authorization: Bearer <key>"
        )
    return exam


async def alert_evidence(request: web.Request) -> web.StreamResponse:
    exam = await _exam_for(request)
    try:
        alert_id = int(request.match_info["alert_id"])
    except ValueError as exc:
        raise web.HTTPNotFound() from exc
    store = request.app[STORE]
    alert = await store.alert(alert_id)
    student = await store.student(alert.student_id) if alert is not None else None
    if alert is None or student is None or student.exam_id != exam.id or not alert.evidence:
        raise web.HTTPNotFound(text="no such alert in this exam")
    data_dir = request.app[SETTINGS].data_dir.resolve()
    path = (data_dir / alert.evidence).resolve()
    if not path.is_relative_to(data_dir) or not path.is_file():
        raise web.HTTPNotFound(text="the evidence file is missing")
    return web.FileResponse(
        path, headers={"Content-Type": "audio/wav", "Cache-Control": "private, no-store"}
    )


async def exam_report(request: web.Request) -> web.Response:
    from rtcproctor.store.report import build_report, report_csv

    exam = await _exam_for(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(400, v.invalid("format is json or csv"))
    settings = request.app[SETTINGS]
    base = settings.base_url or f"{request.scheme}://{request.host}"
    report = await build_report(request.app[STORE], exam, base)
    name = f"rtcproctor-report-{exam.id}.{fmt}"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "private, no-store",
    }
    if fmt == "csv":
        return web.Response(text=report_csv(report), content_type="text/csv", headers=headers)
    return web.json_response(report, headers=headers)


def _manager(settings: Settings) -> socketio.AsyncManager:
    """Several processes share one Redis channel; one process needs nothing else."""
    if settings.redis_url:
        return socketio.AsyncRedisManager(
            settings.redis_url,
            channel=f"{settings.redis_prefix}socketio",
            # Every emit publishes on a pooled connection; bursts need room.
            redis_options={"max_connections": 1024},
        )
    return socketio.AsyncManager()


def _presence(settings: Settings) -> Presence:
    if settings.redis_url:
        from rtcproctor.signaling.redis_presence import RedisPresence

        return RedisPresence(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryPresence()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[security_headers], client_max_size=MAX_HTTP_BODY)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    sio = socketio.AsyncServer(
        client_manager=_manager(settings),
        async_mode="aiohttp",
        max_http_buffer_size=MAX_SOCKET_PACKET,
        ping_interval=10,
        ping_timeout=10,
        logger=False,
        engineio_logger=False,
    )
    app[SIO] = sio
    sio.attach(app)

    async def startup(app: web.Application) -> None:
        app[STARTED] = time.time()
        app[STORE] = await Store.open(settings.resolved_database_url)
        signaling = app[SIGNALING] = SignalingServer(
            sio, app[STORE], settings, presence=_presence(settings)
        )
        await signaling.start()
        app[API_LIMIT] = signaling.presence.limiter("api", rate=1.0, burst=20)
        signaling.metrics = app[METRICS]
        app[METRICS].read_from(lambda: scrape.snapshot(signaling))
        if settings.voice:
            from rtcproctor.shadow import ShadowProctor, live_worker

            signaling.shadow = ShadowProctor(
                on_alert=signaling.on_shadow_alert,
                on_peer_failed=signaling.shadow_peer_failed,
                worker_factory=partial(live_worker, settings.voice_workers),
                metrics=app[METRICS],
            )
            app[SHADOW] = asyncio.create_task(_start_shadow(signaling))
        log.info("store: %s", app[STORE].engine.url.render_as_string(hide_password=True))
        tune_gc()

    async def cleanup(app: web.Application) -> None:
        await app[SIGNALING].stop()
        if app[SIGNALING].shadow is not None:
            await app[SIGNALING].shadow.stop()
        await app[STORE].close()

    async def shutdown(app: web.Application) -> None:
        # Close the WebSockets first, so that stopping never waits for pages to leave.
        await sio.shutdown()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)

    static = settings.resolved_static_dir
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/student", _page("student.html"))
    app.router.add_get("/monitor", _page("monitor.html"))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/config", api_config)
    app.router.add_get("/ice-servers", ice_servers)
    app.router.add_post("/api/exams", api_exams)
    app.router.add_get("/vendor/socket.io.esm.min.js", socketio_client)
    app.router.add_get("/api/alerts/{alert_id}/evidence", alert_evidence)
    app.router.add_get("/api/report", exam_report)
    for sub in ("css", "js", "img"):
        if (static / sub).is_dir():
            app.router.add_static(f"/static/{sub}/", static / sub, follow_symlinks=False)
    return app
