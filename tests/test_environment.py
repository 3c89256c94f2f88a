"""The environment is the lock: what scripts/setup.sh installs is requirements/lock.txt, and the
lock still satisfies setup.cfg (a changed range without a new lock fails here)."""

from __future__ import annotations

import configparser
import re
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
SERVE_LOCK = ROOT / "requirements" / "serve.txt"
SETUP_EXTRAS = ("export", "openvino", "onnxruntime", "serve", "ray", "int8", "demo", "peers",
                "dev")
"""The extras scripts/setup.sh installs (scripts/lock.sh compiles the same)."""
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)", re.MULTILINE)


def pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text())}


def setup_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].split("\n")
    for extra in extras:
        lines += config["options.extras_require"][extra].split("\n")
    return [Requirement(line) for line in lines if line.strip()]


def test_every_pin_has_hashes():
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().strip())
    assert entries and all("--hash=sha256:" in entry for entry in entries)


@pytest.mark.parametrize("lock, extras", [(LOCK, SETUP_EXTRAS), (SERVE_LOCK, ("serve",))])
def test_lock_satisfies_setup_cfg(lock, extras):
    locked = pins(lock)
    for requirement in setup_requirements(extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is in setup.cfg but not in {lock.name}: run scripts/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"{lock.name} pins {name}=={locked[name]}, setup.cfg asks {requirement}"


def test_serve_lock_is_the_tested_versions_and_torch_free():
    serve, tested = pins(SERVE_LOCK), pins(LOCK)
    assert {name: tested.get(name) for name in serve} == serve
    assert "torch" not in serve and "torchvision" not in serve


def test_installed_environment_is_the_lock():
    # the environment's own folders: other sys.path entries (Ray adds its vendored packages)
    # are not what setup.sh installed
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version
                 for dist in metadata.distributions(path=site)}
    installed.pop("reciprocam-ir", None)
    installed.pop("pip", None)  # the venv's own installer, not a dependency of anything
    assert installed == pins(LOCK)
