"""The role's files, without a host: the units under systemd/ are the
role's templates rendered with the role's defaults (one source), and the
role's pool template gives a configuration the pool accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gearman_workers import config as configuration
from helpers import ROOT, Gearmand, load_script, submit_background_raw

ROLE = ROOT / "roles/gearman_workers"


units = load_script("scripts/render_units.py")


def test_the_units_under_systemd_are_the_role_templates_with_the_defaults() -> None:
    for name in units.UNITS:
        shipped = (ROOT / "systemd" / name).read_text()
        assert shipped == units.render_unit(name), f"systemd/{name} is stale: run scripts/render_units.py"


def test_unit_paths_follow_the_role_variables() -> None:
    values = units.role_defaults() | {"gearman_workers_user": "jobs", "gearman_workers_venv": "/srv/jobs/venv",
                                      "gearman_workers_config_dir": "/etc/jobs"}
    unit = units.render_unit("gearman-workers@.service", values)
    assert "User=jobs\n" in unit
    assert "ExecStart=/srv/jobs/venv/bin/gearman-workers --config /etc/jobs/%i.toml\n" in unit
    assert "/opt/gearman-workers" not in unit.replace("file:///opt/gearman-workers/README.md", "")


def test_every_pool_key_the_role_renders_is_one_the_pool_knows() -> None:
    template = (ROLE / "templates/pool.toml.j2").read_text()
    known = {option.key for option in configuration.OPTIONS if option.section == "pool"}
    rendered = {line.split(" = ")[0] for line in template.splitlines() if " = {{ pool." in line}
    assert rendered and rendered <= known, rendered - known
    pool_keys = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]["gearman_workers_pools"]["options"]
    assert rendered <= set(pool_keys), rendered - set(pool_keys)


def _run_role(tmp_path: Path, role: str, *extra_vars: str, tags: str = "all") -> subprocess.CompletedProcess:
    """ROLE run for real against this machine, with EXTRA_VARS (TAGS: only those tasks, and the `always` ones)."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(f"- hosts: localhost\n  gather_facts: false\n  roles: [{role}]\n")
    env = os.environ | {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_HOME": str(tmp_path / "ansible"),
                        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "False"}
    extra = [arg for value in extra_vars for arg in ("-e", value)]
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "--tags", tags, str(playbook), *extra], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_wrong_queue_type_fails_before_any_task(tmp_path: Path) -> None:
    """The gearmand role, run for real against this machine with a wrong
    gearmand_queue_type, stops at its argument check: nothing is run."""
    done = _run_role(tmp_path, "gearmand", "gearmand_queue_type=mysql")
    assert done.returncode != 0
    assert "gearmand_queue_type must be one of: builtin, libsqlite3, redis, got: mysql" in done.stdout, done.stdout
    assert "ok=0" in done.stdout and "changed=0" in done.stdout


def test_access_sources_are_the_inventory_hosts_and_the_extras_by_family() -> None:
    access = load_script("plugins/filter/access.py")
    hosts = [{"inventory_hostname": "w1", "ansible_host": "10.0.0.21"}, {"inventory_hostname": "127.0.0.9"},
             {"inventory_hostname": "w2", "ansible_host": "10.0.0.22"}]
    assert access.access_sources(hosts, ["10.0.0.20/31", "fd00::1"]) == {
        "ipv4": ["10.0.0.20/31", "10.0.0.22/32", "127.0.0.9/32"], "ipv6": ["fd00::1/128"]}
    assert "127.0.0.1/32" in access.access_sources([], ["localhost"])["ipv4"]  # a name: what it resolves to
    with pytest.raises(access.AccessError, match=r"cannot allow 'no such host\.invalid'"):
        access.access_sources([], ["no such host.invalid"])


def test_a_pool_user_reads_only_its_scopes_and_writes_only_expiring_keys_of_its_host() -> None:
    acl = load_script("plugins/filter/acl.py")
    rules = acl.pool_acl_rules("w1", "gw", "ctl").split()
    assert rules[:3] == ["resetchannels", "&ctl", "resetkeys"]
    assert [r for r in rules if r.startswith("%R~")] == [
        "%R~gw:exit:all", "%R~gw:exit:host:w1", "%R~gw:exit:pool:*", "%R~gw:exit:host:w1:pool:*",
        "%R~gw:data:all", "%R~gw:data:host:w1", "%R~gw:data:pool:*", "%R~gw:data:host:w1:pool:*",
        "%R~gw:pause:all", "%R~gw:pause:host:w1", "%R~gw:pause:pool:*", "%R~gw:pause:host:w1:pool:*"]
    assert [r for r in rules if r.startswith("~")] == ["~gw:pool:w1:*", "~gw:nonce:w1:*", "~gw:ack:w1:*"]
    root = rules[:rules.index(next(r for r in rules if r.startswith("(")))]
    assert "+setex" in root and "+set" not in root and "+hset" not in root and "+evalsha" not in root
    assert f"(~gw:jobs:* {acl.JOB_COMMANDS})" in " ".join(rules)  # job scripts touch job keys only
    assert " ".join(rules).endswith(f"(~gw:tasks:* {acl.TOKEN_COMMANDS})")  # token scripts, token keys
    with pytest.raises(ValueError, match="cannot be a pool's"):
        acl.pool_acl_rules("w*", "gw", "ctl")


