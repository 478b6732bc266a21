from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import Server


@pytest.fixture
def server(tmp_path: Path):
    srv = Server(data_dir=tmp_path / "data").start()
    yield srv
    srv.stop()
    artifacts = os.environ.get("RTCPROCTOR_TEST_ARTIFACTS")
    if artifacts and srv.log_path:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(srv.log_path, Path(artifacts) / f"{tmp_path.name}-server.log")


@pytest.fixture
def voice_server(tmp_path: Path):
    """A server with the shadow proctor listening, once its models have loaded."""
    srv = Server(data_dir=tmp_path / "data", env={"RTCPROCTOR_VOICE": "1"}).start()
    srv.wait_voice_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def voices(tmp_path_factory) -> dict[str, Path]:
    """Speech every install can make: two clearly different espeak-ng voices."""
    from tests.speech import make_voices

    return make_voices(tmp_path_factory.mktemp("voices"))


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    from tests.browser import launch

    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


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
