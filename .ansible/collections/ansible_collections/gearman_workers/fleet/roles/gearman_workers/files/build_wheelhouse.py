#!/usr/bin/env python3
"""Build the wheelhouse a worker host installs from, on the controller.

Worker hosts never reach a package index: everything they install comes
from here. The project is a released wheel (--release, downloaded) or
this checkout built as one (--project; reproducibly: the same sources
give the same bytes), and its pinned requirements and the task code's are
downloaded as wheels for the hosts' Python, glibc and architecture, which
need not be the controller's. A lock file lists every wheel with its
SHA-256, so that the host's pip installs exactly these files and nothing
else (--no-index --require-hashes). The project's own requirements are
downloaded in pip's hash-checking mode against requirements.txt, and the
lock is checked against it once more: a wheel swapped on the way, or in
the house, is refused.

The wheelhouse directory is replaced only when a wheel was added, removed
or changed, and is never seen half-built; when nothing it is made from
changed (OUT.inputs records that), nothing is rebuilt. Prints one line of JSON:
{"changed": bool, "wheels": N, "lock": SHA256 of the lock file}.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a controller without packaging still has pip's copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

LOCK = "requirements.lock"
ZIP_EPOCH = "315532800"  # 1980-01-01: wheels carry no build time, so a rebuild is byte for byte the same


def platforms(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a host with this glibc can load, newest first
    (pip does not widen a given --platform by itself)."""
    major, minor = (int(part) for part in glibc.split(".")[:2])
    if major != 2:
        raise SystemExit(f"build_wheelhouse: unexpected glibc version {glibc!r}")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"build_wheelhouse: {' '.join(command[3:6])} failed:\n{done.stdout}{done.stderr}")


def build(args: argparse.Namespace, into: Path) -> None:
    target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", args.python_version,
              "--abi", "cp" + "".join(args.python_version.split(".")[:2])]
    for tag in platforms(args.glibc, args.arch):
        target += ["--platform", tag]
    if args.project is not None:
        pip("wheel", "--no-deps", "--wheel-dir", str(into), str(args.project),
            env=os.environ | {"SOURCE_DATE_EPOCH": ZIP_EPOCH})
    else:
        pip("download", "--no-deps", "--dest", str(into), *target, *index_options(args.index), args.release)
    for requirement in args.requirement:  # the project's, locked: pip checks every file against its hashes
        pip("download", "--dest", str(into), *target, "--require-hashes", "-r", str(requirement))
    if args.package:  # the task code's, as the operator gave them
        pip("download", "--dest", str(into), *target, *args.package)
    # pip evaluates environment markers against the controller's Python, not
    # the target's (redis needs async-timeout below Python 3.11.3, say):
    # fetch what the target's markers add, until nothing is missing.
    environment = target_environment(args.python_version, args.arch)
    while missing := sorted(missing_requirements(into, environment)):
        pip("download", "--no-deps", "--dest", str(into), *target, *missing)


def index_options(index: str | None) -> list[str]:
    """Where the release comes from: an index URL, or a directory of wheels."""
    if not index:
        return []
    return ["--index-url", index] if "://" in index else ["--no-index", "--find-links", index]


def target_environment(python_version: str, arch: str) -> dict[str, str]:
    environment = default_environment()
    environment.update(python_version=".".join(python_version.split(".")[:2]), python_full_version=python_version,
                       implementation_version=python_version, implementation_name="cpython",
                       platform_python_implementation="CPython", platform_machine=arch, sys_platform="linux",
                       platform_system="Linux", os_name="posix")
    return environment


def missing_requirements(house: Path, environment: dict[str, str]) -> set[str]:
    """Requirements of the wheels in HOUSE that apply on the target and
    that no wheel in HOUSE provides."""
    present = {canonicalize_name(wheel.name.split("-")[0]) for wheel in house.glob("*.whl")}
    missing = set()
    for wheel in house.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = email.parser.Parser().parsestr(archive.read(name).decode())
        for line in metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            applies = requirement.marker is None or requirement.marker.evaluate(environment | {"extra": ""})
            if applies and canonicalize_name(requirement.name) not in present:
                missing.add(str(requirement).split(";")[0].strip())
    return missing