addresses = load_script("plugins/filter/addresses.py")


def test_gearmand_servers_are_the_advertised_addresses_at_their_ports() -> None:
    hosts = [{"inventory_hostname": "g1", "ansible_host": "10.0.0.11", "gearmand_advertise_address": "192.0.2.1"},
             {"inventory_hostname": "g2", "ansible_host": "fd00::12", "gearmand_port": 4731},
             {"inventory_hostname": "g3"}]
    assert addresses.gearmand_servers(hosts) == ["192.0.2.1:4730", "[fd00::12]:4731", "g3:4730"]
    assert addresses.gearmand_servers(hosts, ["gm.example:4730"]) == ["gm.example:4730"]  # given: used as is
    assert configuration._servers(addresses.gearmand_servers(hosts))[1].host == "fd00::12"  # the pool reads them


def test_redis_urls_encode_the_credentials_and_name_the_ca_under_tls() -> None:
    plain = addresses.redis_endpoint({"inventory_hostname": "r1", "ansible_host": "10.0.0.5", "redis_port": 6380})
    assert addresses.redis_url(plain, "pool-w1", "a/b:c@d") == "redis://pool-w1:a%2Fb%3Ac%40d@10.0.0.5:6380/0"
    tls = addresses.redis_endpoint({"inventory_hostname": "r1", "redis_tls_port": 6390, "redis_port": 0,
                                    "redis_tls_ca": "/ca.pem"})
    assert tls["ca"] == "/ca.pem"
    assert addresses.redis_url(tls, "operator", "pw", "/etc/gw/ca.pem") == \
        "rediss://operator:pw@r1:6390/0?ssl_ca_certs=/etc/gw/ca.pem"
    assert addresses.redis_url(addresses.redis_endpoint(None), "u", "p") == ""  # no Redis: no URL


def test_the_pool_list_completes_each_pool_and_counts_up_the_metrics_ports() -> None:
    pools = load_script("plugins/filter/pools.py")
    defaults = {"tasks": {}, "processes": 2, "preload": ""}
    listed = pools.pool_list([{"name": "images", "tasks": {"resize": "i:r"}}, {"name": "mail", "processes": 1}],
                             defaults, "default", "9810", {"echo": "tasks:echo"})
    assert [(p["name"], p["processes"], p["metrics_port"]) for p in listed] == [("images", 2, 9810), ("mail", 1, 9811)]
    assert listed[1]["tasks"] == {"echo": "tasks:echo"} and listed[1]["preload"] == "tasks:preload"
    assert [p["name"] for p in pools.pool_list(None, defaults, "default", 9810, {})] == ["default"]


def test_a_pool_without_tasks_is_refused_outside_the_test_inventory(tmp_path: Path) -> None:
    """The pool role, run for real against this machine without tasks,
    stops at its preflight before anything changes: the example tasks never
    reach production gearmands by default."""
    done = _run_role(tmp_path, "gearman_workers", "gearman_workers_servers=['127.0.0.1:1']")
    assert done.returncode != 0
    assert "pool(s) default name no tasks" in done.stdout, done.stdout
    assert "changed=0" in done.stdout
    pools = load_script("plugins/filter/pools.py")
    assert pools.pool_list(None, {"tasks": {}}, "default", 9810, {})[0]["tasks"] == {}  # no examples slipped in


