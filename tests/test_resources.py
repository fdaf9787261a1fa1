"""bridge.resources in a checkout: the top-level files, a clear error for anything else.

(The installed side, bridge/share inside a wheel, is tests/test_wheel.py's.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import resources
from bridge.resources import SHIPPED, MissingResource, shipped, web_client_dir
from bridge.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def test_a_checkout_uses_its_top_level_files() -> None:
    assert not (REPO / "bridge" / "share").exists()  # setup.py writes it into the build only
    assert resources.root() == REPO
    for name in SHIPPED:
        assert shipped(name) == REPO / name
    assert shipped("hooks/mail-bridge-push.lua") == REPO / "hooks" / "mail-bridge-push.lua"
    assert web_client_dir() == REPO / "web" / "dist"


def test_the_web_client_default_is_absolute_and_still_overridable(tmp_path: Path) -> None:
    env = {"BRIDGE_JWT_SECRET": "x" * 40, "BRIDGE_IMAP_MASTER_USER": "bridge", "BRIDGE_IMAP_MASTER_PASSWORD": "pw"}
    assert Settings.from_env(env).web_dir == web_client_dir()
    assert Settings().web_dir.is_absolute()
    assert Settings.from_env({**env, "BRIDGE_WEB_DIR": str(tmp_path)}).web_dir == tmp_path


@pytest.mark.parametrize("name", ["setup.cfg", "docs/benchmarks.md", "hooks/../setup.cfg", "web/dist/index.html"])
def test_what_is_not_shipped_is_refused_by_name(name: str) -> None:
    with pytest.raises(MissingResource, match="is not one of the files mail-bridge ships"):
        shipped(name)


def test_a_missing_file_is_named() -> None:
    with pytest.raises(MissingResource, match=r"hooks/no-such-hook\.lua is missing"):
        shipped("hooks/no-such-hook.lua")


def test_an_installed_package_uses_its_share_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    share = tmp_path / "bridge" / "share"
    (share / "hooks").mkdir(parents=True)
    (share / "hooks" / "mail-bridge-push.lua").write_text("-- hook")
    monkeypatch.setattr(resources, "INSTALLED", share)
    assert shipped("hooks/mail-bridge-push.lua") == share / "hooks" / "mail-bridge-push.lua"
    assert web_client_dir() == share / "web"
    with pytest.raises(MissingResource, match="reinstall mail-bridge"):
        shipped("docs/openapi.json")
