from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support import Server


@pytest.fixture
def server(tmp_path: Path):
    srv = Server(data_dir=tmp_path / "data").start()
    yield srv
    srv.stop()
    keep_log(srv, tmp_path.name)


def keep_log(srv: Server, name: str) -> None:
    """Copy a server's log to RTCPROCTOR_TEST_ARTIFACTS (CI keeps that folder)."""
    artifacts = os.environ.get("RTCPROCTOR_TEST_ARTIFACTS")
    if artifacts and srv.log_path:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(srv.log_path, Path(artifacts) / f"{name}-server.log")


@pytest.fixture(scope="session")
def shared_voice_server(tmp_path_factory):
    """One server with the shadow proctor for the session: loading its models costs ~8 s."""
    srv = Server(
        data_dir=tmp_path_factory.mktemp("voice") / "data", env={"RTCPROCTOR_VOICE": "1"}
    ).start()
    srv.wait_voice_ready()
    yield srv
    srv.stop()
    keep_log(srv, "voice-server")


@pytest.fixture
def voice_server(shared_voice_server: Server):
    """The shared voice server with no hidden peer left by an earlier test.

    Each test makes its own exam, so tests share only the loaded models.
    """
    if shared_voice_server.process and shared_voice_server.process.poll() is not None:
        shared_voice_server.start().wait_voice_ready()
    shared_voice_server.wait_no_shadow_peers()
    return shared_voice_server


@pytest.fixture(scope="session")
def voices(tmp_path_factory) -> dict[str, Path]:
    """Speech every install can make: two clearly different espeak-ng voices."""
    from tests.speech import make_voices

    return make_voices(tmp_path_factory.mktemp("voices"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium():
    """One headless Chromium for the session: a launch costs about a second of CPU."""
    from playwright.async_api import async_playwright

    from tests.browser import launch

    async with async_playwright() as playwright:
        shared = await launch(playwright)
        yield shared
        await shared.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(chromium, request):
    """The shared Chromium; pages open in contexts of their own, all closed after the test.

    Playwright is bound to the session's event loop: tests using this fixture must be
    marked `pytest.mark.asyncio(loop_scope="session")`. Request it after the server so
    that its pages close first: a server with connected pages takes 10 s to stop.
    """
    marker = request.node.get_closest_marker("asyncio")
    if marker is None or marker.kwargs.get("loop_scope") != "session":
        pytest.fail('a test using `browser` needs pytest.mark.asyncio(loop_scope="session")')
    yield chromium
    for context in chromium.contexts:
        await context.close()


@pytest.fixture
def turn(tmp_path: Path):
    from tests.support import Turn

    server = Turn(tmp_path / "turn").start()
    yield server
    server.stop()


@pytest.fixture
def production_turn(tmp_path: Path):
    from tests.support import Turn

    server = Turn(tmp_path / "turn-prod", loopback=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session; each test takes its own database."""
    from tests.support import Postgres, PostgresUnavailable

    server = Postgres()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    """A fresh, empty database: a real SQLite file, or a database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres").database()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real Redis for the session; tests keep apart by key prefix or by flushing."""
    from rtcproctor.bench.cluster import RedisProcess

    server = RedisProcess.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
