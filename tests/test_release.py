"""What a release promises outside the code: one version, said in one
place and carried everywhere; one licence, the same in every piece of
metadata; a changelog entry for the version."""

from __future__ import annotations

import tomllib

import yaml

from gearman_workers import __version__
from helpers import ROOT


def test_the_package_takes_its_version_from_the_code_and_declares_mit() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gearman_workers.__version__"}
    assert project["project"]["license"] == "MIT" and project["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_every_role_declares_the_same_licence() -> None:
    for meta in sorted(ROOT.glob("roles/*/meta/main.yml")):
        assert yaml.safe_load(meta.read_text())["galaxy_info"]["license"] == "MIT", meta


def test_the_changelog_says_what_this_version_changed() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {__version__} (" in changelog


def test_the_collection_roles_and_package_share_one_version() -> None:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    defaults = yaml.safe_load((ROOT / "roles/gearman_workers/defaults/main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles/gearman_workers/meta/argument_specs.yml").read_text())
    assert galaxy["version"] == defaults["gearman_workers_version"] == __version__
    assert specs["argument_specs"]["main"]["options"]["gearman_workers_version"]["default"] == __version__
    assert galaxy["license"] == ["MIT"]
