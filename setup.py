"""Build step that puts the files mail-bridge ships into the wheel; the metadata stays in setup.cfg.

The hooks, the Dovecot and Postfix snippets, the systemd units, the FerretDB script, the API
document and the built web client live at the top of the checkout, outside the `bridge` package.
`build_py` copies them into the build's `bridge/share/` (the web client from `web/dist` to
`bridge/share/web`), where bridge/resources.py finds them once installed. An editable install
copies nothing: bridge/resources.py then reads the checkout itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

HERE = Path(__file__).resolve().parent
# Kept in step with bridge/resources.py SHIPPED (tests/test_wheel.py asks the installed package for each).
SHIPPED = (
    "hooks",
    "dovecot-conf",
    "postfix-conf",
    "deploy/systemd",
    "scripts/install-ferretdb.sh",
    "docs/openapi.json",
)
WEB_BUILD = HERE / "web" / "dist"
# Never shipped: caches and anything a tool leaves beside the sources.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules", ".*")


def ensure_web_client() -> Path:
    """web/dist, built here with npm when it is missing and npm is at hand (as `make web` builds it)."""
    if (WEB_BUILD / "index.html").is_file():
        return WEB_BUILD
    npm = shutil.which("npm")
    if npm is None:
        raise FileError("mail-bridge: no built web client in web/dist and no npm to build it: run `make web` first")
    for args in ([npm, "ci", "--no-audit", "--no-fund"], [npm, "run", "build"]):
        done = subprocess.run(args, cwd=HERE / "web", check=False)
        if done.returncode != 0:
            raise FileError(f"mail-bridge: `{' '.join(args[1:])}` in web/ failed: run `make web` and read its output")
    if not (WEB_BUILD / "index.html").is_file():
        raise FileError("mail-bridge: the web build wrote no web/dist/index.html: run `make web` first")
    return WEB_BUILD


class BuildWithShare(build_py):
    """build_py, plus bridge/share/ in the build directory (never in the source tree)."""

    def run(self) -> None:
        if self.editable_mode:  # the checkout's own files are used in place
            super().run()
            return
        web_client = ensure_web_client()  # first: a missing web client fails the build before any work
        super().run()
        share = Path(self.build_lib) / "bridge" / "share"
        # From scratch each time: a file removed from the checkout must not live on in build/.
        shutil.rmtree(share, ignore_errors=True)
        for relative in SHIPPED:
            source, target = HERE / relative, share / relative
            if source.is_dir():
                shutil.copytree(source, target, ignore=IGNORED)
            elif source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            else:
                raise FileError(f"mail-bridge: {relative} is missing from the checkout")
        shutil.copytree(web_client, share / "web", ignore=IGNORED)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        share = Path(self.build_lib) / "bridge" / "share"
        if not self.editable_mode and share.is_dir():
            outputs += [str(path) for path in sorted(share.rglob("*")) if path.is_file()]
        return outputs


setup(cmdclass={"build_py": BuildWithShare})
