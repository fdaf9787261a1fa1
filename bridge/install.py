"""`mail-bridge install`: put the hooks and snippets into an existing Dovecot and Postfix, and undo it.

Contract:
- It reads the admin's effective configuration first (bridge.install_discovery) and never replaces
  a setting it did not write (bridge.install_plan decides the values and says why each is needed).
- Nothing is written before it was shown and validated. The changes are made first on a scratch
  copy of both config dirs (Postfix's with `postconf`, its own editor), checked there with
  `doveconf -n` and `postfix check` (logging into the scratch copy, never the live mail log), and
  shown as a unified diff; only on confirmation (or `--yes`) are they made for real, checked again,
  and Dovecot and Postfix reloaded (unless `--no-reload`).
- What each change replaced is recorded in a state file, with the options used, so `--uninstall`
  puts back exactly what was there (a Postfix parameter or master.cf entry its old value or none, a
  file its old content or nothing) and `--check` or a re-run need no flags again. Files holding
  secrets (the env file, the master-user file) are never printed.
- `--check` says, item by item, what is missing or different, and exits 1 if anything is.
Dovecot picks the files up from `conf.d/` (Debian's dovecot.conf includes `conf.d/*.conf`); Postfix
parameters and master.cf entries are those of `postfix-conf/` (FILTER_README, "Advanced").
"""

from __future__ import annotations

import difflib
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, TextIO

from bridge.install_discovery import (
    DiscoveryError,
    ServerFacts,
    discover,
    master_entries,
    postconf_value,
    run_tool,
)
from bridge.install_plan import InstallError, Options, Plan, main_cf_names, make_plan, resolve
from bridge.resources import shipped

__all__ = ["InstallError", "Options", "check", "install", "load_remembered", "uninstall"]


def _run(args: list[str]) -> str:
    try:
        return run_tool(args)
    except DiscoveryError as exc:  # the same one-line message, as the installer's error
        raise InstallError(str(exc)) from None


def _entry_span(lines: list[str], key: str) -> tuple[int, int] | None:
    """Where master.cf's entry `key` ("service/type") is: its first line at the left margin, and the
    continuation lines (leading white space, master(5)) after it."""
    service, kind = key.rsplit("/", 1)
    for start, line in enumerate(lines):
        fields = line.split()
        if line[:1].strip() and not line.startswith("#") and fields[:2] == [service, kind]:
            end = start + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t") and lines[end].strip():
                end += 1
            return start, end
    return None


def _entry_lines(text: str, key: str) -> str:
    lines = text.splitlines(keepends=True)
    span = _entry_span(lines, key)
    return "".join(lines[span[0] : span[1]]) if span else ""


def _restore_entry(master_cf: Path, key: str, original: str) -> None:
    lines = master_cf.read_text().splitlines(keepends=True)
    span = _entry_span(lines, key)
    if span is None:
        lines.append(original)
    else:
        lines[span[0] : span[1]] = [original]
    master_cf.write_text("".join(lines))


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


def load_remembered(state_file: Path) -> dict[str, Any]:
    """The options the last install used (empty before the first)."""
    state = _load_state(state_file)
    return dict(state.get("options", {})) if state else {}


# ---------------------------------------------------------------------------------------- planning


def _plan(o: Options) -> tuple[Plan, ServerFacts]:
    try:
        facts = discover(o.dovecot_dir, o.postfix_dir)
        entries = master_entries(o.postfix_dir)
    except DiscoveryError as exc:
        raise InstallError(str(exc)) from None
    resolved = resolve(o, facts, entries)
    current = {name: postconf_value(o.postfix_dir, name) for name in main_cf_names(resolved, facts)}
    state = _load_state(o.state_file) or {}
    previous = {key: value for key, value in state.get("master_cf", {}).items() if value}
    plan = make_plan(
        resolved,
        facts,
        current,
        str(state.get("chained_filter", "")),
        entries=entries,
        previous_entries=previous,
    )
    return plan, facts


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


