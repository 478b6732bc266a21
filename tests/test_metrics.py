"""`/metrics` of a real server: Prometheus text whose values follow what the server holds."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rtcproctor.web.metrics import private_address
from tests.sioclient import Peer
from tests.support import Server
from tests.test_shadow import spawn

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url + "/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    status, response_headers, body = fetch(url, headers)
    assert status == 200, body
    assert response_headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def until(url: str, ok: Callable[[Samples], bool], within: float = 30) -> Samples:
    """The first scrape for which `ok` holds (the server applies changes asynchronously)."""
    samples = scrape(url)
    async with asyncio.timeout(within):
        while not ok(samples):
            await asyncio.sleep(0.1)
            samples = scrape(url)
    return samples


async def test_metrics_follow_connections_live_students_and_events(server):
    before = scrape(server.url)
    assert value(before, "rtcproctor_connections") == 0
    assert value(before, "rtcproctor_students_live") == 0
    assert value(before, "rtcproctor_voice_state", state="off") == 1
    assert value(before, "rtcproctor_voice_state", state="ready") == 0
    assert value(before, "rtcproctor_shadow_peers") == 0
    assert value(before, "process_resident_memory_bytes") > 0
    names = {name for name, _ in before}
    assert {"python_info", "rtcproctor_build_info"} <= names

    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await Peer(server.url).connect()
    proctor = await Peer(server.url).connect()
    try:
        assert (await student.call("student:join", {"code": "ZZZZZ-ZZZZZ-ZZZZZ"}))["ok"] is False
        assert (await student.call("student:join", {"code": code}))["ok"] is True
        assert (await student.call("student:live", {"live": True}))["ok"] is True
        assert (await proctor.call("proctor:watch", {"codes": [code]}))["ok"] is True
        assert (await proctor.call("chat:send", {"code": code, "text": ""}))["ok"] is False

        live = scrape(server.url)
        assert value(live, "rtcproctor_connections") == 2
        assert value(live, "rtcproctor_students_connected") == 1
        assert value(live, "rtcproctor_students_live") == 1
        assert value(live, "rtcproctor_watchers") == 1
        events = "rtcproctor_signaling_events_total"
        assert value(live, events, event="student:join", outcome="ok") == 1
        assert value(live, events, event="student:join", outcome="unknown_code") == 1
        assert value(live, events, event="student:live", outcome="ok") == 1
        assert value(live, events, event="proctor:watch", outcome="ok") == 1
        assert value(live, events, event="chat:send", outcome="invalid") == 1

        assert (await student.call("student:live", {"live": False}))["ok"] is True
        stopped = scrape(server.url)
        assert value(stopped, "rtcproctor_students_live") == 0
        assert value(stopped, "rtcproctor_students_connected") == 1
        assert value(stopped, events, event="student:live", outcome="ok") == 2
    finally:
        await student.close()
        await proctor.close()
    after = await until(server.url, lambda s: value(s, "rtcproctor_connections") == 0)
    assert value(after, "rtcproctor_students_connected") == 0
    assert value(after, "rtcproctor_watchers") == 0


def test_metrics_need_the_token_when_one_is_set(tmp_path: Path):
    server = Server(tmp_path / "data", env={"RTCPROCTOR_METRICS_TOKEN": "scrape-secret"}).start()
    try:
        status, headers, body = fetch(server.url)
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
        assert "RTCPROCTOR_METRICS_TOKEN" in body
        assert fetch(server.url, {"Authorization": "Bearer wrong"})[0] == 401
        samples = scrape(server.url, {"Authorization": "Bearer scrape-secret"})
        assert value(samples, "rtcproctor_connections") == 0
        # With a token, a scraper behind a proxy is fine.
        proxied = {"Authorization": "Bearer scrape-secret", "X-Forwarded-For": "198.51.100.7"}
        assert fetch(server.url, proxied)[0] == 200
    finally:
        server.stop()


def test_metrics_are_refused_to_proxied_requests_without_a_token(server):
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        status, _, body = fetch(server.url, {header: "198.51.100.7"})
        assert status == 403, header
        assert "proxy" in body
    assert fetch(server.url)[0] == 200


def test_only_loopback_and_private_addresses_count_as_local():
    for host in ("127.0.0.1", "::1", "10.1.2.3", "172.18.0.5", "192.168.1.9", "fd00::5"):
        assert private_address(host), host
    assert private_address("::ffff:127.0.0.1")
    for host in ("8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8", "", "unknown"):
        assert not private_address(host), host


async def test_metrics_show_the_shadow_proctor_at_work(voice_server, voices):
    url = voice_server.url
    idle = scrape(url)
    assert value(idle, "rtcproctor_voice_state", state="ready") == 1
    assert value(idle, "rtcproctor_voice_streams") == 0
    assert value(idle, "rtcproctor_voice_stride") == 1
    # The voice server is shared by the session: count from what earlier tests left.
    steps = value(idle, "rtcproctor_voice_step_seconds_count")
    alerts = value(idle, "rtcproctor_alerts_total", type="multiple_voices") or 0
    delivered = value(idle, "rtcproctor_voice_alert_delay_seconds_count") or 0

    exam = voice_server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await spawn("student", "--server", url, "--code", code, "--audio", str(voices["two"]))
    try:
        busy = await until(
            url,
            lambda s: (
                value(s, "rtcproctor_voice_step_seconds_count") > steps
                and value(s, "rtcproctor_shadow_audio_frames_total") > 0
            ),
            within=90,
        )
        assert value(busy, "rtcproctor_shadow_peers") == 1
        assert value(busy, "rtcproctor_voice_streams") == 1
        assert value(busy, "rtcproctor_students_live") == 1
        assert value(busy, "rtcproctor_voice_step_windows_sum") >= 1
        assert value(busy, "rtcproctor_voice_step_seconds_sum") > 0
        # One stream: the sum is its backlog, and the analysed audio never runs ahead of
        # what a step has taken.
        pending = value(busy, "rtcproctor_voice_pending_max_seconds")
        assert value(busy, "rtcproctor_voice_pending_seconds") == pending >= 0
        assert value(busy, "rtcproctor_voice_lag_seconds") >= pending
        frames = value(busy, "rtcproctor_shadow_audio_frames_total")

        alerted = await until(
            url,
            lambda s: (
                (value(s, "rtcproctor_alerts_total", type="multiple_voices") or 0) > alerts
                and (value(s, "rtcproctor_voice_alert_delay_seconds_count") or 0) > delivered
            ),
            within=120,
        )
        assert value(alerted, "rtcproctor_alerts_total", type="multiple_voices") > alerts
        # Each alert pushed is timed from its window's last sample: never negative.
        assert value(alerted, "rtcproctor_voice_alert_delay_seconds_sum") >= 0
    finally:
        student.terminate()
        await student.wait()
    gone = await until(url, lambda s: value(s, "rtcproctor_shadow_peers") == 0)
    assert value(gone, "rtcproctor_students_live") == 0
    assert value(gone, "rtcproctor_shadow_audio_frames_total") >= frames
