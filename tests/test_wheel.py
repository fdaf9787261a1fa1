"""The wheel, installed outside the checkout, carries everything mail-bridge ships and runs from it.

Built with `pip wheel` from the checkout (as `make dist` builds it) and installed with its
dependencies into a fresh virtualenv in a scratch directory; every command runs from a directory
outside the checkout, with no PYTHONPATH. `--help` lists the commands; `install` against scratch
copies of Debian's stock /etc/dovecot and /etc/postfix writes the hooks and snippets that came inside
the wheel; `serve` against the session's stack answers /health and serves the wheel's web client
at "/", then stops on SIGTERM. Nothing in the installed package points back into the checkout.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.resources import SHIPPED
from bridge.stack.launcher import Stack, StackInfo
from tests.common import free_port
from tests.waiting import until
from tests.wheel_install import REPO, WAIT_S, Installed, clean_env, run

# Building and installing with dependencies (from pip's cache once it has them) takes most of it.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

def test_the_installed_package_is_complete_and_self_contained(installed: Installed) -> None:
    package = installed.package
    assert package.is_relative_to(installed.venv) and (package / "stack" / "__init__.py").is_file()
    assert Path(installed.facts["root"]) == package / "share"
    assert Path(installed.facts["web"]) == Path(installed.facts["settings_web_dir"]) == package / "share" / "web"
    assert (package / "share" / "web" / "index.html").read_bytes() == (
        REPO / "web" / "dist" / "index.html"
    ).read_bytes()
    for name in SHIPPED:
        assert Path(installed.facts[name]) == package / "share" / name
    assert (package / "share" / "hooks" / "mail-bridge-push.lua").read_bytes() == (
        REPO / "hooks" / "mail-bridge-push.lua"
    ).read_bytes()
    assert not (package / "share" / "web" / "node_modules").exists()
    # Nothing that would reach the checkout: no link, no path file, no mention of it in any file.
    site = package.parent
    marker = str(REPO).encode() + b"/"
    suspects = [*package.rglob("*"), *site.glob("*.pth"), *site.glob("mail_bridge-*.dist-info/*")]
    assert [p for p in suspects if p.is_symlink()] == []
    assert [p for p in suspects if p.is_file() and marker in p.read_bytes()] == []
    assert not any(site.glob("__editable__*"))


def test_help_lists_the_commands(installed: Installed) -> None:
    shown = run([installed.command("mail-bridge"), "--help"], installed.outside)
    assert shown.returncode == 0, shown.stderr
    for command in ("serve", "filter", "stack", "install"):
        assert command in shown.stdout


@pytest.fixture
def stock(tmp_path: Path) -> Path:
    """Scratch copies of Debian's stock configs, as tests/test_install.py makes them."""
    shutil.copytree("/etc/dovecot", tmp_path / "dovecot", symlinks=True)
    shutil.copytree("/etc/postfix", tmp_path / "postfix", symlinks=True)
    if not (tmp_path / "postfix" / "main.cf").exists():
        shutil.copy("/usr/share/postfix/main.cf.debian", tmp_path / "postfix" / "main.cf")
    return tmp_path


def test_install_writes_the_hooks_and_snippets_from_inside_the_wheel(installed: Installed, stock: Path) -> None:
    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            [
                installed.command("mail-bridge"),
                "install",
                f"--dovecot-dir={stock / 'dovecot'}",
                f"--postfix-dir={stock / 'postfix'}",
                f"--hook-dir={stock / 'lib'}",
                f"--spool-dir={stock / 'spool'}",
                f"--env-file={stock / 'etc' / 'mail-bridge.env'}",
                f"--state-file={stock / 'state' / 'install.json'}",
                "--mail-user=mail",
                f"--systemd-dir={stock / 'systemd'}",
                "--mongodb-url=mongodb://127.0.0.1:27017/",
                "--no-reload",
                *extra,
            ],
            installed.outside,
        )

    missing = install("--check")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "master.cf: mail-bridge/unix is missing" in missing.stdout
    done = install("--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    checked = install("--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().splitlines()[-1] == "mail-bridge is installed: every item in place."
    share = installed.package / "share"
    for name in ("mail-bridge-push.lua", "mail-bridge-dedupe.sieve"):
        assert (stock / "lib" / name).read_bytes() == (share / "hooks" / name).read_bytes()
    conf = (stock / "dovecot" / "conf.d" / "90-mail-bridge.conf").read_text()
    assert f"lua:file={stock / 'lib' / 'mail-bridge-push.luac'}" in conf
    assert (stock / "lib" / "mail-bridge-push.luac").read_bytes().startswith(b"\x1bLua")


@pytest.fixture
def served(
    installed: Installed, stack: StackInfo, stack_launcher: Stack, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`mail-bridge serve` from the venv, configured as the stack's own bridge but for its own port,
    consumer name and spool (and no content filter)."""
    base = stack_launcher.service("bridge").env
    assert base is not None
    port = free_port()
    env = clean_env(base)
    env.update(
        {
            "BRIDGE_HTTP_PORT": str(port),
            "BRIDGE_FILTER_PORT": "0",
            "BRIDGE_CONSUMER_NAME": f"wheel-{port}",
            "BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [installed.command("mail-bridge"), "serve"], cwd=installed.outside, env=env, stdout=out, stderr=out
        )
    try:
        yield f"http://{env['BRIDGE_HOST']}:{port}", process, log
    finally:
        if process.poll() is None:  # only when the test failed before its own SIGTERM
            process.kill()
            process.wait(timeout=WAIT_S)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_serve_answers_health_and_serves_the_web_client_from_the_wheel(
    served: tuple[str, subprocess.Popen[bytes], Path], installed: Installed
) -> None:
    url, process, log = served

    def healthy() -> bool:
        assert process.poll() is None, f"serve exited with {process.returncode}: {log.read_text()[-3000:]}"
        try:
            return get(url + "/health")[0] == 200
        except OSError:
            return False  # not listening yet

    until("the installed bridge answers /health", healthy, WAIT_S)
    status, headers, body = get(url + "/")
    assert status == 200
    assert body == (installed.package / "share" / "web" / "index.html").read_bytes()
    assert "Content-Security-Policy" in headers
    status, _, body = get(url + "/api/docs")
    assert (status, body) == (200, (installed.package / "share" / "docs" / "openapi.json").read_bytes())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "serving the API only" not in text and "Traceback" not in text, text[-3000:]