def _scratch(o: Options, plan: Plan, root: Path) -> tuple[Path, Path]:
    """Copies of both config dirs with the plan applied (paths outside them are not copied)."""
    dovecot = root / "dovecot"
    postfix = root / "postfix"
    shutil.copytree(o.dovecot_dir, dovecot, symlinks=True)
    shutil.copytree(o.postfix_dir, postfix, symlinks=True)
    for path, spec in plan.files.items():
        if path.is_relative_to(o.dovecot_dir):
            target = dovecot / path.relative_to(o.dovecot_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(spec.text)
    _apply_postfix(postfix, plan)
    return dovecot, postfix


def _validate_scratch(dovecot: Path, postfix: Path, root: Path) -> None:
    """Validate the scratch copy with its log kept in the scratch dir: `postfix check` logs its
    warnings through postlog to main.cf's maillog_file, which is still the live mail log."""
    log = root / "postfix-check.log"
    _run(["postconf", "-c", str(postfix), "-e", f"maillog_file_prefixes={root}", f"maillog_file={log}"])
    try:
        validate(dovecot, postfix)
    except InstallError as exc:
        logged = _read(log) or ""
        raise InstallError(f"{exc} {logged.strip()[-2000:]}".strip()) from None


# ---------------------------------------------------------------------------------------- install


def install(o: Options, *, assume_yes: bool, reload: bool, out: TextIO, answer: TextIO) -> int:
    plan, _facts = _plan(o)
    r = plan.resolved
    with tempfile.TemporaryDirectory(prefix="mail-bridge-install-") as tmp:
        dovecot, postfix = _scratch(r, plan, Path(tmp))
        diff: list[str] = []
        for path, spec in plan.files.items():
            diff += _diff(path, _read(path), spec.text, path in plan.secret_files)
        for name in ("main.cf", "master.cf"):
            diff += _diff(r.postfix_dir / name, _read(r.postfix_dir / name), _read(postfix / name), False)
        _validate_scratch(dovecot, postfix, Path(tmp))
    for target in list(plan.binaries):
        if plan.binaries[target] == target and not target.exists():
            plan.binaries[target] = _build_ferretdb(out)
        source = plan.binaries[target]
        if source != target and (not target.exists() or target.read_bytes() != source.read_bytes()):
            diff.append(f"+ program {target} (from {source})\n")
    spool_ok = _spool_owned(r)
    modes_ok = all(_owned_as_planned(path, spec.mode, spec.group) for path, spec in plan.files.items())
    if not diff and spool_ok and modes_ok:
        out.write("mail-bridge is already installed: nothing to change.\n")
        _remember(r, plan)
        return 0
    if plan.notes:
        out.write("What this changes, and why:\n" + "".join(f"  - {note}\n" for note in plan.notes))
    out.writelines(diff)
    if not spool_ok:
        out.write(f"+ spool {r.spool_dir} (owner {r.mail_user}, mode 0770)\n")
    if not assume_yes:
        out.write("Apply these changes? [y/N] ")
        out.flush()
        if answer.readline().strip().lower() not in ("y", "yes"):
            out.write("Nothing was changed.\n")
            return 1
    state = _load_state(r.state_file) or {"main_cf": {}, "master_cf": {}, "files": {}, "created_dirs": []}
    for name in plan.main_cf:
        state["main_cf"].setdefault(name, postconf_value(r.postfix_dir, name))
    master_text = _read(r.postfix_dir / "master.cf") or ""
    for key in plan.master_cf:
        old_entry = _master_entry(r.postfix_dir, key)
        state["master_cf"].setdefault(key, old_entry)
        if old_entry is not None:
            # The entry's own lines, as the admin wrote them: postconf -M would refold them.
            state.setdefault("master_cf_lines", {}).setdefault(key, _entry_lines(master_text, key))
    for path in plan.files:
        # Files with secrets are not copied into the state: uninstall removes them.
        state["files"].setdefault(str(path), None if path in plan.secret_files else _read(path))
    for target in plan.binaries:
        state["files"].setdefault(str(target), None)
    state["options"] = r.remembered()
    state["chained_filter"] = plan.chained_filter
    _save_state(r.state_file, state)  # before the first change: an interrupted install can be undone
    for path, spec in plan.files.items():
        _write(path, spec.text, spec.mode, spec.group, state)
    for target, source in plan.binaries.items():
        if source != target:
            _copy_program(source, target, state)
    _save_state(r.state_file, state)
    _apply_postfix(r.postfix_dir, plan)
    _make_spool(r, state)
    sieve = r.hook_dir / "mail-bridge-dedupe.sieve"
    if shutil.which("sievec"):
        # Compiled now, as root: Pigeonhole would otherwise try to, as the mail user, in a root-owned dir.
        state["files"].setdefault(str(sieve.with_suffix(".svbin")), None)
        _save_state(r.state_file, state)
        _run(["sievec", "-c", str(r.dovecot_dir / "dovecot.conf"), str(sieve)])
    _save_state(r.state_file, state)
    validate(r.dovecot_dir, r.postfix_dir)
    out.write(f"Installed. The bridge's settings are in {r.env_file}; undo with `mail-bridge install --uninstall`.\n")
    # The filter first: Postfix hands mail to it from the reload on (while it is down, mail waits).
    _start_units(plan, reload, out)
    _reload(r, reload, out)
    return 0


def _systemd() -> bool:
    """systemd is PID 1 (sd_booted(3)): only then are units enabled and started."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _start_units(plan: Plan, start: bool, out: TextIO) -> None:
    command = ["systemctl", "enable", "--now", *plan.units]
    if not start or not _systemd():
        why = "--no-reload" if not start else "systemd is not running here"
        out.write(f"Units written, not started ({why}): `systemctl daemon-reload && {' '.join(command)}`.\n")
        return
    for args in (["systemctl", "daemon-reload"], command):
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise InstallError(f"{' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:2000]}")
    out.write(f"Started: {', '.join(plan.units)}\n")


def _build_ferretdb(out: TextIO) -> Path:
    """FerretDB built from source with Go, by the script `make setup` uses (scripts/install-ferretdb.sh)."""
    cache = Path("/var/cache/mail-bridge")
    script = shipped("scripts/install-ferretdb.sh")
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        raise InstallError(
            "--store needs the FerretDB program: give --ferretdb-bin PATH (`make dist` puts one in dist/),"
            " or install Go 1.22 or newer here to build it"
        )
    out.write(f"Building FerretDB with Go (once; cached in {cache})...\n")
    _run(["bash", str(script), str(cache)])
    built = sorted(cache.glob("ferretdb-*-idindex"))
    if not built:
        raise InstallError(f"the FerretDB build left no program in {cache}")
    return built[-1]


def _copy_program(source: Path, target: Path, state: dict[str, Any]) -> None:
    for parent in reversed(target.parents):
        if not parent.exists():
            parent.mkdir()
            state["created_dirs"].append(str(parent))
    tmp = target.with_name(target.name + ".mail-bridge-tmp")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def _remember(r: Options, plan: Plan) -> None:
    state = _load_state(r.state_file)
    if state is not None:
        state["options"] = r.remembered()
        state["chained_filter"] = plan.chained_filter
        _save_state(r.state_file, state)


def _reload(o: Options, reload: bool, out: TextIO) -> None:
    """Dovecot and Postfix read their configuration again (doveadm-reload(1), postfix(1))."""
    commands = [
        ["doveadm", "-c", str(o.dovecot_dir / "dovecot.conf"), "reload"],
        ["postfix", "-c", str(o.postfix_dir), "reload"],
    ]
    if not reload:
        out.write("Not reloaded (--no-reload): run " + " and ".join(f"`{' '.join(c)}`" for c in commands) + ".\n")
        return
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            out.write(f"Reloaded: {' '.join(command)}\n")
        else:
            reason = (done.stderr or done.stdout).strip().splitlines()
            out.write(
                f"Could not reload ({' '.join(command)}: {reason[-1] if reason else 'failed, see the mail log'});"
                " the new settings apply when it starts.\n"
            )


def _owned_as_planned(path: Path, mode: int, group: str | None) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_mode & 0o777 == mode and (group is None or st.st_gid == grp.getgrnam(group).gr_gid)


def _write(path: Path, text: str, mode: int, group: str | None, state: dict[str, Any]) -> None:
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            state["created_dirs"].append(str(parent))
    tmp = path.with_name(path.name + ".mail-bridge-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    if group is not None:
        try:
            os.chown(tmp, 0, grp.getgrnam(group).gr_gid)
        except KeyError:
            raise InstallError(f"no group {group!r} for {path} (Dovecot's default_internal_user)") from None
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


def uninstall(o: Options, *, reload: bool, out: TextIO) -> int:
    state = _load_state(o.state_file)
    if state is None:
        out.write(f"No install recorded in {o.state_file}: nothing to undo.\n")
        return 1
    units = [Path(name).name for name in state["files"] if name.endswith(".service") and "@" not in name]
    if units and reload and _systemd():
        subprocess.run(["systemctl", "disable", "--now", *units], capture_output=True, timeout=120, check=False)
    for name, old in state["main_cf"].items():
        if old is None:
            _run(["postconf", "-c", str(o.postfix_dir), "-X", name])
        else:
            _run(["postconf", "-c", str(o.postfix_dir), "-e", f"{name}={old}"])
    lines = state.get("master_cf_lines", {})
    for key, old in state["master_cf"].items():
        if old is None:
            _run(["postconf", "-c", str(o.postfix_dir), "-MX", key])
        elif key in lines:
            _restore_entry(o.postfix_dir / "master.cf", key, lines[key])
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
    out.write("Uninstalled: every change recorded at install time was put back.\n")
    _reload(o, reload, out)
    return 0


def check(o: Options, *, out: TextIO) -> int:
    plan, _facts = _plan(o)
    r = plan.resolved
    problems: list[str] = []
    for path, spec in plan.files.items():
        current = _read(path)
        if current is None:
            problems.append(f"missing: {path}")
        elif path not in plan.secret_files and current != spec.text:
            problems.append(f"differs from this version's: {path}")
        elif not _owned_as_planned(path, spec.mode, spec.group):
            problems.append(
                f"mode or group: {path} wants {spec.mode:04o}" + (f" group {spec.group}" if spec.group else "")
            )
    for name, value in plan.main_cf.items():
        current = postconf_value(r.postfix_dir, name)
        if current != value:
            problems.append(f"main.cf: {name} is {current!r}, wants {value!r}")
    for key, entry in plan.master_cf.items():
        current = _master_entry(r.postfix_dir, key)
        if current != " ".join(entry.split()):
            problems.append(f"master.cf: {key} is {'missing' if current is None else 'different'}")
    for target in plan.binaries:
        if not target.exists():
            problems.append(f"missing: {target}")
    if not _spool_owned(r):
        problems.append(f"spool: {r.spool_dir} missing or not owned by {r.mail_user}")
    for problem in problems:
        out.write(problem + "\n")
    if problems:
        out.write(f"{len(problems)} item(s) missing or different: run `mail-bridge install`.\n")
        return 1
    out.write("mail-bridge is installed: every item in place.\n")
    return 0
