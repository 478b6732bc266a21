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
