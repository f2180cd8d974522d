"""constraints.txt pins everything `make install` puts into the venv, inside pyproject's ranges.

A clean clone installs the pinned set, so CI runs on what was last seen to pass rather than
on whatever was released since. These checks keep the pins whole when pyproject.toml changes:
a new requirement (or one a pinned package newly pulls in) without a pin would float again.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and "," not in version, f"not an exact pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in pinned, f"pinned twice: {name}"
        pinned[key] = version
    return pinned


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    return [Requirement(r) for r in wanted]


def build_requirements() -> list[Requirement]:
    """What pip installs into its isolated environment to build the project (setuptools and
    wheel): not in the venv, pinned all the same through `--build-constraint`."""
    return [Requirement(r) for r in _pyproject()["build-system"]["requires"]]


def _applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    marker = requirement.marker
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in (*extras, ""))


def installed_closure() -> dict[str, set[str]]:
    """Every distribution the project's requirements pull in, as installed here, with the
    extras asked of it; markers are evaluated for this interpreter and platform."""
    found: dict[str, set[str]] = {}
    todo = [r for r in project_requirements() if _applies(r, ())]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in found and extras <= found[name]:
            continue
        found.setdefault(name, set()).update(extras)
        for text in metadata.requires(requirement.name) or []:
            needed = Requirement(text)
            if _applies(needed, found[name]):
                todo.append(needed)
    return found


def test_every_requirement_of_pyproject_is_pinned_inside_its_range() -> None:
    pinned = pins()
    for requirement in project_requirements() + build_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} has no pin in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{requirement.name}=={pinned[name]} is outside pyproject.toml's {requirement}"
        )


def test_every_package_the_project_pulls_in_is_pinned_and_installed_at_its_pin() -> None:
    pinned = pins()
    closure = installed_closure()
    assert "eventsourcing" in closure and "markdown-it-py" in closure  # direct and transitive
    unpinned = sorted(set(closure) - set(pinned))
    assert unpinned == [], f"pulled in but not pinned in constraints.txt: {unpinned}"
    stale = {
        name: (metadata.version(name), pinned[name])
        for name in closure
        if metadata.version(name) != pinned[name]
    }
    assert stale == {}, f"installed, then pinned (run make install): {stale}"
    assert metadata.version("pip") == pinned["pip"]


def test_nothing_is_pinned_that_the_project_does_not_pull_in() -> None:
    # A pin left behind by a dropped requirement would be installed by nothing, but it would
    # read as part of the tested set; `make constraints` never writes one.
    built_with = {canonicalize_name(r.name) for r in build_requirements()}
    extra = sorted(set(pins()) - set(installed_closure()) - built_with - {"pip"})
    assert extra == [], f"pinned but pulled in by nothing: {extra}"
