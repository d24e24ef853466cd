"""The lock: constraints.txt pins every installed package, the README and CI install from it, and
the environment the tests run in is the locked one (so a green suite means the locked versions)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9_.\-]+", name) and version.strip(), f"constraints.txt line {number}: {line!r}"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_dependency_of_hallbench_is_pinned_and_installed_at_its_pin():
    pins = _pins()
    wanted = {"hallbench"}
    seen: set[str] = set()
    # hallbench's own requirements with the dev and train extras, and theirs, transitively.
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        extras = {"dev", "train"} if name == "hallbench" else set()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            markers_hold = requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras or {""})
            if not markers_hold:
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency == "hallbench":
                continue
            assert dependency in pins, f"{dependency} (required by {name}) is not pinned in constraints.txt"
            installed = metadata.version(dependency)
            assert installed == pins[dependency], f"{dependency} {installed} is installed, constraints.txt pins {pins[dependency]}"
            wanted.add(dependency)


def test_the_readme_and_ci_install_from_the_lock():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    installs = [line for line in readme.splitlines() if "pip install" in line and line.startswith("python3 -m venv")]
    assert len(installs) == 2, installs
    assert all("pip install -c constraints.txt " in line for line in installs), installs
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -c constraints.txt "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"' in ci
    pins = _pins()
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")  # the README names these two explicitly
