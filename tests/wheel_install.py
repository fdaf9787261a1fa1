"""The wheel as a mail admin installs it: built from the checkout as `make dist` builds it, installed
with its dependencies into a fresh virtualenv outside the checkout, once per session.

`installed` (a fixture, registered for the whole suite by conftest's pytest_plugins) gives the venv,
the installed package's directory, a working directory outside the checkout, and the paths the
installed package resolves; `run` and `clean_env` run its commands with nothing that could make its
Python import the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 60.0
INSTALL_S = 300.0
# What could make the venv's Python import the checkout, or name another environment.
FOREIGN = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "BRIDGE_WEB_DIR")


@dataclass(frozen=True)
class Installed:
    venv: Path
    package: Path  # the venv's bridge/ directory
    outside: Path  # a working directory outside the checkout
    facts: dict[str, str]  # paths as the installed package resolves them

    def command(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in FOREIGN:
        env.pop(name, None)
    return env


def run(args: list[str], cwd: Path, timeout: float = WAIT_S, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


# One short script run by the installed Python: where it finds its package and what it ships.
FACTS = """
import json, bridge, bridge.resources as r, bridge.settings as s
facts = {"package": bridge.__file__, "root": str(r.root()), "web": str(r.web_client_dir()),
         "settings_web_dir": str(s.Settings().web_dir)}
facts.update({name: str(r.shipped(name)) for name in r.SHIPPED})
print(json.dumps(facts))
"""


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    scratch = tmp_path_factory.mktemp("wheel")
    assert not scratch.is_relative_to(REPO)
    wheels, venv, outside = scratch / "wheels", scratch / "venv", scratch / "cwd"
    outside.mkdir()
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], REPO, INSTALL_S
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("mail_bridge-*.whl")
    made = run([sys.executable, "-m", "venv", str(venv)], outside)
    assert made.returncode == 0, made.stderr
    pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], outside, INSTALL_S)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    asked = run([str(venv / "bin" / "python"), "-c", FACTS], outside)
    assert asked.returncode == 0, asked.stderr
    facts: dict[str, str] = json.loads(asked.stdout)
    return Installed(venv, Path(facts["package"]).parent, outside, facts)


