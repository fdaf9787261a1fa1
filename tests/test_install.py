"""`mail-bridge install` against scratch copies of Debian's stock /etc/dovecot and /etc/postfix.

Debian's postfix package leaves /etc/postfix without a main.cf until it is configured; a configured
system has the one its postinst writes from /usr/share/postfix/main.cf.debian, so the copy gets that.
The round trip: a declined install writes nothing; install (shown as a diff, validated by doveconf
and postfix check); --check finds every item; a second install has nothing to change; uninstall puts
both config dirs back byte for byte; --check then lists what is missing.
"""

from __future__ import annotations

import asyncio
import filecmp
import grp
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.errors import Unavailable
from bridge.settings import Settings, StackSettings
from bridge.stack.launcher import free_ports
from bridge.stack.render import MASTER_USER
from bridge.store import Store

# Debian's stock configs, checked by its doveconf and postfix: the packages must be installed.
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def _same_tree(a: Path, b: Path) -> list[str]:
    """Paths that differ between two trees (missing on one side, or other content)."""
    compared = filecmp.dircmp(a, b)
    found = [str(a / n) for n in compared.left_only + compared.right_only + compared.diff_files + compared.funny_files]
    for sub in compared.common_dirs:
        found += _same_tree(a / sub, b / sub)
    return found


@pytest.fixture
def stock(tmp_path: Path) -> Path:
    shutil.copytree("/etc/dovecot", tmp_path / "dovecot", symlinks=True)
    shutil.copytree("/etc/postfix", tmp_path / "postfix", symlinks=True)
    if not (tmp_path / "postfix" / "main.cf").exists():
        shutil.copy("/usr/share/postfix/main.cf.debian", tmp_path / "postfix" / "main.cf")
    shutil.copytree(tmp_path / "dovecot", tmp_path / "stock-dovecot", symlinks=True)
    shutil.copytree(tmp_path / "postfix", tmp_path / "stock-postfix", symlinks=True)
    return tmp_path


