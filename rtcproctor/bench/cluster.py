"""The servers under measurement: N `rtcproctor serve` processes over one Redis, or running ones.

Several processes of our own share a redis-server that the bench starts (Debian's
binary, on a free loopback port, nothing persisted) and one temporary data dir, so one
SQLite file: the deployment of README's *Scaling past one process* on one machine. One
process runs without Redis, as a single server is deployed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rtcproctor.bench.procstat import pid_listening_on, process_cpu_seconds
from rtcproctor.bench.server import BenchServer, _die_with_parent, free_port, run_queue_seconds

log = logging.getLogger(__name__)

VOICE_SETTLE_TIMEOUT = 240.0  # seconds for every server's voice models to load
PROBLEM = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)$")
EXCEPTION = re.compile(r"^[\w.]+(Error|Exception)\b.*$")  # a traceback's last line
EXPECTED = ("no TURN server configured",)  # a loopback bench needs none
# Socket.IO and peer ids (20 base64url characters): the same failure for many sockets
SOCKET_ID = re.compile(r"(?<![\w.-])(?=[\w-]*[a-z])(?=[\w-]*[A-Z])[\w-]{20}(?![\w.-])")


class RedisMissing(RuntimeError):
    pass


@dataclass
class RedisProcess:
    """A throwaway redis-server on 127.0.0.1."""

    workdir: Path
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, timeout: float = 10.0) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisMissing(
                "several processes need redis-server, which is not installed "
                "(Debian: apt-get install redis-server)"
            )
        port = free_port()
        with open(workdir / "redis.log", "wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    *("--bind", "127.0.0.1", "--port", str(port)),
                    *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        redis = cls(workdir, process, port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{redis.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return redis
            except OSError:
                time.sleep(0.05)
        redis.stop()
        raise RuntimeError(f"redis-server did not listen within {timeout:g} s")

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.process.pid)

    def commands(self) -> dict[str, int]:
        """Commands served so far, by name (INFO commandstats): what each message costs."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            stats = client.info("commandstats")
        except redis.RedisError as exc:
            log.warning("redis-server INFO failed: %s", exc)
            return {}
        finally:
            client.close()
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Cluster:
    """One or more servers that serve the same codes; codes are made on the first."""

    servers: list[BenchServer]
    redis: RedisProcess | None = None
    workdir: Path | None = None  # ours: the shared data dir, Redis's dir, all logs
    pids: list[int | None] = field(default_factory=list)

    @classmethod
    def start(cls, processes: int, timeout: float = 60.0) -> Cluster:
        if processes == 1:
            server = BenchServer.start(timeout)
            assert server.process is not None
            return cls([server], pids=[server.process.pid])
        workdir = Path(tempfile.mkdtemp(prefix="rtcproctor-bench-"))
        cluster = cls([], workdir=workdir)
        try:
            cluster.redis = RedisProcess.start(workdir)
            env = {"RTCPROCTOR_REDIS_URL": cluster.redis.url}
            # One at a time: the first one creates and migrates the shared database.
            for _ in range(processes):
                server = BenchServer.start(timeout, env, data_dir=workdir)
                assert server.process is not None
                cluster.servers.append(server)
                cluster.pids.append(server.process.pid)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @classmethod
    def given(cls, urls: list[str]) -> Cluster:
        """Running servers; their CPU is measured when they listen on this machine."""
        servers = [BenchServer.given(url) for url in urls]
        return cls(servers, pids=[pid_listening_on(s.url) for s in servers])

    @property
    def own(self) -> bool:
        return self.servers[0].process is not None

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def codes(self, count: int) -> list[str]:
        return self.servers[0].codes(count)

    def cpu_seconds(self) -> list[float | None]:
        return [process_cpu_seconds(pid) for pid in self.pids]

    def queued_seconds(self) -> list[float | None]:
        return [None if pid is None else run_queue_seconds(pid) for pid in self.pids]

    def redis_cpu_seconds(self) -> float | None:
        return None if self.redis is None else self.redis.cpu_seconds()

    def redis_commands(self) -> dict[str, int]:
        return {} if self.redis is None else self.redis.commands()

    async def settle(self) -> None:
        """Wait until no server of ours still loads its voice models (minutes of CPU that
        would otherwise land inside the measurement); given servers are taken as they are."""
        if not self.own:
            return
        deadline = time.monotonic() + VOICE_SETTLE_TIMEOUT
        pending = list(self.urls)
        while pending and time.monotonic() < deadline:
            states = await asyncio.gather(*(asyncio.to_thread(voice_state, u) for u in pending))
            pending = [u for u, state in zip(pending, states, strict=True) if state == "loading"]
            if pending:
                await asyncio.sleep(0.5)
        if pending:
            log.warning("voice models still loading on %s", ", ".join(pending))

    def problems(self) -> list[str]:
        """Our servers' warnings, errors and exceptions, counted: `58x :port ERROR ...`."""
        found: list[str] = []
        for server in self.servers:
            if server.data_dir is None:
                continue
            path = server.data_dir / server.log_name
            text = path.read_text(errors="replace") if path.exists() else ""
            counts: dict[str, int] = {}
            for line in text.splitlines():
                match = PROBLEM.match(line)
                what = " ".join(match.groups()) if match else None
                if what is None and EXCEPTION.match(line):
                    what = "raised " + line
                if what is not None and not any(e in what for e in EXPECTED):
                    what = SOCKET_ID.sub("<id>", what)
                    counts[what] = counts.get(what, 0) + 1
            port = server.url.rsplit(":", 1)[-1]
            ranked = sorted(counts.items(), key=lambda item: -item[1])
            found += [f"{n}x :{port} {what}" for what, n in ranked]
        if self.redis is not None and self.redis.process.poll() is not None:
            found.append(f"redis-server exited: {self.redis.log()[-500:]}")
        return found

    def save_logs(self) -> Path | None:
        """Copy our servers' and Redis's logs out of the temp dirs that `stop` removes."""
        logs = [s.data_dir / s.log_name for s in self.servers if s.data_dir is not None]
        if self.redis is not None:
            logs.append(self.redis.workdir / "redis.log")
        logs = [path for path in logs if path.exists()]
        if not logs:
            return None
        kept = Path(tempfile.mkdtemp(prefix="rtcproctor-bench-logs-"))
        for path in logs:
            shutil.copy(path, kept / path.name)
        return kept

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def voice_state(url: str) -> str:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            return str(json.load(response).get("voice", "off"))
    except (OSError, ValueError):
        return "unknown"
