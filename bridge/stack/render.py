"""Render the local stack's configuration: Dovecot and Postfix files, users, secrets.

Templates live in dovecot-conf/ and postfix-conf/ and use `@NAME@` placeholders (Dovecot and Postfix
both give `$` a meaning of their own). The admin snippets are rendered as they ship, so the stack
runs exactly what a mail admin installs. Secrets (demo passwords, the master password, the JWT key)
are generated once and kept in the state directory, so logins survive a restart.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import ConfigError
from bridge.hook_bytecode import DEBIAN_MODULE_DIR, HOOK_BYTECODE, HOOK_SOURCE, compile_hook, lua_compiler
from bridge.redis_keys import dovecot_stream
from bridge.settings import StackSettings

DEMO_USERS = ("alice@example.test", "bob@example.test")
MASTER_USER = "bridge"
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


@dataclass(frozen=True, slots=True)
class StackSecrets:
    passwords: dict[str, str]
    master_password: str
    jwt_secret: str


def ssha256(password: str) -> str:
    """Dovecot's {SSHA256} scheme: base64(sha256(password + salt) + salt)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha256(password.encode() + salt).digest()
    return "{SSHA256}" + base64.b64encode(digest + salt).decode()


def render_text(template: str, values: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"template placeholder @{name}@ has no value")
        return values[name]

    return _PLACEHOLDER.sub(substitute, template)


def load_secrets(path: Path) -> StackSecrets:
    data: dict[str, object] = {}
    if path.exists():
        data = json.loads(path.read_text())
    passwords = dict(data.get("passwords", {}))  # type: ignore[call-overload]
    for user in DEMO_USERS:
        passwords.setdefault(user, secrets.token_urlsafe(12))
    result = StackSecrets(
        passwords=passwords,
        master_password=str(data.get("master_password") or secrets.token_urlsafe(24)),
        jwt_secret=str(data.get("jwt_secret") or secrets.token_urlsafe(48)),
    )
    path.write_text(
        json.dumps(
            {
                "passwords": result.passwords,
                "master_password": result.master_password,
                "jwt_secret": result.jwt_secret,
            },
            indent=2,
        )
    )
    path.chmod(0o600)
    return result


