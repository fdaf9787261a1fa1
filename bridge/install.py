"""`mail-bridge install`: put the hooks and snippets into an existing Dovecot and Postfix, and undo it.

Contract:
- Nothing is written before it was shown and validated. The changes are made first on a scratch
  copy of both config dirs (Postfix's with `postconf`, its own editor), checked there with
  `doveconf -n` and `postfix check`, and shown as a unified diff; only on confirmation (or `--yes`)
  are they made for real, then checked again.
- What each change replaced is recorded in a state file, so `--uninstall` puts back exactly what was
  there: a Postfix parameter or master.cf entry its old value (or none), a file its old content
  (or nothing). Files holding secrets (the bridge's env file) are never printed.
- `--check` says, item by item, what is missing or different, and exits 1 if anything is.
Dovecot picks the files up from `conf.d/` (Debian's dovecot.conf includes `conf.d/*.conf`); Postfix
parameters and master.cf entries are those of `postfix-conf/` (FILTER_README, "Advanced").
"""

from __future__ import annotations

import difflib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bridge.errors import BridgeError
from bridge.stack.render import MASTER_USER, render_text, ssha256

REPO = Path(__file__).resolve().parent.parent
DOVECOT_FILES = ("90-mail-bridge.conf", "91-mail-bridge-master.conf", "92-mail-bridge-dedupe.conf")
_PARAM = re.compile(r"^([A-Za-z0-9_.-]+)\s*=\s*(.*)$")


class InstallError(BridgeError):
    """A validation or a command of the installer failed; nothing more is written."""


@dataclass(frozen=True)
class Options:
    dovecot_dir: Path = Path("/etc/dovecot")
    postfix_dir: Path = Path("/etc/postfix")
    hook_dir: Path = Path("/usr/local/lib/mail-bridge")
    spool_dir: Path = Path("/var/spool/mail-bridge")
    env_file: Path = Path("/etc/mail-bridge/mail-bridge.env")
    state_file: Path = Path("/var/lib/mail-bridge/install-state.json")
    mail_user: str = "vmail"
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    # With Redis Sentinel: the sentinels and the master's name (then redis_host/port are unused).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master: str = "mymaster"
    # On Redis Cluster: some of its nodes (the hook is told the first; it follows MOVED from there).
    redis_cluster: tuple[tuple[str, int], ...] = ()
    filter_host: str = "127.0.0.1"
    filter_port: int = 10025
    reinject_host: str = "127.0.0.1"
    reinject_port: int = 10026


@dataclass
class Plan:
    """Everything the install sets: files (path -> content, mode), Postfix parameters and entries."""

    files: dict[Path, tuple[str, int]] = field(default_factory=dict)
    secret_files: set[Path] = field(default_factory=set)  # never printed
    keep_if_present: set[Path] = field(default_factory=set)  # generated secrets: not regenerated
    main_cf: dict[str, str] = field(default_factory=dict)
    master_cf: dict[str, str] = field(default_factory=dict)  # "service/type" -> the whole entry


def _values(o: Options) -> dict[str, str]:
    host, port = o.redis_cluster[0] if o.redis_cluster else (o.redis_host, o.redis_port)
    return {
        "HOOK": str(o.hook_dir / "mail-bridge-push.lua"),
        "REDIS_HOST": host,
        "REDIS_PORT": str(port),
        "SENTINEL": "" if o.redis_sentinels else "#",
        "REDIS_SENTINELS": " ".join(f"{host}:{port}" for host, port in o.redis_sentinels) or "127.0.0.1:26379",
        "REDIS_MASTER": o.redis_master,
        "STREAM": f"{stream_prefix(o)}:dovecot",
        "SPOOL": str(o.spool_dir),
        "MASTER_USERS": str(o.dovecot_dir / "mail-bridge-master-users"),
        "SIEVE_DIR": str(o.hook_dir),
        "FILTER_HOST": o.filter_host,
        "FILTER_PORT": str(o.filter_port),
        "REINJECT_HOST": o.reinject_host,
        "REINJECT_PORT": str(o.reinject_port),
    }


