"""What `docker compose up` starts, checked without a Docker engine; HTTPS for LAN trials."""

from __future__ import annotations

import importlib.util
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support import REPO, free_port

COMPOSE = Path(importlib.util.find_spec("compose").origin).parent / "docker-compose"


def compose(*args: str, env_file: Path, scale: bool = False) -> subprocess.CompletedProcess:
    files = ["-f", str(REPO / "docker-compose.yml")]
    if scale:
        files += ["-f", str(REPO / "docker-compose.scale.yml")]
    return subprocess.run(
        [str(COMPOSE), *files, "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )


def test_compose_file_validates_with_the_documented_env():
    result = compose("config", "-q", env_file=REPO / ".env.example")
    assert result.returncode == 0, result.stderr


def test_compose_starts_server_https_and_coturn_as_documented():
    result = compose("config", "--format", "json", env_file=REPO / ".env.example")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"rtcproctor", "https", "coturn"}
    server = services["rtcproctor"]
    env = server["environment"]
    assert env["RTCPROCTOR_TURN_URLS"].startswith("turn:exam.school.example:3478")
    assert env["RTCPROCTOR_TURN_SECRET"] == env["RTCPROCTOR_TURN_SECRET"].strip() != ""
    assert server["healthcheck"]["test"] and server["restart"] == "unless-stopped"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in server["volumes"])
    assert "ports" not in server  # only the HTTPS proxy reaches it
    assert {p["target"] for p in services["https"]["ports"]} == {80, 443}
    turn = services["coturn"]
    assert turn["network_mode"] == "host"
    assert any(v["source"].endswith("coturn/turnserver.conf") for v in turn["volumes"])
    assert "--static-auth-secret=change-me-to-a-long-random-secret" in turn["command"]


def test_scaled_compose_adds_redis_postgres_and_a_balancer_over_replicas(tmp_path):
    assert compose("config", "-q", env_file=REPO / ".env.example", scale=True).returncode == 0
    result = compose("config", "--format", "json", env_file=REPO / ".env.example", scale=True)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert set(services) == {"rtcproctor", "https", "coturn", "redis", "postgres"}
    server = services["rtcproctor"]
    env = server["environment"]
    assert env["RTCPROCTOR_REDIS_URL"] == "redis://redis:6379/0"
    assert env["RTCPROCTOR_DATABASE_URL"].startswith("postgresql+asyncpg://rtcproctor:")
    assert "change-me-too@postgres:5432/rtcproctor" in env["RTCPROCTOR_DATABASE_URL"]
    assert set(server["depends_on"]) == {"redis", "postgres"}
    assert "container_name" not in server and "ports" not in server  # replicas can scale
    caddyfile = config["configs"]["caddyfile"]["content"]
    assert "dynamic a rtcproctor 8080" in caddyfile and "exam.school.example" in caddyfile
    assert services["https"]["configs"][0]["target"] == "/etc/caddy/Caddyfile"
    assert services["postgres"]["healthcheck"]["test"] and services["redis"]["healthcheck"]["test"]
    env = tmp_path / "env"
    env.write_text((REPO / ".env.example").read_text().replace("POSTGRES_", "#POSTGRES_"))
    result = compose("config", "-q", env_file=env, scale=True)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_compose_refuses_a_missing_setting(tmp_path):
    env = tmp_path / "env"
    env.write_text((REPO / ".env.example").read_text().replace("PUBLIC_IP=", "#PUBLIC_IP="))
    result = compose("config", "-q", env_file=env)
    assert result.returncode != 0 and "PUBLIC_IP" in result.stderr


def test_self_signed_https_for_lan_trials(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rtcproctor",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--tls-self-signed",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RTCPROCTOR_VOICE": "0"},  # about TLS: no models to load
    )
    try:
        cert = tmp_path / "tls" / "self-signed.crt"
        context = ssl.create_default_context(cafile=None)
        for _ in range(100):
            if cert.exists():
                try:
                    context = ssl.create_default_context(cafile=str(cert))
                    with urllib.request.urlopen(
                        f"https://localhost:{port}/healthz", context=context, timeout=1
                    ) as r:
                        assert json.load(r)["status"] == "ok"
                        break
                except OSError:
                    pass
            time.sleep(0.1)
        else:
            raise AssertionError("HTTPS server did not answer")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert "SHA-256" in out and "https://" in out
