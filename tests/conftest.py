"""Fixtures every test file shares, and the tiers: each test is marked by
what it needs (`pytest -m unit` runs the ones that need nothing but
Python; tests/run --fast runs those with the linters)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Gearmand, RedisServer, needs_program

# fixture -> the tier of a test that uses it
NEEDS = {"gearmand": "gearmand", "two_gearmands": "gearmand", "redis_server": "redis", "valgrind": "valgrind"}
# module -> the tier of every test in it
MODULE_NEEDS = {"test_deploy": "deploy", "test_monitoring": "promtool"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = {mark for fixture, mark in NEEDS.items() if fixture in getattr(item, "fixturenames", ())}
        module = MODULE_NEEDS.get(item.module.__name__ if isinstance(item, pytest.Function) else "")
        needs |= {module} if module else set()
        for mark in sorted(needs) or ["unit"]:
            item.add_marker(mark)


@pytest.fixture
def gearmand(tmp_path: Path) -> Iterator[Gearmand]:
    needs_program("gearmand", "gearman-job-server")
    server = Gearmand(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def two_gearmands(tmp_path: Path) -> Iterator[list[Gearmand]]:
    """Two gearmands of our own, independent, as a fleet with no single point of failure has them."""
    needs_program("gearmand", "gearman-job-server")
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        server = Gearmand(tmp_path / name)
        server.start()
        servers.append(server)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def valgrind() -> None:
    needs_program("valgrind", "valgrind")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    needs_program("redis-server", "redis-server")
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
