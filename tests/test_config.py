"""The configuration: file, flags and their checks, no server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gearman_workers import config as configuration
from helpers import ROOT, load_script, run_cli


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
     "[tasks]: task 'echo': processes: expected a number from 1 to 1024, got 0"),
    ({"tasks": {"echo": {"call": "m:f", "retries": -1}}},
     "[tasks]: task 'echo': retries: expected a number from 0 to 100, got -1"),
    ({"tasks": {"echo": {"call": "m:f", "retries": 2, "retry_delay": 0}}},
     "[tasks]: task 'echo': retry_delay: expected seconds greater than 0"),
    ({"tasks": {"echo": {"call": "m:f", "retry_delay": 60, "retry_max_delay": 30}}},
     "[tasks]: task 'echo': retry_max_delay (30) is below retry_delay (60)"),
    ({"tasks": {"echo": {"call": "m:f", "keep_results": "a day"}}},
     "[tasks]: task 'echo': keep_results: expected a whole number"),
    ({"tasks": {"echo": {"call": "m:f", "retry": 3}}},
     "[tasks]: task 'echo': unknown key(s) retry (expected call, command, env, cwd, max_output, timeout"),
    ({"tasks": {"up": {"command": "tr a-z A-Z"}}},
     "[tasks]: task 'up': command: expected a list of strings, the program first"),
    ({"tasks": {"up": {"command": ["tr"], "call": "m:f"}}},
     "[tasks]: task 'up': a table needs call = \"module:callable\" or command = [\"program\", \"arg\"...], one of"),
    ({"tasks": {"up": {"call": "m:f", "cwd": "/tmp"}}}, "[tasks]: task 'up': env, cwd and max_output are a command's"),
    ({"tasks": {"up": {"command": ["tr"], "env": {"A": 1}}}},
     "[tasks]: task 'up': env: expected a table of NAME = \"value\""),
    ({"tasks": {"echo": {"call": "m:f", "retries": 3}}},
     "[tasks] echo: retries and keep_results keep their records in Redis; set [control] redis_url"),
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


def test_help_groups_the_flags_by_table_with_defaults_and_units() -> None:
    text = run_cli("gearman-workers", "--help").stdout
    assert "[pool]:" in text and "[gearman]:" in text and "[control]:" in text
    flat = " ".join(text.split())  # argparse wraps to the terminal
    assert "--graceful-timeout SECONDS seconds a stopping child may finish its job (default: 30)" in flat
    assert "--max-memory MIB" in flat and "(default: CPU count)" in flat


def test_print_config_shows_file_and_flags_merged_and_loads_back(tmp_path: Path) -> None:
    done = run_cli("gearman-workers", "--config", str(ROOT / "examples/gearman-workers.toml"), "--processes", "3",
                   "--print-config")
    assert done.returncode == 0, done.stderr
    printed = tmp_path / "printed.toml"
    printed.write_text(done.stdout)
    original = configuration.load(path=ROOT / "examples/gearman-workers.toml")
    again = configuration.load(path=printed)
    assert again.processes == 3 and again.tasks == original.tasks and again.name == original.name == "examples"


def test_an_unknown_key_suggests_the_one_meant(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[pool]\ngraceful_timout = 3\n[tasks]\necho = "tasks:echo"\n')
    with pytest.raises(configuration.ConfigError, match=r"unknown key \[pool\] graceful_timout "
                                                        r"\(did you mean graceful_timeout\?\)"):
        configuration.load(path=path)


def test_a_task_that_cannot_take_worker_and_job_is_refused_at_check_config(tmp_path: Path) -> None:
    (tmp_path / "sig.py").write_text("def one(job):\n    return b''\n")
    done = run_cli("gearman-workers", "--python-path", str(tmp_path), "--task", "x=sig:one", "--check-config")
    assert done.returncode == 3
    assert done.stderr.startswith("gearman-workers: cannot load task 'x': sig:one: takes (job); "
                                  "a task takes (worker, job)")


def test_a_task_given_twice_is_warned_about(tmp_path: Path) -> None:
    done = run_cli("gearman-workers", "--python-path", str(ROOT / "examples"), "--task", "e=tasks:echo",
                   "--task", "e=tasks:reverse", "--check-config")
    assert done.returncode == 0 and "--task e given twice; the last one (tasks:reverse) wins" in done.stderr


def test_a_malformed_redis_url_is_one_line_and_exit_2_in_every_command(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:2450x/0"
    for command in (["gearman-workers", "--task", "e=tasks:echo", "--allow-unsigned", "--state-dir", str(tmp_path)],
                    ["gm-ctl", "pools"], ["gm-exit", "--all", "--allow-unsigned"]):
        done = run_cli(command[0], *command[1:], "--redis-url", url)
        assert done.returncode == 2, command
        (line,) = done.stderr.splitlines()
        assert line == f"{command[0]}: config error: --redis-url: '{url}' is not a Redis URL redis-py can use: " \
                       "Port could not be cast to integer value as '2450x'"
    assert not list(tmp_path.iterdir())
