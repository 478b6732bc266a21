"""Start real server processes and make real codes for tests (no mocks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtcproctor(
    *args: str, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtcproctor", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


@dataclass
class Server:
    """A real `rtcproctor serve` process on loopback with its own data dir."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rtcproctor",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--ice-loopback",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "RTCPROCTOR_LOG_LEVEL": "INFO",
                    # Loading the voice models costs ~8 s of CPU: only tests about voice want it.
                    "RTCPROCTOR_VOICE": "0",
                    **self.env,
                },
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log()}")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
            return json.load(r)

    def wait_voice_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            voice = self.health()["voice"]
            if voice == "ready":
                return
            if voice in ("off", "unavailable"):
                raise RuntimeError(f"voice detection is {voice}: {self.log()[-2000:]}")
            time.sleep(0.25)
        raise RuntimeError("voice detection did not become ready")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def codes(self, *names: str) -> dict:
        """A new exam with a code per name, through the real CLI on the server's database."""
        out = rtcproctor(
            "codes",
            "--count",
            str(len(names)),
            "--json",
            "--data-dir",
            str(self.data_dir),
            "--base-url",
            self.url,
            env=self.env,
        )
        exam = json.loads(out.stdout)
        for student, name in zip(exam["students"], names, strict=True):
            student["name_hint"] = name
        return exam


REPO = Path(__file__).resolve().parent.parent
PRODUCTION_TURN_CONF = REPO / "coturn" / "turnserver.conf"


@dataclass
class Turn:
    """A real coturn on 127.0.0.1 running the project's own config.

    `loopback=True` changes only what loopback testing needs: the 127.0.0.0/8 denial
    is dropped and `allow-loopback-peers` added. Otherwise the production policy holds.
    """

    workdir: Path
    secret: str = "test-shared-secret"
    loopback: bool = True
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = PRODUCTION_TURN_CONF.read_text().splitlines()
        if self.loopback:
            lines = [ln for ln in lines if ln.strip() != "denied-peer-ip=127.0.0.0-127.255.255.255"]
            lines.append("allow-loopback-peers")
        lines += [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={self.port}",
            f"static-auth-secret={self.secret}",
            "realm=rtcproctor.test",
            f"pidfile={self.workdir / 'turnserver.pid'}",
            f"userdb={self.workdir / 'turndb'}",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> Turn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "turnserver.conf"
        conf.write_text(self.config())
        with open(self.workdir / "turnserver.log", "ab") as log:
            self.process = subprocess.Popen(
                ["turnserver", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.workdir / "turnserver.log").read_text())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("turnserver did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
