"""The roles as Ansible users install roles (issue 27, point 13): the
collection builds, installs into a playbook repository of the user's own,
and its roles run from there with their filters, lookups and dependencies;
the pool role installs a released package, this checkout only when asked."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from gearman_workers import __version__
from helpers import ROOT

BIN = Path(sys.executable).parent


def _ansible(tool: str, *args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"ANSIBLE_HOME": str(home), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "False",
                        "ANSIBLE_COLLECTIONS_PATH": str(home / "collections")}
    env.pop("ANSIBLE_ROLES_PATH", None)
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_the_collection_builds_installs_and_runs_from_a_playbook_repository_of_its_own(tmp_path: Path) -> None:
    home, repo = tmp_path / "ansible", tmp_path / "my-playbooks"
    repo.mkdir()
    built = _ansible("ansible-galaxy", "collection", "build", str(ROOT), "--output-path", str(tmp_path),
                     cwd=tmp_path, home=home)
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = tmp_path / f"gearman_workers-fleet-{__version__}.tar.gz"
    installed = _ansible("ansible-galaxy", "collection", "install", str(tarball), "-p", str(home / "collections"),
                         cwd=repo, home=home)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    (repo / "site.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  roles:\n"
        "    - role: gearman_workers.fleet.gearman_workers\n      vars: {gearman_workers_servers: ['127.0.0.1:1']}\n")
    done = _ansible("ansible-playbook", "-i", "localhost,", "-c", "local", "site.yml", cwd=repo, home=home)
    # The role, its gw_common dependency and their filters load from the
    # collection; its preflight then refuses a pool without tasks, changing nothing.
    assert "pool(s) default name no tasks" in done.stdout, done.stdout + done.stderr
    assert "changed=0" in done.stdout
    syntax = repo / "fleet.yml"
    syntax.write_text("".join(f"- hosts: {group}\n  roles: [gearman_workers.fleet.{role}]\n"
                              for group, role in (("gearmand", "gearmand"), ("redis", "redis"),
                                                  ("workers", "gearman_workers"))))
    checked = _ansible("ansible-playbook", "--syntax-check", "-i", "localhost,", "fleet.yml", cwd=repo, home=home)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_pool_role_installs_the_release_by_default(tmp_path: Path) -> None:
    """build_wheelhouse --release, as the role runs it by default, from a
    directory of wheels standing for the index: the released wheel, not
    this checkout, with the locked requirements."""
    index, house = tmp_path / "index", tmp_path / "house"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(index), str(ROOT)],
                   check=True, capture_output=True, env=os.environ | {"SOURCE_DATE_EPOCH": "315532800"})
    glibc = platform.libc_ver()[1]
    python = ".".join(map(str, sys.version_info[:3]))
    done = subprocess.run([sys.executable, str(ROOT / "roles/gearman_workers/files/build_wheelhouse.py"),
                           "--release", f"gearman-workers=={__version__}", "--index", str(index), "--out", str(house),
                           "--python-version", python, "--glibc", glibc, "--arch", platform.machine(),
                           "--requirement", str(ROOT / "requirements.txt")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["changed"] is True
    lock = (house / "requirements.lock").read_text()
    assert f"gearman_workers=={__version__} --hash=sha256:" in lock and "redis==" in lock