def run(root: Path, *extra: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable,
        "-m",
        "bridge",
        "install",
        f"--dovecot-dir={root / 'dovecot'}",
        f"--postfix-dir={root / 'postfix'}",
        f"--hook-dir={root / 'lib'}",
        f"--spool-dir={root / 'spool'}",
        f"--env-file={root / 'etc' / 'mail-bridge.env'}",
        f"--state-file={root / 'state' / 'install.json'}",
        "--mail-user=mail",
        f"--systemd-dir={root / 'systemd'}",
        "--mongodb-url=mongodb://127.0.0.1:27017/",
        "--no-reload",
        *extra,
    ]
    return subprocess.run(args, input=answer, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def postconf(root: Path, *args: str) -> str:
    return subprocess.run(
        ["postconf", "-c", str(root / "postfix"), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_install_check_and_uninstall_round_trip_on_stock_debian_configs(stock: Path) -> None:
    declined = run(stock, answer="n\n")
    assert declined.returncode == 1 and "Nothing was changed" in declined.stdout
    assert "+content_filter = mail-bridge:[127.0.0.1]:10025" in declined.stdout  # the diff was shown
    assert _same_tree(stock / "postfix", stock / "stock-postfix") == []
    assert _same_tree(stock / "dovecot", stock / "stock-dovecot") == []

    installed = run(stock, answer="y\n")
    assert installed.returncode == 0, installed.stderr
    assert "(holds secrets: not shown)" in installed.stdout
    assert "BRIDGE_JWT_SECRET=" not in installed.stdout and "BRIDGE_IMAP_MASTER_PASSWORD=" not in installed.stdout

    config = subprocess.run(
        ["doveconf", "-c", str(stock / "dovecot" / "dovecot.conf"), "-n"], capture_output=True, text=True, check=True
    ).stdout
    # The hook precompiled for Dovecot's Lua (bridge.hook_bytecode), its source beside it.
    assert f"push_notification_driver = lua:file={stock / 'lib' / 'mail-bridge-push.luac'}" in config
    assert (stock / "lib" / "mail-bridge-push.luac").read_bytes().startswith(b"\x1bLua")
    assert "precompiled (" in installed.stdout
    assert f"mail_bridge_spool_dir = {stock / 'spool'}" in config
    assert postconf(stock, "-h", "content_filter") == "mail-bridge:[127.0.0.1]:10025"
    assert "hopcount_limit=51" in postconf(stock, "-M", "mail-bridge-cleanup/unix")
    assert (stock / "lib" / "mail-bridge-push.lua").read_text() == (REPO / "hooks" / "mail-bridge-push.lua").read_text()
    env = (stock / "etc" / "mail-bridge.env").read_text()
    assert (
        f"BRIDGE_IMAP_MASTER_USER={MASTER_USER}" in env
        and (stock / "etc" / "mail-bridge.env").stat().st_mode & 0o077 == 0
    )
    assert (stock / "spool").stat().st_mode & 0o777 == 0o770

    checked = run(stock, "--check")
    assert (checked.returncode, checked.stdout.strip().splitlines()[-1]) == (
        0,
        "mail-bridge is installed: every item in place.",
    )
    again = run(stock, "--yes")
    assert (again.returncode, again.stdout.strip()) == (0, "mail-bridge is already installed: nothing to change.")
    bytecode = stock / "lib" / "mail-bridge-push.luac"
    made = bytecode.read_bytes()
    bytecode.write_bytes(made[:-8])  # not what this version's source compiles to
    stale = run(stock, "--check")
    assert stale.returncode == 1 and f"differs from this version's: {bytecode}" in stale.stdout
    assert run(stock, "--yes").returncode == 0 and bytecode.read_bytes() == made

    removed = run(stock, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert _same_tree(stock / "postfix", stock / "stock-postfix") == []
    assert _same_tree(stock / "dovecot", stock / "stock-dovecot") == []
    assert not (stock / "lib").exists() and not (stock / "etc").exists() and not (stock / "spool").exists()

    missing = run(stock, "--check")
    assert missing.returncode == 1
    assert (
        "main.cf: content_filter is None" in missing.stdout
        and "master.cf: mail-bridge/unix is missing" in missing.stdout
    )


def test_an_install_that_does_not_validate_writes_nothing(stock: Path) -> None:
    """A broken Dovecot config (here, before we touch it) fails the scratch validation: no change."""
    conf = stock / "dovecot" / "conf.d" / "10-mail.conf"
    conf.write_text(conf.read_text() + "\nno_such_setting_anywhere = 1\n")
    before = conf.read_text()
    failed = run(stock, "--yes")
    assert failed.returncode == 1 and "doveconf" in failed.stderr
    assert conf.read_text() == before
    assert _same_tree(stock / "postfix", stock / "stock-postfix") == []
    assert not (stock / "dovecot" / "conf.d" / "90-mail-bridge.conf").exists()


def test_an_install_through_redis_sentinel_tells_the_hook_and_the_bridge(stock: Path) -> None:
    installed = run(stock, "--yes", "--redis-sentinels=10.0.0.5:26379,10.0.0.6:26380", "--redis-master=mail")
    assert installed.returncode == 0, installed.stderr
    config = subprocess.run(
        ["doveconf", "-c", str(stock / "dovecot" / "dovecot.conf"), "-n"], capture_output=True, text=True, check=True
    ).stdout
    assert "mail_bridge_redis_sentinels = 10.0.0.5:26379 10.0.0.6:26380" in config
    assert "mail_bridge_redis_master = mail" in config
    env = (stock / "etc" / "mail-bridge.env").read_text()
    assert "REDIS_URL=redis+sentinel://10.0.0.5:26379,10.0.0.6:26380/mail/0" in env


def test_an_install_on_redis_cluster_hash_tags_the_stream_for_the_hook_and_the_bridge(stock: Path) -> None:
    installed = run(stock, "--yes", "--redis-cluster=10.0.0.7:7000,10.0.0.8:7000")
    assert installed.returncode == 0, installed.stderr
    config = subprocess.run(
        ["doveconf", "-c", str(stock / "dovecot" / "dovecot.conf"), "-n"], capture_output=True, text=True, check=True
    ).stdout
    assert "mail_bridge_redis_host = 10.0.0.7" in config and "mail_bridge_redis_port = 7000" in config
    assert "mail_bridge_stream = {mail}:dovecot" in config
    env = (stock / "etc" / "mail-bridge.env").read_text()
    assert "REDIS_URL=redis+cluster://10.0.0.7:7000,10.0.0.8:7000" in env and "BRIDGE_STREAM_PREFIX={mail}" in env
    both = run(stock, "--check", "--redis-cluster=10.0.0.7:7000", "--redis-sentinels=10.0.0.5:26379")
    assert both.returncode == 2 and "not both" in both.stderr


def test_a_redis_host_given_by_name_is_explained_and_one_that_does_not_resolve_is_warned_of(stock: Path) -> None:
    # The hook resolves names itself within its bound (tests/test_hook_dns.py); the admin is told so,
    # and warned when the name resolves nowhere (every event would wait in the spool).
    named = run(stock, "--redis-host=localhost", answer="n\n")  # shown, declined: nothing written
    assert "the Redis host 'localhost' is a name" in named.stdout, named.stdout + named.stderr
    unknown = run(stock, "--redis-host=redis.mail-bridge.invalid", answer="n\n")  # RFC 2606: never resolves
    assert "WARNING: the Redis host 'redis.mail-bridge.invalid' does not resolve here" in unknown.stdout, (
        unknown.stdout + unknown.stderr
    )
    by_address = run(stock, "--redis-host=127.0.0.1", answer="n\n")
    assert "the Redis host" not in by_address.stdout


def test_bad_sentinel_addresses_are_refused_before_anything_is_written(stock: Path) -> None:
    refused = run(stock, "--yes", "--redis-sentinels=10.0.0.5:port")
    assert refused.returncode == 2 and "bad sentinel address '10.0.0.5:port'" in refused.stderr
    assert _same_tree(stock / "dovecot", stock / "stock-dovecot") == []


def _ferretdb_program() -> Path:
    """The FerretDB `make setup` built (the same program `make dist` ships)."""
    program = StackSettings.from_env(repo_dir=REPO).ferretdb_bin
    assert program.exists(), f"{program}: run make setup"
    return program


def test_the_units_it_writes_are_valid_and_the_embedded_store_answers(stock: Path, tmp_path: Path) -> None:
    """`--store`: FerretDB installed beside the hooks with a unit of its own; systemd-analyze verify
    on every unit as written (real paths: this venv's mail-bridge, the copied FerretDB, the mail user);
    then the store started exactly as its unit says, on a scratch data dir and port."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed to check the units (Debian: systemd)")
    port = free_ports(1)[0]
    installed = run(stock, "--yes", "--store", f"--ferretdb-bin={_ferretdb_program()}", f"--store-port={port}",
                    "--mongodb-url=")  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Units written, not started" in installed.stdout or "Started:" in installed.stdout
    assert env_of(stock)["MONGODB_URL"] == f"mongodb://127.0.0.1:{port}/"
    assert (stock / "lib" / "ferretdb").read_bytes() == _ferretdb_program().read_bytes()
    units = sorted((stock / "systemd").glob("*.service"))
    assert [u.name for u in units] == [
        "mail-bridge-filter.service", "mail-bridge-store.service", "mail-bridge.service", "mail-bridge@.service"
    ]  # fmt: skip
    for unit in units:
        text = unit.read_text()
        assert re.search(r"@[A-Z_]+@", text) is None and ("User=mail" in text or "DynamicUser=yes" in text)
        # A template is verified as one of its instances.
        (tmp_path / unit.name.replace("@.", "@18081.")).write_text(text)
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.glob("*.service")))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    problems = [line for line in verified.stderr.splitlines() if "mail-bridge" in line]
    assert (verified.returncode, problems) == (0, []), verified.stderr
    assert run(stock, "--check", "--mongodb-url=").returncode == 0  # run() names a MongoDB: unsaid here

    exec_start = next(
        line.split("=", 1)[1] for line in (stock / "systemd" / "mail-bridge-store.service").read_text().splitlines()
        if line.startswith("ExecStart=")
    )  # fmt: skip
    data = tmp_path / "store-data"
    data.mkdir()
    argv = exec_start.replace("/var/lib/mail-bridge-store", str(data)).split()
    store = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        described = asyncio.run(_describe(env_of(stock)["MONGODB_URL"]))
    finally:
        store.terminate()
        store.wait(timeout=10)
    assert described.startswith("FerretDB v"), described
    assert run(stock, "--uninstall").returncode == 0
    assert not (stock / "lib").exists() and not any((stock / "systemd").glob("*.service"))


async def _describe(url: str) -> str:
    store = Store(url, "mailbridge")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                return await store.describe()
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await store.close()


def test_a_store_is_required_and_a_replica_set_url_is_taken_as_given(stock: Path) -> None:
    none = run(stock, "--yes", "--mongodb-url=")
    assert none.returncode == 1 and "--mongodb-url" in none.stderr and "--store" in none.stderr
    url = "mongodb://db1.example.test,db2.example.test,db3.example.test/mailbridge?replicaSet=rs0"
    assert run(stock, "--yes", f"--mongodb-url={url}").returncode == 0
    env = env_of(stock)
    assert env["MONGODB_URL"] == url
    # The bridge accepts the file as it is.
    Settings.from_env(env)


def doveconf(root: Path) -> str:
    return subprocess.run(
        ["doveconf", "-c", str(root / "dovecot" / "dovecot.conf"), "-n"], capture_output=True, text=True, check=True
    ).stdout


def env_of(root: Path) -> dict[str, str]:
    text = (root / "etc" / "mail-bridge.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_dovecot_can_read_the_master_user_file_and_the_env_file_is_complete(stock: Path) -> None:
    assert run(stock, "--yes").returncode == 0
    users = stock / "dovecot" / "mail-bridge-master-users"
    st = users.stat()
    # Dovecot's auth process reads passwd-files as its default_internal_user (dovecot).
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, grp.getgrnam("dovecot").gr_gid, 0o640)
    env = env_of(stock)
    # Every address the bridge needs, from what Dovecot and Postfix say, none of the dev stack's.
    assert env["BRIDGE_IMAP_PORT"] == "143" and env["BRIDGE_IMAP_HOST"] == "127.0.0.1"
    assert env["BRIDGE_SUBMISSION_PORT"] == "587" and env["BRIDGE_HTTP_PORT"] == "18080"
    assert env["MONGODB_URL"].startswith("mongodb://") and env["BRIDGE_FILTER_PORT"] == "10025"
    assert env["BRIDGE_REINJECT_PORT"] == "10026" and env["BRIDGE_SPOOL_DIR"] == str(stock / "spool")
    assert len(env["BRIDGE_JWT_SECRET"]) >= 32 and len(env["BRIDGE_IMAP_MASTER_PASSWORD"]) >= 24


def test_options_are_remembered_by_check_and_a_rerun(stock: Path) -> None:
    first = run(stock, "--yes", "--filter-port=10035", "--reinject-port=10036")
    assert first.returncode == 0, first.stderr
    state_only = [
        sys.executable, "-m", "bridge", "install", f"--state-file={stock / 'state' / 'install.json'}", "--no-reload"
    ]  # fmt: skip
    checked = subprocess.run([*state_only, "--check"], capture_output=True, text=True, cwd=REPO, check=False)
    assert checked.returncode == 0, checked.stdout
    again = subprocess.run([*state_only, "--yes"], capture_output=True, text=True, cwd=REPO, check=False)
    assert again.stdout.strip() == "mail-bridge is already installed: nothing to change.", again.stdout
    assert postconf(stock, "-h", "content_filter") == "mail-bridge:[127.0.0.1]:10035"
    assert postconf(stock, "-M", "127.0.0.1:10026/inet") == ""  # no second re-injection smtpd
    gone = subprocess.run([*state_only, "--uninstall"], capture_output=True, text=True, cwd=REPO, check=False)
    assert gone.returncode == 0, gone.stderr
    assert _same_tree(stock / "postfix", stock / "stock-postfix") == []


ADMIN_SIEVE = 'require ["fileinto"]; if header :contains "X-Spam-Flag" "YES" { fileinto "Junk"; stop; }\n'


def _admin_setup(root: Path) -> None:
    """What a typical virtual-mail admin already has: a spam rule before the users' scripts, an
    amavis content filter with its re-injection on 127.0.0.1:10025, an OX push driver, and Dovecot
    delivering over LMTP through a transport of their own name."""
    (root / "admin.sieve").write_text(ADMIN_SIEVE)
    (root / "dovecot" / "conf.d" / "90-sieve-admin.conf").write_text(
        f"plugin {{\n  sieve_before = {root / 'admin.sieve'}\n  push_notification_driver = ox:url=http://127.0.0.1:1/\n}}\n"
    )
    pf = ["postconf", "-c", str(root / "postfix")]
    subprocess.run([*pf, "-e", "content_filter=amavis:[127.0.0.1]:10024"], check=True)
    subprocess.run([*pf, "-e", "receive_override_options=no_address_mappings,no_milters"], check=True)
    subprocess.run([*pf, "-e", "virtual_transport=dovecot-lmtp:unix:private/dovecot-lmtp"], check=True)
    subprocess.run([*pf, "-M", "amavis/unix=amavis unix - - n - 2 smtp -o smtp_send_xforward_command=yes"], check=True)
    subprocess.run(
        [*pf, "-M", "127.0.0.1:10025/inet=127.0.0.1:10025 inet n - n - - smtpd -o content_filter="], check=True
    )
    subprocess.run([*pf, "-M", "dovecot-lmtp/unix=dovecot-lmtp unix - - n - - lmtp"], check=True)
    shutil.rmtree(root / "stock-dovecot")
    shutil.rmtree(root / "stock-postfix")
    shutil.copytree(root / "dovecot", root / "stock-dovecot", symlinks=True)
    shutil.copytree(root / "postfix", root / "stock-postfix", symlinks=True)


def test_an_existing_content_filter_is_refused_with_the_choices(stock: Path) -> None:
    _admin_setup(stock)
    refused = run(stock, "--yes")
    assert refused.returncode == 1
    assert "content_filter = amavis:[127.0.0.1]:10024" in refused.stderr and "--chain-content-filter" in refused.stderr
    assert _same_tree(stock / "postfix", stock / "stock-postfix") == []
    assert _same_tree(stock / "dovecot", stock / "stock-dovecot") == []


def test_the_admins_own_settings_stay_and_ours_go_beside_them(stock: Path) -> None:
    _admin_setup(stock)
    installed = run(stock, "--yes", "--chain-content-filter")
    assert installed.returncode == 0, installed.stderr
    # The diff names every existing value it touches, and says why.
    assert "content_filter: yours is 'amavis:[127.0.0.1]:10024'" in installed.stdout
    assert "receive_override_options: yours" not in installed.stdout  # it has what we need already
    assert "sieve_before = " + str(stock / "admin.sieve") in installed.stdout
    assert "amavis:[127.0.0.1]:10024 stays in the path" in installed.stdout
    config = doveconf(stock)
    # Pigeonhole runs sieve_before, sieve_before2, ... in order: the admin's first, ours next.
    assert f"sieve_before = {stock / 'admin.sieve'}" in config
    assert f"sieve_before2 = {stock / 'lib' / 'mail-bridge-dedupe.sieve'}" in config
    assert "push_notification_driver = ox:url=http://127.0.0.1:1/" in config
    assert f"push_notification_driver2 = lua:file={stock / 'lib' / 'mail-bridge-push.luac'}" in config
    # Chained before amavis: ours first, then the re-injection hands the mail on to amavis.
    assert postconf(stock, "-h", "content_filter").startswith("mail-bridge:[127.0.0.1]:")
    # amavis's re-injection holds 10025: ours moved to the next free ports.
    assert postconf(stock, "-h", "content_filter") == "mail-bridge:[127.0.0.1]:10026"
    ours = postconf(stock, "-M", "127.0.0.1:10027/inet")
    assert "content_filter=amavis:[127.0.0.1]:10024" in ours and "no_address_mappings" in ours
    assert "content_filter=" in postconf(stock, "-M", "127.0.0.1:10025/inet")  # amavis's own, untouched
    assert postconf(stock, "-h", "receive_override_options") == "no_address_mappings,no_milters"
    # Serial delivery only on the transport that delivers to Dovecot, nothing global.
    assert postconf(stock, "-h", "dovecot-lmtp_destination_recipient_limit") == "1"
    assert "lmtp_destination_recipient_limit" not in postconf(stock, "-n").replace("dovecot-lmtp_", "")
    # The stamp leaves with no outbound mail: only the smtp and relay transports strip it.
    outbound = f"smtp_header_checks=regexp:{stock / 'lib' / 'mail-bridge-outbound-headers.regexp'}"
    assert outbound in postconf(stock, "-M", "smtp/unix") and outbound in postconf(stock, "-M", "relay/unix")
    assert "smtp_header_checks" not in postconf(stock, "-M", "amavis/unix")
    assert run(stock, "--check").returncode == 0
    assert run(stock, "--yes").stdout.strip() == "mail-bridge is already installed: nothing to change."
    assert run(stock, "--uninstall").returncode == 0
    assert _same_tree(stock / "postfix", stock / "stock-postfix") == []
    assert _same_tree(stock / "dovecot", stock / "stock-dovecot") == []


def test_the_scratch_validation_writes_nothing_into_the_live_mail_log(stock: Path) -> None:
    log = stock / "live-mail.log"
    pf = ["postconf", "-c", str(stock / "postfix")]
    subprocess.run([*pf, "-e", f"maillog_file_prefixes=/var,{stock}", f"maillog_file={log}"], check=True)
    assert run(stock, "--yes").returncode == 0
    assert "mail-bridge-install-" not in (log.read_text() if log.exists() else "")


def test_a_given_port_that_another_service_holds_is_refused(stock: Path) -> None:
    _admin_setup(stock)
    refused = run(stock, "--yes", "--chain-content-filter", "--reinject-port=10025")
    assert refused.returncode == 1 and "--reinject-port 10025 is master.cf's 127.0.0.1:10025/inet" in refused.stderr
