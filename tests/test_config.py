"""The configuration: file, flags and their checks, no server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gearman_workers import config as configuration
from helpers import load_script


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[gearman]\nservers = ["a:1", "b:2"]\n[pool]\nprocesses = 3\npython_path = ["lib"]\n'
                    '[tasks]\necho = "m:f"\n')
    config = configuration.load(path=path)
    assert [str(s) for s in config.servers] == ["a:1", "b:2"]
    assert config.processes == 3 and config.tasks == {"echo": configuration.TaskSpec("m:f")}
    assert config.python_path == [str(tmp_path / "lib")]
    assert config.pidfile == Path("/run/gearman-workers/default.pid")
    with pytest.raises(configuration.ConfigError, match=r"\[pool\] processes: expected a number from 1 to 1024"):
        path.write_text("[pool]\nprocesses = 5000\n[tasks]\necho = 'm:f'\n")
        configuration.load(path=path)
    with pytest.raises(configuration.ConfigError, match="not valid TOML"):
        path.write_text("[pool\n")
        configuration.load(path=path)
    with pytest.raises(configuration.ConfigError, match="no task configured"):
        configuration.load(path=None)


@pytest.mark.parametrize("bad, problem", [
    ({"metrics": {"listen": "9100"}}, "[metrics] listen: expected host:port"),
    ({"metrics": {"listen": "127.0.0.1:99999"}}, "[metrics] listen: expected host:port"),
    ({"pool": {"log_format": "xml"}}, "[pool] log_format: expected one of text, json, got 'xml'"),
    ({"gearman": {"servers": [f"h{i}:4730" for i in range(65)]}}, "[gearman] servers: expected at most 64"),
    ({"pool": {"min_processes": 2}}, "[pool] min_processes: autoscaling needs max_processes too"),
    ({"pool": {"max_processes": 2}}, "[pool] max_processes: autoscaling needs min_processes too"),
    ({"pool": {"min_processes": 3, "max_processes": 2}}, "[pool] min_processes: 3 is above max_processes 2"),
    ({"pool": {"min_processes": 1, "max_processes": 2, "processes": 4}},
     "[pool] processes: 4 is outside min_processes 1 .. max_processes 2"),
    ({"pool": {"scale_down_after": 0}}, "[pool] scale_down_after: expected seconds greater than 0"),
    ({"tasks": {"echo": {"call": "m:f", "processes": 0}}},
     "[tasks]: task 'echo': expected a number from 1 to 1024, got 0"),
    ({"pool": {"min_processes": 1, "max_processes": 2}, "tasks": {"echo": {"call": "m:f", "processes": 1}}},
     "[pool] min_processes: every task has dedicated children; nothing is left to autoscale"),
])
def test_new_settings_are_checked(tmp_path: Path, bad: dict, problem: str) -> None:
    def toml(value: object) -> str:
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
        return json.dumps(value)

    path = tmp_path / "pool.toml"
    tables = {"tasks": {"echo": "m:f"}, **bad}
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items())
                            for name, table in tables.items()))
    with pytest.raises(configuration.ConfigError, match=re.escape(problem)):
        configuration.load(path=path)


def test_the_configuration_reference_is_the_option_table() -> None:
    module = load_script("scripts/render_reference.py")
    page = module.ROOT / "docs/reference/configuration.md"
    assert page.read_text() == module.configuration(), "docs/reference/configuration.md is stale: " \
        "run scripts/render_reference.py"
    for option in configuration.OPTIONS:
        assert f"`{option.key or 'call'}`" in module.configuration()
