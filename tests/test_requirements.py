"""The run-time requirements are locked with hashes, and stay so:
requirements.txt is pip-compile's output for requirements.in (regenerate it
with the command written at its top), and the wheelhouse refuses a wheel
that the lock does not allow."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

from helpers import ROOT, load_script


def _pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.M)}


def _builder():
    return load_script("roles/gearman_workers/files/build_wheelhouse.py")


def test_requirements_txt_pins_what_requirements_in_asks_each_with_hashes() -> None:
    locked = (ROOT / "requirements.txt").read_text()
    wanted = _pins((ROOT / "requirements.in").read_text())
    pins = _pins(locked)
    assert wanted.items() <= pins.items(), "requirements.txt is stale: regenerate it (the command is at its top)"
    hashes = _builder().locked_hashes([ROOT / "requirements.txt"])
    assert set(hashes) == set(pins), set(pins) - set(hashes)  # every pinned package, each with its files' hashes
    assert "--index-url" not in locked and "--find-links" not in locked  # nothing of this machine's pip set-up
    assert "pip-compile --allow-unsafe --generate-hashes --no-emit-find-links --no-emit-index-url" in locked


def test_what_is_installed_is_what_is_locked() -> None:
    for name, version in _pins((ROOT / "requirements.txt").read_text()).items():
        assert importlib.metadata.version(name) == version, name


def test_the_wheelhouse_refuses_a_wheel_its_lock_does_not_allow(tmp_path: Path) -> None:
    builder = _builder()
    house = tmp_path / "house"
    house.mkdir()
    good = house / "lockfile-0.12.2-py2.py3-none-any.whl"
    good.write_bytes(b"the real wheel")
    allowed = {"lockfile": {hashlib.sha256(b"the real wheel").hexdigest()}}
    builder.check_lock(house, allowed)  # the file the lock allows passes
    good.write_bytes(b"a wheel swapped in on the way")
    with pytest.raises(SystemExit, match=re.escape(f"{good.name} is not a file requirements.txt allows")):
        builder.check_lock(house, allowed)
