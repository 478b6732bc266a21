"""The server under measurement: a fresh `rtcproctor serve` on loopback, or one given by URL.

A fresh server gets its own temporary data dir and its codes from `rtcproctor codes`;
a given one gets codes through `POST /api/exams`, 500 names at a time.
"""

from __future__ import annotations

import json
import os
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

from rtcproctor.bench.procstat import process_cpu_seconds

MAX_NAMES_PER_REQUEST = 500
MAX_CODES_PER_COMMAND = 5000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: a killed benchmark must not leave its server running (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class BenchServer:
    url: str
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    log_name: str = "server.log"
    keep_data_dir: bool = False  # shared with other servers: whoever made it removes it
    _key: str | None = field(default=None, repr=False)
    _exam: str | None = field(default=None, repr=False)

    @classmethod
    def given(cls, url: str, key: str | None = None) -> BenchServer:
        """A running server; with the exam's proctor key, codes are added to that exam."""
        return cls(url.rstrip("/"), _key=key)

    @property
    def key(self) -> str | None:
        """The proctor key of the exam holding this benchmark's codes."""
        return self._key

    @classmethod
    def start(
        cls,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> BenchServer:
        """With `data_dir`, the server shares that dir (and its SQLite file) with others."""
        shared = data_dir is not None
        data_dir = data_dir or Path(tempfile.mkdtemp(prefix="rtcproctor-bench-"))
        port = free_port()
        log_name = f"server-{port}.log" if shared else "server.log"
        log = open(data_dir / log_name, "wb")  # noqa: SIM115 - the child keeps writing to it
        process = subprocess.Popen(
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
                str(data_dir),
                "--ice-loopback",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RTCPROCTOR_LOG_LEVEL": "WARNING", **(env or {})},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        server = cls(f"http://127.0.0.1:{port}", process, data_dir, log_name, shared)
        try:
            server.wait_healthy(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /healthz within {timeout:g} s")

    def log(self) -> str:
        path = self.data_dir / self.log_name if self.data_dir else None
        return path.read_text(errors="replace")[-4000:] if path and path.exists() else ""

    def codes(self, count: int) -> list[str]:
        """`count` fresh stream codes on this server."""
        codes: list[str] = []
        while len(codes) < count:
            if self.process is not None:
                codes += self._cli_codes(min(count - len(codes), MAX_CODES_PER_COMMAND))
            else:
                codes += self._api_codes(min(count - len(codes), MAX_NAMES_PER_REQUEST))
        return codes

    def _cli_codes(self, count: int) -> list[str]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "rtcproctor",
                "codes",
                "--count",
                str(count),
                "--json",
                "--data-dir",
                str(self.data_dir),
                "--base-url",
                self.url,
                *(["--key", self._key] if self._key else []),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        answer = json.loads(out.stdout)
        self._key = self._key or answer.get("proctor_key")
        return [s["code"] for s in answer["students"]]

    def _api_codes(self, count: int) -> list[str]:
        body: dict[str, object] = {"names": [f"Bench {i}" for i in range(count)]}
        if self._key:
            body["key"] = self._key
        if self._exam:
            body["exam"] = self._exam
        request = urllib.request.Request(
            self.url + "/api/exams",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        self._exam, self._key = answer["exam"], answer["proctor_key"]
        return [s["code"] for s in answer["students"]]

    def cpu_seconds(self) -> float | None:
        """User+system CPU time of our own server process (Linux /proc), else None."""
        return process_cpu_seconds(self.process.pid if self.process else None)

    def queued_seconds(self) -> float | None:
        """Time the server's main (event-loop) thread was runnable but waiting for a CPU."""
        return None if self.process is None else run_queue_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.data_dir is not None and not self.keep_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def run_queue_seconds(pid: int | str = "self") -> float | None:
    """Run-queue delay of a process's main thread from /proc/PID/schedstat (Linux), else None."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