def test_a_tasks_table_from_the_role_keeps_its_limits(tmp_path: Path) -> None:
    """concurrency and rate in a task's table reach the pool as written (the template passes a table's keys)."""
    import jinja2

    template = (ROLE / "templates/pool.toml.j2").read_text()
    section = template[template.index("[tasks]"):template.index("[metrics]")]
    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters["to_json"] = json.dumps
    tasks = {"report": {"call": "reports:build", "concurrency": 2, "rate": "100/m"}, "echo": "tasks:echo"}
    rendered = environment.from_string(section).render(pool={"tasks": tasks})
    path = tmp_path / "pool.toml"
    path.write_text(f'[control]\nredis_url = "redis://127.0.0.1:1/0"\n{rendered}')
    spec = configuration.load(path=path).tasks["report"]
    assert (spec.concurrency, spec.rate) == (2, "100/m")


def test_the_roles_schedules_reach_the_pool_as_written(tmp_path: Path) -> None:
    """gearman_workers_schedules renders as [schedules]; the pool reads back every key."""
    import jinja2

    template = (ROLE / "templates/pool.toml.j2").read_text()
    section = template[template.index("{% if pool.schedules %}"):template.index("[metrics]")]
    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters["to_json"] = json.dumps
    schedules = {"nightly-report": {"task": "nightly_report", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
                                    "payload": 'say "hi"\n', "catch_up": "once", "priority": "high"},
                 "heartbeat": {"task": "echo", "every": 30}}
    rendered = environment.from_string(section).render(pool={"schedules": schedules})
    path = tmp_path / "pool.toml"
    path.write_text(f'[control]\nredis_url = "redis://127.0.0.1:1/0"\n[tasks]\necho = "tasks:echo"\n{rendered}')
    loaded = configuration.load(path=path).schedules
    assert {name: schedule.definition() for name, schedule in loaded.items()} == schedules
    assert environment.from_string(section).render(pool={"schedules": {}}).strip() == ""


def test_the_roles_hooks_reach_the_pool_as_written(tmp_path: Path) -> None:
    import jinja2

    template = (ROLE / "templates/pool.toml.j2").read_text()
    section = template[template.index("{% if pool.hooks %}"):template.index("{% if pool.schedules %}")]
    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters["to_json"] = json.dumps
    rendered = environment.from_string(section).render(
        pool={"hooks": {"post_fork": "tracing:post_fork", "child_exit": "tracing:child_exit", "exit_timeout": 2}})
    path = tmp_path / "pool.toml"
    path.write_text(f'[tasks]\necho = "tasks:echo"\n{rendered}')
    loaded = configuration.load(path=path)
    assert (loaded.hook_post_fork, loaded.hook_child_exit, loaded.hook_exit_timeout) == (
        "tracing:post_fork", "tracing:child_exit", 2.0)


def test_the_queue_limit_script_makes_gearmand_refuse_a_flood_at_once(gearmand: Gearmand, tmp_path: Path) -> None:
    """roles/gearmand's maxqueue script, as ExecStartPost runs it after a start of gearmand: a submission
    past the limit is refused (QUEUE_ERROR) instead of queued."""
    import jinja2

    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters["comment"] = lambda text: f"# {text}"
    script = tmp_path / "maxqueue"
    script.write_text(environment.from_string((ROOT / "roles/gearmand/templates/maxqueue.sh.j2").read_text()).render(
        ansible_managed="test", gearmand_maxqueue={"flood": 3, "other": 1000}, _gearmand_admin_host="127.0.0.1",
        gearmand_port=gearmand.port))
    applied = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert applied.returncode == 0 and "2 queue limit(s) applied" in applied.stdout, applied
    handles = [submit_background_raw("127.0.0.1", gearmand.port, b"flood", f"{n}".encode()) for n in range(5)]
    assert handles[:3] == [b"JOB_CREATED"] * 3 and handles[3:] == [b"ERROR QUEUE_ERROR"] * 2
    assert gearmand.status()["flood"][0] == 3


def test_the_role_takes_command_tasks_and_refuses_a_command_that_is_no_list(tmp_path: Path) -> None:
    """The preflight (tagged always) alone: nothing else runs with a tag no task has."""
    taken = _run_role(tmp_path, "gearman_workers", "gearman_workers_servers=['127.0.0.1:1']",
                      '{"gearman_workers_tasks": {"upper": {"command": ["tr", "a-z", "A-Z"]}, "echo": "tasks:echo"}}',
                      tags="preflight_only")
    assert taken.returncode == 0 and "failed=0" in taken.stdout, taken.stdout[-3000:]
    refused = _run_role(tmp_path, "gearman_workers", "gearman_workers_servers=['127.0.0.1:1']",
                        '{"gearman_workers_tasks": {"upper": {"command": "tr a-z A-Z"}}}', tags="preflight_only")
    assert refused.returncode != 0 and "(wrong: upper)" in refused.stdout, refused.stdout[-3000:]
