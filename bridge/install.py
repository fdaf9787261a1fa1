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
This module runs those steps in order; the plan is `bridge.install_plan`'s, the tools it calls are
`bridge.install_commands`' and its writes and their record `bridge.install_state`'s.
Dovecot picks the files up from `conf.d/` (Debian's dovecot.conf includes `conf.d/*.conf`); Postfix
parameters and master.cf entries are those of `postfix-conf/` (FILTER_README, "Advanced").
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TextIO

from bridge.install_commands import (
    apply_postfix,
    build_ferretdb,
    entry_lines,
    master_entry,
    reload_daemons,
    restore_entry,
    run,
    start_units,
    systemd_running,
    validate,
)
from bridge.install_discovery import DiscoveryError, ServerFacts, discover, master_entries, postconf_value
from bridge.install_options import InstallError, Options, resolve
from bridge.install_plan import Plan, make_plan
from bridge.install_postfix import main_cf_names
from bridge.install_state import (
    copy_program,
    load_remembered,
    load_state,
    make_spool,
    owned_as_planned,
    read_file,
    save_state,
    spool_owned,
    write_bytes,
    write_file,
)

__all__ = ["InstallError", "Options", "check", "install", "load_remembered", "uninstall"]


def _plan(o: Options) -> tuple[Plan, ServerFacts]:
    try:
        facts = discover(o.dovecot_dir, o.postfix_dir)
        entries = master_entries(o.postfix_dir)
    except DiscoveryError as exc:
        raise InstallError(str(exc)) from None
    resolved = resolve(o, facts, entries)
    current = {name: postconf_value(o.postfix_dir, name) for name in main_cf_names(resolved, facts)}
    state = load_state(o.state_file) or {}
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


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
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
    apply_postfix(postfix, plan)
    return dovecot, postfix


def _validate_scratch(dovecot: Path, postfix: Path, root: Path) -> None:
    """Validate the scratch copy with its log kept in the scratch dir: `postfix check` logs its
    warnings through postlog to main.cf's maillog_file, which is still the live mail log."""
    log = root / "postfix-check.log"
    run(["postconf", "-c", str(postfix), "-e", f"maillog_file_prefixes={root}", f"maillog_file={log}"])
    try:
        validate(dovecot, postfix)
    except InstallError as exc:
        logged = read_file(log) or ""
        raise InstallError(f"{exc} {logged.strip()[-2000:]}".strip()) from None


def install(o: Options, *, assume_yes: bool, reload: bool, out: TextIO, answer: TextIO) -> int:
    plan, _facts = _plan(o)
    r = plan.resolved
    with tempfile.TemporaryDirectory(prefix="mail-bridge-install-") as tmp:
        dovecot, postfix = _scratch(r, plan, Path(tmp))
        diff: list[str] = []
        for path, spec in plan.files.items():
            diff += _diff(path, read_file(path), spec.text, path in plan.secret_files)
        for name in ("main.cf", "master.cf"):
            diff += _diff(r.postfix_dir / name, read_file(r.postfix_dir / name), read_file(postfix / name), False)
        _validate_scratch(dovecot, postfix, Path(tmp))
    for target, bytecode in plan.compiled.items():
        if _bytes(target) != bytecode:
            diff.append(f"+ {target}: the push hook, precompiled ({len(bytecode)} bytes)\n")
    for target in list(plan.binaries):
        if plan.binaries[target] == target and not target.exists():
            plan.binaries[target] = build_ferretdb(out)
        source = plan.binaries[target]
        if source != target and (not target.exists() or target.read_bytes() != source.read_bytes()):
            diff.append(f"+ program {target} (from {source})\n")
    spool_ok = spool_owned(r)
    modes_ok = all(owned_as_planned(path, spec.mode, spec.group) for path, spec in plan.files.items())
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
    state = load_state(r.state_file) or {"main_cf": {}, "master_cf": {}, "files": {}, "created_dirs": []}
    for name in plan.main_cf:
        state["main_cf"].setdefault(name, postconf_value(r.postfix_dir, name))
    master_text = read_file(r.postfix_dir / "master.cf") or ""
    for key in plan.master_cf:
        old_entry = master_entry(r.postfix_dir, key)
        state["master_cf"].setdefault(key, old_entry)
        if old_entry is not None:
            # The entry's own lines, as the admin wrote them: postconf -M would refold them.
            state.setdefault("master_cf_lines", {}).setdefault(key, entry_lines(master_text, key))
    for path in plan.files:
        # Files with secrets are not copied into the state: uninstall removes them.
        state["files"].setdefault(str(path), None if path in plan.secret_files else read_file(path))
    for target in [*plan.binaries, *plan.compiled]:
        state["files"].setdefault(str(target), None)
    state["options"] = r.remembered()
    state["chained_filter"] = plan.chained_filter
    save_state(r.state_file, state)  # before the first change: an interrupted install can be undone
    for path, spec in plan.files.items():
        write_file(path, spec.text, spec.mode, spec.group, state)
    for target, source in plan.binaries.items():
        if source != target:
            copy_program(source, target, state)
    for target, bytecode in plan.compiled.items():
        write_bytes(target, bytecode, 0o644)
    save_state(r.state_file, state)
    apply_postfix(r.postfix_dir, plan)
    make_spool(r, state)
    sieve = r.hook_dir / "mail-bridge-dedupe.sieve"
    if shutil.which("sievec"):
        # Compiled now, as root: Pigeonhole would otherwise try to, as the mail user, in a root-owned dir.
        state["files"].setdefault(str(sieve.with_suffix(".svbin")), None)
        save_state(r.state_file, state)
        run(["sievec", "-c", str(r.dovecot_dir / "dovecot.conf"), str(sieve)])
    save_state(r.state_file, state)
    validate(r.dovecot_dir, r.postfix_dir)
    out.write(f"Installed. The bridge's settings are in {r.env_file}; undo with `mail-bridge install --uninstall`.\n")
    # The filter first: Postfix hands mail to it from the reload on (while it is down, mail waits).
    start_units(plan, reload, out)
    reload_daemons(r, reload, out)
    return 0


def _remember(r: Options, plan: Plan) -> None:
    state = load_state(r.state_file)
    if state is not None:
        state["options"] = r.remembered()
        state["chained_filter"] = plan.chained_filter
        save_state(r.state_file, state)


def uninstall(o: Options, *, reload: bool, out: TextIO) -> int:
    state = load_state(o.state_file)
    if state is None:
        out.write(f"No install recorded in {o.state_file}: nothing to undo.\n")
        return 1
    units = [Path(name).name for name in state["files"] if name.endswith(".service") and "@" not in name]
    if units and reload and systemd_running():
        subprocess.run(["systemctl", "disable", "--now", *units], capture_output=True, timeout=120, check=False)
    for name, old in state["main_cf"].items():
        if old is None:
            run(["postconf", "-c", str(o.postfix_dir), "-X", name])
        else:
            run(["postconf", "-c", str(o.postfix_dir), "-e", f"{name}={old}"])
    lines = state.get("master_cf_lines", {})
    for key, old in state["master_cf"].items():
        if old is None:
            run(["postconf", "-c", str(o.postfix_dir), "-MX", key])
        elif key in lines:
            restore_entry(o.postfix_dir / "master.cf", key, lines[key])
        else:
            run(["postconf", "-c", str(o.postfix_dir), "-M", f"{key}={old}"])
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
    reload_daemons(o, reload, out)
    return 0


def check(o: Options, *, out: TextIO) -> int:
    plan, _facts = _plan(o)
    r = plan.resolved
    problems: list[str] = []
    for path, spec in plan.files.items():
        current = read_file(path)
        if current is None:
            problems.append(f"missing: {path}")
        elif path not in plan.secret_files and current != spec.text:
            problems.append(f"differs from this version's: {path}")
        elif not owned_as_planned(path, spec.mode, spec.group):
            problems.append(
                f"mode or group: {path} wants {spec.mode:04o}" + (f" group {spec.group}" if spec.group else "")
            )
    for name, value in plan.main_cf.items():
        current = postconf_value(r.postfix_dir, name)
        if current != value:
            problems.append(f"main.cf: {name} is {current!r}, wants {value!r}")
    for key, entry in plan.master_cf.items():
        current = master_entry(r.postfix_dir, key)
        if current != " ".join(entry.split()):
            problems.append(f"master.cf: {key} is {'missing' if current is None else 'different'}")
    for target in plan.binaries:
        if not target.exists():
            problems.append(f"missing: {target}")
    for target, bytecode in plan.compiled.items():
        found = _bytes(target)
        if found is None:
            problems.append(f"missing: {target}")
        elif found != bytecode:
            problems.append(f"differs from this version's: {target}")
    if not spool_owned(r):
        problems.append(f"spool: {r.spool_dir} missing or not owned by {r.mail_user}")
    for problem in problems:
        out.write(problem + "\n")
    if problems:
        out.write(f"{len(problems)} item(s) missing or different: run `mail-bridge install`.\n")
        return 1
    out.write("mail-bridge is installed: every item in place.\n")
    return 0
