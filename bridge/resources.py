"""Where the files the product ships are: hooks, config snippets, units, the API document, the web client.

Contract:
- `shipped(relative)` takes a path as it is in the checkout (`hooks/mail-bridge-push.lua`,
  `dovecot-conf/90-mail-bridge.conf`, `docs/openapi.json`, ...) and returns the absolute path of that
  file (or directory) as this installation has it, or raises `MissingResource` naming it.
- `web_client_dir()` returns the absolute directory of the built web client. It is not checked: a
  checkout without `make web` serves the API only (bridge.http_api.add_web_client says so).
- An installed wheel carries them inside the package, in `bridge/share/` under the same relative
  paths (the web client in `bridge/share/web`), copied there by setup.py's build_py. A checkout (an
  editable install, the tests, the stack) has no `bridge/share/` and uses its top-level directories
  (the web client in `web/dist`), so an edit there is seen at once.
Nothing here reads the environment (BRIDGE_WEB_DIR is read by bridge.settings).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from bridge.errors import BridgeError

PACKAGE = Path(__file__).resolve().parent
# setup.py's build_py writes this directory into the wheel only; it is never in a checkout.
INSTALLED = PACKAGE / "share"
CHECKOUT = PACKAGE.parent
# What setup.py copies into bridge/share/: the web client has its own place (web_client_dir).
SHIPPED = (
    "hooks",
    "dovecot-conf",
    "postfix-conf",
    "deploy/systemd",
    "scripts/install-ferretdb.sh",
    "docs/openapi.json",
)


class MissingResource(BridgeError):
    """A file the product ships is not where this installation keeps it (a broken install or checkout)."""


def _installed() -> bool:
    return INSTALLED.is_dir()


def root() -> Path:
    """The directory the relative paths of `shipped` start from."""
    return INSTALLED if _installed() else CHECKOUT


def shipped(relative: str) -> Path:
    """The shipped file or directory at `relative` (a checkout path such as `hooks/mail-bridge-push.lua`)."""
    parts = PurePosixPath(relative).parts
    # Only what is shipped: the wheel carries nothing else, so asking for anything else is a bug
    # that would pass in a checkout and fail once installed.
    if ".." in parts or not any(parts[: len(top)] == top for top in (PurePosixPath(s).parts for s in SHIPPED)):
        raise MissingResource(f"{relative} is not one of the files mail-bridge ships ({', '.join(SHIPPED)})")
    path = root().joinpath(*parts)
    if not path.exists():
        fix = "reinstall mail-bridge" if _installed() else "restore it in the checkout"
        raise MissingResource(f"{relative} is missing: no {path}; {fix}")
    return path


def web_client_dir() -> Path:
    """The built web client's directory (index.html, assets/), whether or not it has been built."""
    return INSTALLED / "web" if _installed() else CHECKOUT / "web" / "dist"
