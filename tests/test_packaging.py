"""The version ranges setup.cfg declares are the ones tested.

``make test`` runs on the newest releases (``constraints.txt``); ``make test-oldest`` installs the
floor of every range together (``constraints-oldest.txt``, on the Python that ``python_requires``
names) and runs the user-path tests there. This test keeps the two files in step, so a floor
cannot be lowered, or a dependency added, without the oldest set testing it."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    assert len(floors) == 1, f"setup.cfg: {req} needs exactly one lower bound (>=) for the oldest-release test"
    return floors[0]


def _pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} must pin one release (==)"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_every_floor_in_setup_cfg_is_the_release_the_oldest_set_installs():
    requires = [Requirement(r) for r in _setup_cfg()["options"]["install_requires"].strip().splitlines()]
    pins = _pins(ROOT / "constraints-oldest.txt")
    floors = {canonicalize_name(r.name): _floor(r) for r in requires}
    assert floors == pins, (
        "setup.cfg's lower bounds and constraints-oldest.txt disagree: change both, then run `make test-oldest`"
    )
    for req in requires:  # and each pin lies inside its whole range (upper bound included)
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req


def test_the_oldest_set_runs_on_the_oldest_python_setup_cfg_admits():
    python_floor = _floor(Requirement("python" + _setup_cfg()["options"]["python_requires"].strip()))
    makefile = (ROOT / "Makefile").read_text()
    found = re.search(r"^OLDEST_PYTHON \?= python(\d+\.\d+)$", makefile, re.M)
    assert found, "Makefile: OLDEST_PYTHON ?= pythonX.Y (the oldest Python of python_requires) is missing"
    assert Version(found.group(1)) == python_floor


def test_the_extras_named_in_errors_are_the_ones_setup_cfg_declares():
    """repan_zoo.extras.EXTRAS (what MissingExtraError tells a user to install) against setup.cfg."""
    from repan_zoo.extras import EXTRAS

    declared = _setup_cfg()["options.extras_require"]
    for extra, modules in EXTRAS.items():
        names = {canonicalize_name(Requirement(r).name) for r in declared[extra].strip().splitlines()}
        assert {canonicalize_name(m) for m in modules} == names, extra
