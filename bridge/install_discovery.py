"""What `mail-bridge install` finds in the admin's mail server before it plans a change.

Contract: read-only. Every fact comes from the effective configuration as the daemons see it —
`doveconf` (Dovecot 2.3, doveconf(1)) and `postconf` / `postconf -M` (postconf(1)) on the given
config directories — never from parsing the files ourselves, so includes, defaults and `-o`
overrides count. The installer decides from these facts which settings it may write (a numbered
`sieve_beforeN` next to the admin's own, a free `push_notification_driverN`, the LMTP transport's
name, free ports for the filter) and what the bridge's env file says (IMAP, submission, user names).
"""

from __future__ import annotations

import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import BridgeError
from bridge.hook_bytecode import DEBIAN_MODULE_DIR, lua_compiler

# Pigeonhole reads sieve_before, sieve_before2, sieve_before3, ... and stops at the first unset one
# (Pigeonhole "Sieve interpreter settings"); the push_notification plugin numbers its drivers the
# same way (Dovecot 2.3 "Push Notification Framework").
MAX_NUMBERED = 20


class DiscoveryError(BridgeError):
    """doveconf or postconf could not read the configuration."""


def run_tool(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise DiscoveryError(f"{args[0]}: {exc}") from None
    if done.returncode != 0:
        raise DiscoveryError(f"{' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:2000]}")
    return done.stdout


def doveconf_value(dovecot_dir: Path, name: str) -> str:
    """One setting as Dovecot sees it ("" when unset); `name` may be a path such as plugin/x."""
    return run_tool(["doveconf", "-c", str(dovecot_dir / "dovecot.conf"), "-h", name]).strip()


def postconf_value(postfix_dir: Path, name: str) -> str | None:
    """The parameter as main.cf sets it (None when main.cf does not: the default applies)."""
    out = run_tool(["postconf", "-c", str(postfix_dir), "-n", name]).strip()
    return out.split("=", 1)[1].strip() if "=" in out else None


def master_entries(postfix_dir: Path) -> dict[str, str]:
    """Every master.cf entry by "service/type", continuation lines folded (master(5))."""
    out = run_tool(["postconf", "-c", str(postfix_dir), "-M"])
    entries: dict[str, str] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            entries[f"{fields[0]}/{fields[1]}"] = " ".join(fields)
    return entries


def numbered_slot(taken: dict[str, str], base: str) -> str:
    """The first unset name of `base`, `base2`, `base3`, ... (the sequence stops at a gap)."""
    for index in range(1, MAX_NUMBERED + 1):
        name = base if index == 1 else f"{base}{index}"
        if not taken.get(name):
            return name
    raise DiscoveryError(f"{base} through {base}{MAX_NUMBERED} are all set: no slot left for mail-bridge")


def inet_port(service: str) -> int | None:
    """The port of a master.cf inet service name: "127.0.0.1:10026", "submission", "587"."""
    name = service.rsplit(":", 1)[-1]
    if name.isdigit():
        return int(name)
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        return None


def entry_options(entry: str) -> dict[str, str]:
    """The `-o name=value` overrides of a folded master.cf entry."""
    return dict(re.findall(r"-o\s+([A-Za-z0-9_]+)=(\S*)", entry))


@dataclass(frozen=True)
class ServerFacts:
    """The admin's server as found: what the installer must keep and where it may write."""

    mail_uid: str
    auth_user: str  # who reads passwd-files for the auth process (default_internal_user)
    username_format: str
    imap_port: int | None
    sieve_before: dict[str, str]  # sieve_before, sieve_before2, ... as set
    push_drivers: dict[str, str]  # push_notification_driver, ...2, ... as set
    content_filter: str | None
    lmtp_transport: str  # the transport Dovecot deliveries use (virtual_transport's name)
    submission_port: int | None
    submission_tls: bool  # the submission smtpd demands STARTTLS before AUTH
    inet_ports: dict[int, str] = field(default_factory=dict)  # port -> master.cf service/type
    receive_override_options: str | None = None
    # luac of the Lua that Dovecot's push_notification_lua links (bridge.hook_bytecode), if installed.
    lua_compiler: Path | None = None


def _plugin_sequence(dovecot_dir: Path, base: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for index in range(1, MAX_NUMBERED + 1):
        name = base if index == 1 else f"{base}{index}"
        value = doveconf_value(dovecot_dir, f"plugin/{name}")
        if not value:
            break
        found[name] = value
    return found


def discover(dovecot_dir: Path, postfix_dir: Path) -> ServerFacts:
    imap = doveconf_value(dovecot_dir, "service/imap-login/inet_listener/imap/port")
    entries = master_entries(postfix_dir)
    ports: dict[int, str] = {}
    submission_port: int | None = None
    submission_tls = False
    for key, entry in entries.items():
        service, kind = key.rsplit("/", 1)
        if kind != "inet":
            continue
        port = inet_port(service)
        if port is None:
            continue
        ports[port] = key
        options = entry_options(entry)
        if service.rsplit(":", 1)[-1] == "submission" or options.get("syslog_name", "").endswith("/submission"):
            submission_port = port
            submission_tls = (
                options.get("smtpd_tls_security_level", postconf_value(postfix_dir, "smtpd_tls_security_level"))
                == "encrypt"
                or options.get("smtpd_tls_auth_only", postconf_value(postfix_dir, "smtpd_tls_auth_only")) == "yes"
            )
    # The transport that hands mail to Dovecot: virtual_transport's name when master.cf runs the
    # lmtp(8) program under it (e.g. "lmtp:unix:private/dovecot-lmtp" or a renamed copy).
    name = (postconf_value(postfix_dir, "virtual_transport") or "").split(":", 1)[0]
    command = entries.get(f"{name}/unix", "").split()[7:8]
    lmtp_transport = name if command == ["lmtp"] else "lmtp"
    return ServerFacts(
        mail_uid=doveconf_value(dovecot_dir, "mail_uid"),
        auth_user=doveconf_value(dovecot_dir, "default_internal_user") or "dovecot",
        username_format=doveconf_value(dovecot_dir, "auth_username_format"),
        imap_port=int(imap) if imap.isdigit() and imap != "0" else None,
        sieve_before=_plugin_sequence(dovecot_dir, "sieve_before"),
        push_drivers=_plugin_sequence(dovecot_dir, "push_notification_driver"),
        content_filter=postconf_value(postfix_dir, "content_filter"),
        lmtp_transport=lmtp_transport,
        submission_port=submission_port,
        submission_tls=submission_tls,
        inet_ports=ports,
        receive_override_options=postconf_value(postfix_dir, "receive_override_options"),
        lua_compiler=lua_compiler(Path(doveconf_value(dovecot_dir, "mail_plugin_dir") or DEBIAN_MODULE_DIR)),
    )
