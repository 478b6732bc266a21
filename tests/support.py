"""Start real server processes and make real codes for tests (no mocks)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
        self.stop()  # not left running behind a failed test
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

    def wait_shadow_peers(self, count: int, timeout: float = 60.0) -> None:
        """Until the server holds `count` hidden peers: a student's peer connects after the
        watchers' media may already flow, and goes away a moment after the student."""
        deadline = time.monotonic() + timeout
        while self.health()["shadow_peers"] != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"expected {count} shadow peers: {self.health()}")
            time.sleep(0.1)

    def wait_no_shadow_peers(self, timeout: float = 60.0) -> None:
        """Until the hidden peers of students who left are gone (a shared server's tests
        count the peers of their own student)."""
        self.wait_shadow_peers(0, timeout)

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


INITDB_OPTIONS = ("--auth=trust", "--no-locale", "--encoding=UTF8", "--no-sync")


class PostgresUnavailable(RuntimeError):
    """This machine cannot run a throwaway PostgreSQL server (the reason says why)."""


@dataclass
class Postgres:
    """A real PostgreSQL server from Debian's binaries, in a temp dir, on 127.0.0.1.

    postgres refuses to run as root, so as root it runs as the `postgres` system user the
    Debian package creates; trust authentication, no fsync: it exists for one test session.
    """

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    process: subprocess.Popen | None = None
    bin_dir: Path | None = None
    log_path: Path | None = None
    databases: int = 0

    @staticmethod
    def find_bin_dir() -> Path | None:
        candidates = [
            Path(d)
            for d in glob.glob("/usr/lib/postgresql/*/bin")
            if Path(d, "postgres").exists() and Path(d, "initdb").exists()
        ]
        return max(candidates, key=lambda p: int(p.parent.name), default=None)

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        try:
            account = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root and there is no `postgres` user") from exc
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> Postgres:
        self.bin_dir = self.find_bin_dir()
        if self.bin_dir is None:
            raise PostgresUnavailable(
                "no PostgreSQL server in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
            )
        as_user = self._run_as()
        self.workdir = Path(tempfile.mkdtemp(prefix="rtcproctor-pg-"))
        data = self.workdir / "data"
        try:
            if as_user:
                os.chown(self.workdir, as_user["user"], as_user["group"])
            subprocess.run(
                [self.bin_dir / "initdb", "-D", data, "-U", "postgres", *INITDB_OPTIONS],
                check=True,
                capture_output=True,
                cwd=self.workdir,
                **as_user,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-300:]
            self.stop()
            raise PostgresUnavailable(
                f"cannot run PostgreSQL as the postgres user here ({exc}) {detail}; a user "
                "namespace that maps only one uid cannot: run the tests as real root"
            ) from exc
        self.log_path = self.workdir / "postgres.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.bin_dir / "postgres", "-D", data, "-k", self.workdir, *self.options()],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                **as_user,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            ready = subprocess.run(
                [self.bin_dir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("postgres did not start")

    def options(self) -> list[str]:
        """Loopback only, and no durability: the data lives for one test session."""
        durability = ("fsync", "synchronous_commit", "full_page_writes")
        return ["-h", "127.0.0.1", "-p", str(self.port)] + [
            arg for name in durability for arg in ("-c", f"{name}=off")
        ]

    def client(self, database: str = "postgres") -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database]

    def psql(self, sql: str, database: str = "postgres") -> str:
        command = [self.bin_dir / "psql", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql]
        return subprocess.run(
            [*command, *self.client(database)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy async URL."""
        self.databases += 1
        name = f"test{self.databases}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: don't wait for clients
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Balancer:
    """A TCP load balancer for the tests, in the test's own event loop: each new
    connection goes to the first backend that accepts it, as a balancer with health
    checks would send it to a live process. Socket.IO here is WebSocket-only, so no
    session stickiness is needed."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self.accepted: list[int] = []
        self._server = None
        self._pipes: set = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Balancer:
        import asyncio

        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader, writer) -> None:
        import asyncio

        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.accepted.append(port)
            for src, dst in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.create_task(self._pipe(src, dst))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()

    @staticmethod
    async def _pipe(src, dst) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