def locked_hashes(requirement_files: list[Path]) -> dict[str, set[str]]:
    """Name -> the SHA-256s a hashed requirements file allows for it."""
    allowed: dict[str, set[str]] = {}
    for path in requirement_files:
        name = None
        for line in path.read_text().replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if "==" in words[0]:
                name = canonicalize_name(words[0].split("==")[0])
            for word in words:
                if word.startswith("--hash=sha256:") and name is not None:
                    allowed.setdefault(name, set()).add(word.removeprefix("--hash=sha256:"))
    return allowed


def check_lock(house: Path, allowed: dict[str, set[str]]) -> None:
    """Every wheel of a locked requirement is one of the files its lock
    allows: a wheel swapped in the house after the download is refused."""
    for wheel in sorted(house.glob("*.whl")):
        name = canonicalize_name(wheel.name.split("-")[0])
        if name in allowed and hashlib.sha256(wheel.read_bytes()).hexdigest() not in allowed[name]:
            raise SystemExit(f"build_wheelhouse: {wheel.name} is not a file requirements.txt allows "
                             f"(its SHA-256 is none of the {len(allowed[name])} listed for {name})")


def write_lock(house: Path) -> None:
    lines = []
    for wheel in sorted(house.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} --hash=sha256:{digest}\n")
    text = "".join(lines)
    (house / LOCK).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=Path, help="the project's checkout, built into a wheel")
    source.add_argument("--release", help="the released project to download, e.g. gearman-workers==0.2.0")
    parser.add_argument("--index", help="where --release comes from: an index URL or a directory of wheels")
    parser.add_argument("--out", type=Path, required=True, help="the wheelhouse directory")
    parser.add_argument("--python-version", required=True, help="the hosts' Python, e.g. 3.11.2")
    parser.add_argument("--glibc", required=True, help="the hosts' glibc, e.g. 2.36")
    parser.add_argument("--arch", required=True, help="the hosts' machine, e.g. x86_64")
    parser.add_argument("--requirement", type=Path, action="append", default=[], help="a requirements file")
    parser.add_argument("--package", action="append", default=[], help="a requirement (the task code's)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stamp = args.out.with_name(args.out.name + ".inputs")
    inputs = fingerprint(args)
    if (args.out / LOCK).exists() and stamp.exists() and stamp.read_text() == inputs:
        report(False, args.out)  # same sources, requirements and target: the same wheels
        return 0
    fresh = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        build(args, fresh)
        check_lock(fresh, locked_hashes(args.requirement))
        write_lock(fresh)
        old = args.out / LOCK
        changed = not old.exists() or old.read_text() != (fresh / LOCK).read_text()
        if changed:
            retired = args.out.with_name(f".{args.out.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            if args.out.exists():
                args.out.rename(retired)
            fresh.rename(args.out)
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    stamp.write_text(inputs)
    report(changed, args.out)
    return 0


def fingerprint(args: argparse.Namespace) -> str:
    """What the wheelhouse is made from: the project's files, the
    requirements and the target. (A requirement that is not pinned is
    looked up again only when one of these changes.)"""
    digest = hashlib.sha256(json.dumps([args.python_version, args.glibc, args.arch, args.package, args.release,
                                        args.index]).encode())
    root = args.project or Path("/")
    sources = [*args.requirement]
    if args.project is not None:
        sources += [root / "pyproject.toml", root / "README.md",
                    *sorted(path for path in (root / "lib").rglob("*")
                            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path))]
    for path in sources:
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest() + "\n"


def report(changed: bool, house: Path) -> None:
    lock = hashlib.sha256((house / LOCK).read_bytes()).hexdigest()
    print(json.dumps({"changed": changed, "wheels": len(list(house.glob("*.whl"))), "lock": lock}))


if __name__ == "__main__":
    sys.exit(main())
