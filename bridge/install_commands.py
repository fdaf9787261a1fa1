"""The commands `mail-bridge install` runs: Postfix edits, checks, reloads, systemd units, builds.

Every call into the mail server's own tools, on the live configuration or on the install's scratch
copy: `postconf` to set parameters and master.cf entries (Postfix's own editor), master.cf entries
put back line for line as the admin wrote them, `doveconf -n` and `postfix check` to validate,
`doveadm reload` / `postfix reload`, `systemctl` for the units, and the FerretDB build for `--store`.
A tool that fails raises `InstallError` with its one-line message.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TextIO

from bridge.install_discovery import DiscoveryError, run_tool
from bridge.install_options import InstallError, Options
from bridge.install_plan import Plan
from bridge.resources import shipped


def run(args: list[str]) -> str:
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


def entry_lines(text: str, key: str) -> str:
    lines = text.splitlines(keepends=True)
    span = _entry_span(lines, key)
    return "".join(lines[span[0] : span[1]]) if span else ""


def restore_entry(master_cf: Path, key: str, original: str) -> None:
    lines = master_cf.read_text().splitlines(keepends=True)
    span = _entry_span(lines, key)
    if span is None:
        lines.append(original)
    else:
        lines[span[0] : span[1]] = [original]
    master_cf.write_text("".join(lines))


def master_entry(postfix_dir: Path, key: str) -> str | None:
    out = subprocess.run(
        ["postconf", "-c", str(postfix_dir), "-M", key], capture_output=True, text=True, timeout=60, check=False
    ).stdout.strip()
    return " ".join(out.split()) if out else None


def apply_postfix(postfix_dir: Path, plan: Plan) -> None:
    for name, value in plan.main_cf.items():
        run(["postconf", "-c", str(postfix_dir), "-e", f"{name}={value}"])
    for key, entry in plan.master_cf.items():
        run(["postconf", "-c", str(postfix_dir), "-M", f"{key}={entry}"])


def validate(dovecot_dir: Path, postfix_dir: Path) -> None:
    run(["doveconf", "-c", str(dovecot_dir / "dovecot.conf"), "-n"])
    run(["postfix", "-c", str(postfix_dir), "check"])


def systemd_running() -> bool:
    """systemd is PID 1 (sd_booted(3)): only then are units enabled and started."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def start_units(plan: Plan, start: bool, out: TextIO) -> None:
    command = ["systemctl", "enable", "--now", *plan.units]
    if not start or not systemd_running():
        why = "--no-reload" if not start else "systemd is not running here"
        out.write(f"Units written, not started ({why}): `systemctl daemon-reload && {' '.join(command)}`.\n")
        return
    for args in (["systemctl", "daemon-reload"], command):
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise InstallError(f"{' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:2000]}")
    out.write(f"Started: {', '.join(plan.units)}\n")


def build_ferretdb(out: TextIO) -> Path:
    """FerretDB built from source with Go, by the script `make setup` uses (scripts/install-ferretdb.sh)."""
    cache = Path("/var/cache/mail-bridge")
    script = shipped("scripts/install-ferretdb.sh")
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        raise InstallError(
            "--store needs the FerretDB program: give --ferretdb-bin PATH (`make dist` puts one in dist/),"
            " or install Go 1.22 or newer here to build it"
        )
    out.write(f"Building FerretDB with Go (once; cached in {cache})...\n")
    run(["bash", str(script), str(cache)])
    built = sorted(cache.glob("ferretdb-*-idindex"))
    if not built:
        raise InstallError(f"the FerretDB build left no program in {cache}")
    return built[-1]


def reload_daemons(o: Options, reload: bool, out: TextIO) -> None:
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
