"""The role's files, without a host: the units under systemd/ are the
role's templates rendered with the role's defaults (one source), and the
role's pool template gives a configuration the pool accepts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gearman_workers import config as configuration
from helpers import ROOT

ROLE = ROOT / "roles/gearman_workers"


def _plugin(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


units = _plugin("scripts/render_units.py")


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


def test_a_wrong_queue_type_fails_before_any_task(tmp_path: Path) -> None:
    """The gearmand role, run for real against this machine with a wrong
    gearmand_queue_type, stops at its argument check: nothing is run."""
    playbook = tmp_path / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [gearmand]\n")
    env = os.environ | {"ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_HOME": str(tmp_path / "ansible"),
                        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "False"}
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(playbook), "-e", "gearmand_queue_type=mysql"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode != 0
    assert "gearmand_queue_type must be one of: builtin, libsqlite3, redis, got: mysql" in done.stdout, done.stdout
    assert "ok=0" in done.stdout and "changed=0" in done.stdout


def test_access_sources_are_the_inventory_hosts_and_the_extras_by_family() -> None:
    access = _plugin("roles/gw_common/filter_plugins/access.py")
    hosts = [{"inventory_hostname": "w1", "ansible_host": "10.0.0.21"}, {"inventory_hostname": "127.0.0.9"},
             {"inventory_hostname": "w2", "ansible_host": "10.0.0.22"}]
    assert access.access_sources(hosts, ["10.0.0.20/31", "fd00::1"]) == {
        "ipv4": ["10.0.0.20/31", "10.0.0.22/32", "127.0.0.9/32"], "ipv6": ["fd00::1/128"]}
    assert "127.0.0.1/32" in access.access_sources([], ["localhost"])["ipv4"]  # a name: what it resolves to
    with pytest.raises(access.AccessError, match=r"cannot allow 'no such host\.invalid'"):
        access.access_sources([], ["no such host.invalid"])


def test_a_pool_user_reads_only_its_scopes_and_writes_only_expiring_keys_of_its_host() -> None:
    acl = _plugin("roles/redis/filter_plugins/acl.py")
    rules = acl.pool_acl_rules("w1", "gw", "ctl").split()
    assert rules[:3] == ["resetchannels", "&ctl", "resetkeys"]
    assert [r for r in rules if r.startswith("%R~")] == [
        "%R~gw:exit:all", "%R~gw:exit:host:w1", "%R~gw:exit:pool:*", "%R~gw:exit:host:w1:pool:*",
        "%R~gw:data:all", "%R~gw:data:host:w1", "%R~gw:data:pool:*", "%R~gw:data:host:w1:pool:*"]
    assert [r for r in rules if r.startswith("~")] == ["~gw:pool:w1:*", "~gw:nonce:w1:*"]
    assert "+setex" in rules and "+set" not in rules and "+hset" not in rules
    with pytest.raises(ValueError, match="cannot be a pool's"):
        acl.pool_acl_rules("w*", "gw", "ctl")
