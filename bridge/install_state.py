"""The installer's writes to the live system, and its record of what each replaced.

Files are written atomically (a temporary file, then rename) with their planned mode and group,
creating missing directories; the spool is made the mail user's. Every directory created and every
file's earlier content go into the state file (JSON, mode 0600: it holds earlier file contents),
which `--uninstall` reads to put back exactly what was there and `--check` or a re-run reads for
the options last used.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

from bridge.install_options import InstallError, Options


def read_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def load_remembered(state_file: Path) -> dict[str, Any]:
    """The options the last install used (empty before the first)."""
    state = load_state(state_file)
    return dict(state.get("options", {})) if state else {}


def load_state(path: Path) -> dict[str, Any] | None:
    text = read_file(path)
    if text is None:
        return None
    data: dict[str, Any] = json.loads(text)
    return data


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.chmod(tmp, 0o600)  # it holds earlier file contents
    os.replace(tmp, path)


def write_file(path: Path, text: str, mode: int, group: str | None, state: dict[str, Any]) -> None:
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


def write_bytes(path: Path, data: bytes, mode: int) -> None:
    """A binary file in a directory the plan's files made (the push hook's bytecode beside its source)."""
    tmp = path.with_name(path.name + ".mail-bridge-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def copy_program(source: Path, target: Path, state: dict[str, Any]) -> None:
    for parent in reversed(target.parents):
        if not parent.exists():
            parent.mkdir()
            state["created_dirs"].append(str(parent))
    tmp = target.with_name(target.name + ".mail-bridge-tmp")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def owned_as_planned(path: Path, mode: int, group: str | None) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_mode & 0o777 == mode and (group is None or st.st_gid == grp.getgrnam(group).gr_gid)


def _mail_ids(o: Options) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(o.mail_user)
    except KeyError:
        raise InstallError(
            f"no user {o.mail_user!r}: give Dovecot's mail user (its mail_uid) with --mail-user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def spool_owned(o: Options) -> bool:
    uid, _gid = _mail_ids(o)
    try:
        return o.spool_dir.stat().st_uid == uid
    except FileNotFoundError:
        return False


def make_spool(o: Options, state: dict[str, Any]) -> None:
    """The hook writes the spool as the mail user; the bridge (run as that user) drains it."""
    uid, gid = _mail_ids(o)
    if not o.spool_dir.exists():
        for parent in reversed([o.spool_dir, *o.spool_dir.parents]):
            if not parent.exists():
                parent.mkdir()
                state["created_dirs"].append(str(parent))
    os.chown(o.spool_dir, uid, gid)
    os.chmod(o.spool_dir, 0o770)
