from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Gearmand, RedisServer


@pytest.fixture
def gearmand(tmp_path: Path) -> Iterator[Gearmand]:
    server = Gearmand(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A control secret as operators keep it (mode 0600)."""
    path = tmp_path / "control.secret"
    path.write_text("s3cret-shared-by-the-operators\n")
    path.chmod(0o600)
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item (the deploy test prints
    the test host's journal when a check fails)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
