"""HTTP endpoints of a real server: pages, headers, the exam API, health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.support import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for these requests: none changes what another sees (exams are separate,
    and all the API calls stay well within one address's rate limit)."""
    srv = Server(data_dir=tmp_path_factory.mktemp("http") / "data").start()
    yield srv
    srv.stop()


def fetch(url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_pages_are_served_with_a_content_security_policy(server):
    for path in ("/", "/student", "/monitor"):
        status, headers, body = fetch(server.url + path)
        assert status == 200, path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert b"<html" in body.lower()


def test_socketio_client_comes_from_npm_install(server):
    status, headers, body = fetch(server.url + "/vendor/socket.io.esm.min.js")
    assert status == 200
    assert "javascript" in headers["Content-Type"]
    assert b"export" in body


def test_static_files_do_not_expose_node_modules_or_the_tree(server):
    for path in (
        "/static/node_modules/socket.io-client/package.json",
        "/static/package.json",
        "/static/../pyproject.toml",
        "/static/js/",
    ):
        status, _, _ = fetch(server.url + path)
        assert status in (403, 404), path


def test_healthz(server):
    status, _, body = fetch(server.url + "/healthz")
    assert status == 200
    assert json.loads(body)["database"] == "ok"


def post_json(server, payload, headers=None):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return fetch(
        server.url + "/api/exams", data, {"Content-Type": "application/json", **(headers or {})}
    )


def test_exam_api_creates_and_extends_with_key(server):
    status, _, body = post_json(server, {"names": ["Ann", " ", "Bob"]})
    assert status == 200
    exam = json.loads(body)
    assert [s["name"] for s in exam["students"]] == ["Ann", "Bob"]
    assert exam["students"][0]["link"].startswith(server.url + "/student#code=")
    status, _, body = post_json(server, {"names": ["Cy"], "key": exam["proctor_key"]})
    assert status == 200 and json.loads(body)["exam"] == exam["exam"]
    status, _, body = post_json(server, {"names": ["Cy"], "key": "forged"})
    assert status == 403 and json.loads(body)["error"]["code"] == "unauthorized"


def test_exam_api_rejects_bad_input_clearly(server):
    for payload in (
        b"{not json",
        {"names": "Ann"},
        {"names": []},
        {"names": ["x" * 121]},
        {"names": ["a"] * 501},
        [1, 2],
    ):
        status, _, body = post_json(server, payload)
        assert status == 400, payload
        assert json.loads(body)["ok"] is False
    status, _, _ = fetch(
        server.url + "/api/exams",
        b"names=Ann",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    status, _, _ = post_json(server, {"names": ["x" * 100] * 500 + ["y" * 10000]})
    assert status in (400, 413)