def stream_prefix(o: Options) -> str:
    """On Redis Cluster every key of the bridge shares one hash tag (bridge.settings)."""
    return "{mail}" if o.redis_cluster else "mail"


def redis_url(o: Options) -> str:
    """The bridge's REDIS_URL for what the hook is told (README, Configuration)."""
    if o.redis_cluster:
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in o.redis_cluster)
    if o.redis_sentinels:
        hosts = ",".join(f"{host}:{port}" for host, port in o.redis_sentinels)
        return f"redis+sentinel://{hosts}/{o.redis_master}/0"
    return f"redis://{o.redis_host}:{o.redis_port}/0"


def parse_main_snippet(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for line in text.splitlines():
        found = _PARAM.match(line)
        if found and not line.startswith("#"):
            params[found.group(1)] = found.group(2).strip()
    return params


def parse_master_snippet(text: str) -> dict[str, str]:
    """master.cf entries by "service/type": a line at the left margin opens one, indented lines
    continue it (master(5))."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            if current is not None:
                current.append(line.strip())
            continue
        fields = line.split()
        current = [" ".join(fields)]
        entries[f"{fields[0]}/{fields[1]}"] = current
    return {key: " ".join(parts) for key, parts in entries.items()}


def make_plan(o: Options, master_password: str) -> Plan:
    values = _values(o)
    plan = Plan()
    for name in DOVECOT_FILES:
        text = render_text((REPO / "dovecot-conf" / name).read_text(), values)
        plan.files[o.dovecot_dir / "conf.d" / name] = (text, 0o644)
    plan.files[o.hook_dir / "mail-bridge-push.lua"] = ((REPO / "hooks" / "mail-bridge-push.lua").read_text(), 0o644)
    plan.files[o.hook_dir / "mail-bridge-dedupe.sieve"] = (
        (REPO / "hooks" / "mail-bridge-dedupe.sieve").read_text(),
        0o644,
    )
    users = o.dovecot_dir / "mail-bridge-master-users"
    plan.files[users] = (f"{MASTER_USER}:{ssha256(master_password)}\n", 0o640)
    plan.keep_if_present.add(users)
    env = "\n".join(
        [
            "# mail-bridge settings (README, Configuration), written by `mail-bridge install`.",
            f"REDIS_URL={redis_url(o)}",
            f"BRIDGE_STREAM_PREFIX={stream_prefix(o)}",
            f"BRIDGE_IMAP_MASTER_USER={MASTER_USER}",
            f"BRIDGE_IMAP_MASTER_PASSWORD={master_password}",
            f"BRIDGE_JWT_SECRET={secrets.token_urlsafe(48)}",
            f"BRIDGE_FILTER_PORT={o.filter_port}",
            f"BRIDGE_REINJECT_HOST={o.reinject_host}",
            f"BRIDGE_REINJECT_PORT={o.reinject_port}",
            f"BRIDGE_SPOOL_DIR={o.spool_dir}",
            "",
        ]
    )
    plan.files[o.env_file] = (env, 0o600)
    plan.secret_files.add(o.env_file)
    plan.keep_if_present.add(o.env_file)
    plan.main_cf = parse_main_snippet(render_text((REPO / "postfix-conf" / "main.cf.snippet").read_text(), values))
    plan.master_cf = parse_master_snippet(
        render_text((REPO / "postfix-conf" / "master.cf.snippet").read_text(), values)
    )
    return plan


# ---------------------------------------------------------------------------------------- commands


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise InstallError(f"{args[0]}: {exc}") from None
    if done.returncode != 0:
        raise InstallError(f"{' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:2000]}")
    return done.stdout


def _postconf_value(postfix_dir: Path, name: str) -> str | None:
    """The parameter as main.cf sets it (None when main.cf does not: the default applies)."""
    out = _run(["postconf", "-c", str(postfix_dir), "-n", name]).strip()
    return out.split("=", 1)[1].strip() if "=" in out else None


def _master_entry(postfix_dir: Path, key: str) -> str | None:
    out = subprocess.run(
        ["postconf", "-c", str(postfix_dir), "-M", key], capture_output=True, text=True, timeout=60, check=False
    ).stdout.strip()
    return " ".join(out.split()) if out else None


def _apply_postfix(postfix_dir: Path, plan: Plan) -> None:
    for name, value in plan.main_cf.items():
        _run(["postconf", "-c", str(postfix_dir), "-e", f"{name}={value}"])
    for key, entry in plan.master_cf.items():
        _run(["postconf", "-c", str(postfix_dir), "-M", f"{key}={entry}"])


def validate(dovecot_dir: Path, postfix_dir: Path) -> None:
    _run(["doveconf", "-c", str(dovecot_dir / "dovecot.conf"), "-n"])
    _run(["postfix", "-c", str(postfix_dir), "check"])


# ---------------------------------------------------------------------------------------- install


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _diff(path: Path, old: str | None, new: str | None, secret: bool) -> list[str]:
    if old == new:
        return []
    if secret:
        return [f"--- {path}\n", f"+++ {path}\n", "(holds secrets: not shown)\n"]
    return list(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=str(path) if old is not None else "/dev/null",
            tofile=str(path) if new is not None else "/dev/null",
        )
    )


def _effective_files(plan: Plan) -> dict[Path, tuple[str, int]]:
    """The plan's files, minus generated secrets that already exist (kept as they are)."""
    return {p: v for p, v in plan.files.items() if not (p in plan.keep_if_present and p.exists())}


def _scratch(o: Options, plan: Plan, root: Path) -> tuple[Path, Path]:
    """Copies of both config dirs with the plan applied (paths outside them are not copied)."""
    dovecot = root / "dovecot"
    postfix = root / "postfix"
    shutil.copytree(o.dovecot_dir, dovecot, symlinks=True)
    shutil.copytree(o.postfix_dir, postfix, symlinks=True)
    for path, (text, _mode) in _effective_files(plan).items():
        if path.is_relative_to(o.dovecot_dir):
            target = dovecot / path.relative_to(o.dovecot_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    _apply_postfix(postfix, plan)
    return dovecot, postfix


def install(o: Options, *, assume_yes: bool, out: TextIO, answer: TextIO) -> int:
    master_password = secrets.token_urlsafe(24)
    plan = make_plan(o, master_password)
    files = _effective_files(plan)
    with tempfile.TemporaryDirectory(prefix="mail-bridge-install-") as tmp:
        dovecot, postfix = _scratch(o, plan, Path(tmp))
        validate(dovecot, postfix)
        diff: list[str] = []
        for path, (text, _mode) in files.items():
            diff += _diff(path, _read(path), text, path in plan.secret_files)
        for name in ("main.cf", "master.cf"):
            diff += _diff(o.postfix_dir / name, _read(o.postfix_dir / name), _read(postfix / name), False)
    spool_ok = _spool_owned(o)
    if not diff and spool_ok:
        out.write("mail-bridge is already installed: nothing to change.\n")
        return 0
    out.writelines(diff)
    if not spool_ok:
        out.write(f"+ spool {o.spool_dir} (owner {o.mail_user}, mode 0770)\n")
    if not assume_yes:
        out.write("Apply these changes? [y/N] ")
        out.flush()
        if answer.readline().strip().lower() not in ("y", "yes"):
            out.write("Nothing was changed.\n")
            return 1
    state = _load_state(o.state_file) or {"main_cf": {}, "master_cf": {}, "files": {}, "created_dirs": []}
    for name in plan.main_cf:
        state["main_cf"].setdefault(name, _postconf_value(o.postfix_dir, name))
    for key in plan.master_cf:
        state["master_cf"].setdefault(key, _master_entry(o.postfix_dir, key))
    for path in files:
        state["files"].setdefault(str(path), None if path in plan.secret_files else _read(path))
    _save_state(o.state_file, state)  # before the first change: an interrupted install can be undone
    for path, (text, mode) in files.items():
        _write(path, text, mode, state)
    _apply_postfix(o.postfix_dir, plan)
    _make_spool(o, state)
    sieve = o.hook_dir / "mail-bridge-dedupe.sieve"
    if shutil.which("sievec") and sieve in files:
        # Compiled now, as root: Pigeonhole would otherwise try to, as the mail user, in a root-owned dir.
        state["files"].setdefault(str(sieve.with_suffix(".svbin")), None)
        _save_state(o.state_file, state)
        _run(["sievec", str(sieve)])
    _save_state(o.state_file, state)
    validate(o.dovecot_dir, o.postfix_dir)
    out.write(
        "Installed. Next: `doveadm reload` and `postfix reload`; start the bridge and the filter with the"
        f" settings in {o.env_file} (deploy/systemd/). Undo with `mail-bridge install --uninstall`.\n"
    )
    return 0


def _write(path: Path, text: str, mode: int, state: dict[str, Any]) -> None:
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            state["created_dirs"].append(str(parent))
    tmp = path.with_name(path.name + ".mail-bridge-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _mail_ids(o: Options) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(o.mail_user)
    except KeyError:
        raise InstallError(
            f"no user {o.mail_user!r}: give Dovecot's mail user (its mail_uid) with --mail-user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _spool_owned(o: Options) -> bool:
    uid, _gid = _mail_ids(o)
    try:
        return o.spool_dir.stat().st_uid == uid
    except FileNotFoundError:
        return False


def _make_spool(o: Options, state: dict[str, Any]) -> None:
    """The hook writes the spool as the mail user; the bridge (run as that user) drains it."""
    uid, gid = _mail_ids(o)
    if not o.spool_dir.exists():
        for parent in reversed([o.spool_dir, *o.spool_dir.parents]):
            if not parent.exists():
                parent.mkdir()
                state["created_dirs"].append(str(parent))
    os.chown(o.spool_dir, uid, gid)
    os.chmod(o.spool_dir, 0o770)


def _load_state(path: Path) -> dict[str, Any] | None:
    text = _read(path)
    if text is None:
        return None
    data: dict[str, Any] = json.loads(text)
    return data


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.chmod(tmp, 0o600)  # it holds earlier file contents
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- undo, check


def uninstall(o: Options, *, out: TextIO) -> int:
    state = _load_state(o.state_file)
    if state is None:
        out.write(f"No install recorded in {o.state_file}: nothing to undo.\n")
        return 1
    for name, old in state["main_cf"].items():
        if old is None:
            _run(["postconf", "-c", str(o.postfix_dir), "-X", name])
        else:
            _run(["postconf", "-c", str(o.postfix_dir), "-e", f"{name}={old}"])
    for key, old in state["master_cf"].items():
        if old is None:
            _run(["postconf", "-c", str(o.postfix_dir), "-MX", key])
        else:
            _run(["postconf", "-c", str(o.postfix_dir), "-M", f"{key}={old}"])
    for name, old in state["files"].items():
        path = Path(name)
        if old is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(old)
    for name in reversed(state["created_dirs"]):
        path = Path(name)
        if path.exists() and not any(path.iterdir()):
            path.rmdir()  # a spool still holding events stays
    o.state_file.unlink()
    validate(o.dovecot_dir, o.postfix_dir)
    out.write("Uninstalled: every change recorded at install time was put back. Reload Dovecot and Postfix.\n")
    return 0


def check(o: Options, *, out: TextIO) -> int:
    plan = make_plan(o, "unused")
    problems: list[str] = []
    for path, (text, _mode) in plan.files.items():
        current = _read(path)
        if current is None:
            problems.append(f"missing: {path}")
        elif path not in plan.keep_if_present and current != text:
            problems.append(f"differs from this version's: {path}")
    for name, value in plan.main_cf.items():
        current = _postconf_value(o.postfix_dir, name)
        if current != value:
            problems.append(f"main.cf: {name} is {current!r}, wants {value!r}")
    for key, entry in plan.master_cf.items():
        current = _master_entry(o.postfix_dir, key)
        if current != " ".join(entry.split()):
            problems.append(f"master.cf: {key} is {'missing' if current is None else 'different'}")
    if not _spool_owned(o):
        problems.append(f"spool: {o.spool_dir} missing or not owned by {o.mail_user}")
    for problem in problems:
        out.write(problem + "\n")
    if problems:
        out.write(f"{len(problems)} item(s) missing or different: run `mail-bridge install`.\n")
        return 1
    out.write("mail-bridge is installed: every item in place.\n")
    return 0