def _write(path: Path, text: str, mode: int = 0o644, group: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if group is not None:
        os.chown(path, -1, group)


def render_all(settings: StackSettings, stack_secrets: StackSecrets, mail_uid: int, mail_gid: int) -> None:
    # Password files are read by Dovecot's auth process, which runs as the dovecot user.
    auth_gid = grp.getgrnam("dovecot").gr_gid
    repo, state, ports = settings.repo_dir, settings.state_dir, settings.ports
    dovecot = state / "dovecot"
    # The hook runs inside lmtp/imap as the mail user: it must be readable from the state dir.
    # Precompiled when the compiler of Dovecot's Lua is there (bridge.hook_bytecode; `make setup`
    # installs it), as the installer does on a mail server.
    hook_source = (repo / "hooks" / HOOK_SOURCE).read_text()
    _write(dovecot / HOOK_SOURCE, hook_source)
    hook = dovecot / HOOK_SOURCE
    compiler = lua_compiler(DEBIAN_MODULE_DIR)  # the stack runs Debian's Dovecot
    if compiler is not None:
        hook = dovecot / HOOK_BYTECODE
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_bytes(compile_hook(hook_source, compiler))
        hook.chmod(0o644)
    values = {
        "STATE": str(state),
        "HOST": settings.host,
        "INSTANCE": "mail-bridge-" + hashlib.sha1(str(state).encode()).hexdigest()[:8],
        "MAIL_UID": str(mail_uid),
        "MAIL_GID": str(mail_gid),
        "IMAP_PORT": str(ports["imap"]),
        "LMTP_PORT": str(ports["lmtp"]),
        "DOVECOT_METRICS_PORT": str(ports["dovecot_metrics"]),
        "SMTP_PORT": str(ports["smtp"]),
        "SUBMISSION_PORT": str(ports["submission"]),
        "FILTER_HOST": settings.host,
        "FILTER_PORT": str(ports["filter"]),
        "REINJECT_HOST": settings.host,
        "REINJECT_PORT": str(ports["reinject"]),
        "REDIS_HOST": settings.host,
        "REDIS_PORT": str(ports["redis"]),
        "SENTINEL": "#",  # one Redis, no Sentinel: the lines stay commented out
        "REDIS_SENTINELS": "127.0.0.1:26379",
        "REDIS_MASTER": "mymaster",
        "STREAM": dovecot_stream("mail"),  # the stack's bridges keep the default BRIDGE_STREAM_PREFIX
        "SPOOL": str(state / "spool"),
        "HOOK": str(hook),
        "MASTER_USERS": str(state / "dovecot" / "master-users"),
        "SIEVE_DIR": str(state / "dovecot" / "sieve"),
        # The stack's Dovecot has no Sieve or push settings of its own: the first slots are free.
        "SIEVE_BEFORE_SLOT": "sieve_before",
        "PUSH_DRIVER_SLOT": "push_notification_driver",
        "LMTP_TRANSPORT": "lmtp",
        "NEXT_FILTER": "",
        "REINJECT_OVERRIDES": "no_unknown_recipient_checks,no_header_body_checks,no_milters",
    }
    for name in ("90-mail-bridge.conf", "91-mail-bridge-master.conf", "92-mail-bridge-dedupe.conf"):
        text = render_text((repo / "dovecot-conf" / name).read_text(), values)
        if settings.bare and name != "91-mail-bridge-master.conf" and BARE_PART.get(name) not in settings.bare_with:
            text = "# BRIDGE_STACK_BARE: without mail-bridge\n"  # the master user (91) costs no delivery
        _write(dovecot / name, text)
    _write(
        dovecot / "dovecot.conf",
        render_text((repo / "dovecot-conf" / "stack" / "dovecot.conf.in").read_text(), values),
    )
    # Pigeonhole compiles the script next to itself, as the mail user: the directory is theirs.
    sieve = dovecot / "sieve"
    _write(sieve / "mail-bridge-dedupe.sieve", (repo / "hooks" / "mail-bridge-dedupe.sieve").read_text())
    os.chown(sieve, mail_uid, mail_gid)
    users = "".join(
        user_line(state, user, password, mail_uid, mail_gid) for user, password in stack_secrets.passwords.items()
    )
    _write(dovecot / "users", users, 0o640, auth_gid)
    _write(dovecot / "master-users", f"{MASTER_USER}:{ssha256(stack_secrets.master_password)}\n", 0o640, auth_gid)

    etc = state / "postfix" / "etc"
    main_cf = render_text((repo / "postfix-conf" / "stack" / "main.cf.in").read_text(), values)
    master_cf = render_text((repo / "postfix-conf" / "stack" / "master.cf.in").read_text(), values)
    if not settings.bare:
        main_cf += "\n" + render_text((repo / "postfix-conf" / "main.cf.snippet").read_text(), values)
        master_cf += "\n" + render_text((repo / "postfix-conf" / "master.cf.snippet").read_text(), values)
    _write(etc / "main.cf", main_cf)
    _write(etc / "master.cf", master_cf)
    _write(etc / "vmailbox.regexp", "/@example\\.test$/ ok\n")
    # Submission: the envelope sender must be the login itself (reject_sender_login_mismatch).
    _write(etc / "sender_logins.regexp", "/^(.+)$/ ${1}\n")


# Which part of a bare stack (StackSettings.bare_with) each Dovecot file is.
BARE_PART = {"90-mail-bridge.conf": "hook", "92-mail-bridge-dedupe.conf": "dedupe"}


def user_home(state: Path, email: str) -> Path:
    local, domain = email.split("@", 1)
    return state / "mail" / domain / local


def create_home(state: Path, email: str, mail_uid: int, mail_gid: int) -> None:
    """Homes exist before the first delivery: Dovecot's duplicate db (Sieve) lives there."""
    home = user_home(state, email)
    for path in (home.parent, home):
        path.mkdir(exist_ok=True)
        os.chown(path, mail_uid, mail_gid)


def user_line(
    state: Path, email: str, password: str, mail_uid: int, mail_gid: int, *, userdb_fields: Mapping[str, str] = {}
) -> str:
    """One passwd-file line. `userdb_fields` are the user's own settings (Dovecot 2.3 passwd-file
    "extra fields", `userdb_<name>=<value>`): a plugin setting given there overrides the plugin block
    for that user."""
    create_home(state, email, mail_uid, mail_gid)
    extra = " ".join(f"userdb_{name}={value}" for name, value in userdb_fields.items())
    return f"{email}:{ssha256(password)}:{mail_uid}:{mail_gid}::{user_home(state, email)}::{extra}\n"


def world_traversable(path: Path) -> bool:
    """Can another user (Dovecot's mail user) reach `path`? Every ancestor needs o+x."""
    for part in [path, *path.parents]:
        try:
            if not os.stat(part).st_mode & 0o001:
                return False
        except FileNotFoundError:
            continue
    return True
