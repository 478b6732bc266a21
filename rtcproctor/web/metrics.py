"""Who may scrape `/metrics`, and the live state each scrape reads.

The counts are not secret per se, but they tell an outsider how many exams run and when:
without a token only direct requests from loopback or private addresses are answered,
and a request that came through a proxy (it carries a forwarding header) never is, since
the proxy itself sits on a private address.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import replace

from aiohttp import web

from rtcproctor.metrics import Snapshot
from rtcproctor.signaling import SignalingServer

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def private_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_private


def refusal(request: web.Request, token: str | None) -> web.Response | None:
    """Why this request may not read the metrics, as the answer to send; None if it may."""
    if token:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        return web.Response(
            status=401,
            text="metrics need Authorization: Bearer <RTCPROCTOR_METRICS_TOKEN>\n",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    if any(name in request.headers for name in PROXY_HEADERS):
        return web.Response(
            status=403,
            text="metrics are not served through a proxy; "
            "scrape the server directly or set RTCPROCTOR_METRICS_TOKEN\n",
        )
    peer = request.transport.get_extra_info("peername") if request.transport else None
    host = peer[0] if isinstance(peer, tuple) and peer else ""
    if not private_address(str(host)):
        return web.Response(
            status=403,
            text="metrics are served only to loopback and private addresses; "
            "set RTCPROCTOR_METRICS_TOKEN to scrape from elsewhere\n",
        )
    return None


def snapshot(signaling: SignalingServer) -> Snapshot:
    gauges = signaling.gauges()
    load = Snapshot(
        connections=int(gauges["connections"]),
        students_connected=int(gauges["students_connected"]),
        students_live=int(gauges["students_live"]),
        watchers=int(gauges["watchers"]),
    )
    shadow = signaling.shadow
    if shadow is None:
        return load
    backlog = shadow.analyzer.backlog() if shadow.analyzer is not None else {}
    pacer = shadow.analyzer.pacer if shadow.analyzer is not None else None
    return replace(
        load,
        voice_state=shadow.state,
        shadow_peers=len(shadow.peers),
        voice_streams=len(backlog),
        pending=[pending for pending, _ in backlog.values()],
        lag=[lag for _, lag in backlog.values()],
        audio_frames=shadow.audio_frames,
        audio_seconds=shadow.audio_seconds,
        stride=pacer.stride if pacer is not None else 1,
        busy=pacer.busy_fraction if pacer is not None else 0.0,
    )
