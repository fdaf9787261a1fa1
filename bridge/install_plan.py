"""What `mail-bridge install` would write, decided from its options and the server's facts.

Contract: pure apart from reading the shipped templates and the existing env file, and running the
Lua compiler the facts name on the push hook (bridge.hook_bytecode). Given the
resolved options (`bridge.install_options`) and the `ServerFacts` found by
`bridge.install_discovery`, it decides every value the install writes and returns a `Plan`: files
(content, mode, group: Dovecot's snippets, the hooks, the master user, the bridge's env file, the
systemd units), Postfix parameters and master.cf entries (`bridge.install_postfix`), and a
plain-language account of each setting of the admin's that it touches and what each global change
costs. It never takes a setting the admin wrote: our Sieve script and push driver take the next free
numbered slot, and an existing content filter is refused unless the admin asked to chain ours before it.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from bridge.hook_bytecode import HOOK_BYTECODE, HOOK_SOURCE, compile_hook
from bridge.install_discovery import ServerFacts, numbered_slot
from bridge.install_options import InstallError, Options, redis_url, stream_prefix
from bridge.install_postfix import OUTBOUND_HEADERS, OUTBOUND_HEADERS_TEXT, chained_filter, plan_postfix
from bridge.redis_keys import dovecot_stream
from bridge.resources import shipped
from bridge.stack.render import MASTER_USER, render_text, ssha256

DOVECOT_FILES = ("90-mail-bridge.conf", "91-mail-bridge-master.conf", "92-mail-bridge-dedupe.conf")


@dataclass
class FileSpec:
    text: str
    mode: int
    group: str | None = None  # the group that must read it (owner stays root)


@dataclass
class Plan:
    """Everything the install sets: files, Postfix parameters and entries, and why."""

    files: dict[Path, FileSpec] = field(default_factory=dict)
    binaries: dict[Path, Path] = field(default_factory=dict)  # target -> source (the store's program)
    compiled: dict[Path, bytes] = field(default_factory=dict)  # the push hook's bytecode (bridge.hook_bytecode)
    units: list[str] = field(default_factory=list)  # systemd units to enable, in start order
    secret_files: set[Path] = field(default_factory=set)  # never printed
    main_cf: dict[str, str] = field(default_factory=dict)
    master_cf: dict[str, str] = field(default_factory=dict)  # "service/type" -> the whole entry
    notes: list[str] = field(default_factory=list)  # shown before the diff
    resolved: Options = field(default_factory=Options)
    chained_filter: str = ""


def _slot(sequence: dict[str, str], base: str, marker: str) -> str:
    for name, value in sequence.items():
        if marker in value:
            return name  # ours, from an earlier install
    return numbered_slot(sequence, base)


def existing_secrets(env_file: Path) -> dict[str, str]:
    try:
        text = env_file.read_text()
    except FileNotFoundError:
        return {}
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {k: v for k, v in values.items() if k in ("BRIDGE_JWT_SECRET", "BRIDGE_IMAP_MASTER_PASSWORD")}


def env_text(o: Options, facts: ServerFacts, kept: dict[str, str], master_password: str) -> str:
    lines = [
        "# mail-bridge settings (README, Configuration), written by `mail-bridge install` from what it",
        "# found in Dovecot and Postfix. Read by mail-bridge.service and mail-bridge-filter.service.",
        f"REDIS_URL={redis_url(o)}",
        f"BRIDGE_STREAM_PREFIX={stream_prefix(o)}",
        f"MONGODB_URL={o.mongodb_url}",
        f"BRIDGE_HOST={o.http_host}",
        f"BRIDGE_HTTP_PORT={o.http_port}",
        f"BRIDGE_IMAP_HOST={o.imap_host}",
        f"BRIDGE_IMAP_PORT={o.imap_port}",
        f"BRIDGE_IMAP_MASTER_USER={MASTER_USER}",
        f"BRIDGE_IMAP_MASTER_PASSWORD={master_password}",
        f"BRIDGE_SUBMISSION_HOST={o.submission_host}",
        f"BRIDGE_SUBMISSION_PORT={o.submission_port}",
        f"BRIDGE_SUBMISSION_STARTTLS={'yes' if facts.submission_tls else 'no'}",
        f"BRIDGE_JWT_SECRET={kept.get('BRIDGE_JWT_SECRET') or secrets.token_urlsafe(48)}",
        f"BRIDGE_FILTER_PORT={o.filter_port}",
        f"BRIDGE_REINJECT_HOST={o.reinject_host}",
        f"BRIDGE_REINJECT_PORT={o.reinject_port}",
        f"BRIDGE_SPOOL_DIR={o.spool_dir}",
        "",
    ]
    return "\n".join(lines)


def _template_values(o: Options, facts: ServerFacts, chained: str, hook: Path) -> dict[str, str]:
    """The `@NAME@` values of the shipped Dovecot and Postfix snippets (bridge.stack.render)."""
    overrides = "no_unknown_recipient_checks,no_header_body_checks,no_milters"
    return {
        "HOOK": str(hook),
        "REDIS_HOST": (o.redis_cluster[0] if o.redis_cluster else (o.redis_host, o.redis_port))[0],
        "REDIS_PORT": str((o.redis_cluster[0] if o.redis_cluster else (o.redis_host, o.redis_port))[1]),
        "SENTINEL": "" if o.redis_sentinels else "#",
        "REDIS_SENTINELS": " ".join(f"{host}:{port}" for host, port in o.redis_sentinels) or "127.0.0.1:26379",
        "REDIS_MASTER": o.redis_master,
        "STREAM": dovecot_stream(stream_prefix(o)),
        "SPOOL": str(o.spool_dir),
        "MASTER_USERS": str(o.dovecot_dir / "mail-bridge-master-users"),
        "SIEVE_DIR": str(o.hook_dir),
        "SIEVE_BEFORE_SLOT": _slot(facts.sieve_before, "sieve_before", "mail-bridge-dedupe.sieve"),
        "PUSH_DRIVER_SLOT": _slot(facts.push_drivers, "push_notification_driver", "mail-bridge-push.lua"),
        "LMTP_TRANSPORT": facts.lmtp_transport,
        "FILTER_HOST": o.filter_host,
        "FILTER_PORT": str(o.filter_port),
        "REINJECT_HOST": o.reinject_host,
        "REINJECT_PORT": str(o.reinject_port),
        "NEXT_FILTER": chained,
        # Chained: address mappings wait for the next filter's own re-injection (FILTER_README).
        "REINJECT_OVERRIDES": overrides + (",no_address_mappings" if chained else ""),
    }


def make_plan(
    o: Options,
    facts: ServerFacts,
    current_main: dict[str, str | None],
    previous_chain: str = "",
    *,
    entries: dict[str, str] | None = None,
    previous_entries: dict[str, str] | None = None,
) -> Plan:
    """The plan for resolved options `o`. `current_main` holds main.cf's present value of every
    parameter a plan may set (None: unset), so the plan can name what it changes; `previous_chain`
    is the admin's filter an earlier install chained ours before (main.cf then names ours)."""
    plan = Plan(resolved=o)
    chained = chained_filter(o, current_main, previous_chain)
    plan.chained_filter = chained
    hook = o.hook_dir / HOOK_SOURCE
    hook_source = shipped(f"hooks/{HOOK_SOURCE}").read_text()
    if facts.lua_compiler is not None:
        hook = o.hook_dir / HOOK_BYTECODE
        plan.compiled[hook] = compile_hook(hook_source, facts.lua_compiler)
        plan.notes.append(
            f"The push hook is precompiled by {facts.lua_compiler} into {hook} (Dovecot loads it for every"
            " delivery: bytecode skips the parse); the source beside it is what it was made from"
        )
    else:
        plan.notes.append(
            "The push hook is used as Lua source: Dovecot parses it for every delivery. Install the compiler"
            " of the Lua Dovecot links (Debian 12: apt-get install lua5.4) and run install again to have it"
            " precompiled, which saves Dovecot about 2 ms of CPU per delivery"
        )
    values = _template_values(o, facts, chained, hook)
    for name in DOVECOT_FILES:
        plan.files[o.dovecot_dir / "conf.d" / name] = FileSpec(
            render_text(shipped(f"dovecot-conf/{name}").read_text(), values), 0o644
        )
    plan.files[o.hook_dir / HOOK_SOURCE] = FileSpec(hook_source, 0o644)
    sieve = "mail-bridge-dedupe.sieve"
    plan.files[o.hook_dir / sieve] = FileSpec(shipped(f"hooks/{sieve}").read_text(), 0o644)
    kept = existing_secrets(o.env_file)
    users = o.dovecot_dir / "mail-bridge-master-users"
    master_password = kept.get("BRIDGE_IMAP_MASTER_PASSWORD") if users.exists() else None
    if master_password is None:
        master_password = secrets.token_urlsafe(24)
        # Dovecot's auth process reads passwd-files as default_internal_user (Dovecot 2.3,
        # "Password databases"): root owns the file, that user's group reads it.
        plan.files[users] = FileSpec(f"{MASTER_USER}:{ssha256(master_password)}\n", 0o640, facts.auth_user)
    else:
        plan.files[users] = FileSpec(users.read_text(), 0o640, facts.auth_user)
    plan.files[o.env_file] = FileSpec(env_text(o, facts, kept, master_password), 0o600)
    plan.secret_files.update({o.env_file, users})

    _plan_units(o, plan)

    checks_file = o.hook_dir / OUTBOUND_HEADERS
    postfix = plan_postfix(
        values,
        current_main,
        chained,
        f"regexp:{checks_file}",
        entries=entries or {},
        previous_entries=previous_entries or {},
    )
    plan.main_cf, plan.master_cf = postfix.main_cf, postfix.master_cf
    plan.files[checks_file] = FileSpec(OUTBOUND_HEADERS_TEXT, 0o644)
    plan.notes += postfix.notes
    plan.notes.append(
        "Dovecot lmtp_rcpt_check_quota = yes (LMTP only): a new user's home and INBOX are made at RCPT,"
        " before Sieve runs, so the first delivery is clean and its event names the UIDVALIDITY IMAP reports;"
        " cost: one INBOX open per recipient, and over-quota mail refused at RCPT"
    )
    if facts.sieve_before and values["SIEVE_BEFORE_SLOT"] not in facts.sieve_before:
        plan.notes.append(
            "your "
            + ", ".join(f"{k} = {v}" for k, v in facts.sieve_before.items())
            + f" stay(s) and run(s) first; mail-bridge's dedupe script takes {values['SIEVE_BEFORE_SLOT']}."
            " Mail your scripts file elsewhere (e.g. spam into Junk) never reaches ours (Pigeonhole ends the"
            " sequence there): a copy Postfix re-sends after a lost filter reply is not dropped in that folder"
        )
    plan.notes += _redis_name_notes(o)
    if facts.push_drivers and values["PUSH_DRIVER_SLOT"] not in facts.push_drivers:
        plan.notes.append(
            "your "
            + ", ".join(f"{k} = {v}" for k, v in facts.push_drivers.items())
            + f" stay(s); mail-bridge's hook takes {values['PUSH_DRIVER_SLOT']}"
        )
    return plan


def _redis_name_notes(o: Options) -> list[str]:
    """A warning for each Redis host given by name. The hook resolves names itself, from /etc/hosts
    and then over DNS within its 250 ms bound (the C library's resolver would block a delivery for
    as long as it takes); a name neither knows makes every event wait in the spool."""
    hosts = [o.redis_host] if not (o.redis_sentinels or o.redis_cluster) else []
    hosts += [host for host, _port in o.redis_sentinels + o.redis_cluster]
    notes = []
    for host in dict.fromkeys(hosts):
        try:
            ipaddress.ip_address(host)
            continue
        except ValueError:
            pass
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            notes.append(
                f"WARNING: the Redis host {host!r} does not resolve here ({exc}): until it does, every event"
                " the Dovecot hook makes waits in the spool. Give an address, or add the name to /etc/hosts"
            )
            continue
        notes.append(
            f"the Redis host {host!r} is a name: the Dovecot hook resolves it itself, from /etc/hosts and then"
            " over DNS (mail_bridge_dns_servers, else /etc/resolv.conf) within its time bound, and remembers it;"
            " when neither answers in time its events wait in the spool. An address avoids the lookup"
        )
    return notes


def _plan_units(o: Options, plan: Plan) -> None:
    """The systemd units, with the mail user, this install's `mail-bridge` and paths filled in."""
    try:
        group = grp.getgrgid(pwd.getpwnam(o.mail_user).pw_gid).gr_name
    except KeyError:
        raise InstallError(
            f"no user {o.mail_user!r}: give Dovecot's mail user (its mail_uid) with --mail-user"
        ) from None
    values = {
        "MAIL_USER": o.mail_user,
        "MAIL_GROUP": group,
        "ENV_FILE": str(o.env_file),
        "MAIL_BRIDGE": o.mail_bridge_bin,
        "SPOOL": str(o.spool_dir),
        "FERRETDB": str(o.hook_dir / "ferretdb"),
        "STORE_ADDR": f"127.0.0.1:{o.store_port}",
    }
    names = ["mail-bridge-filter.service", "mail-bridge.service", "mail-bridge@.service"]
    if o.store:
        names.insert(0, "mail-bridge-store.service")
        target = o.hook_dir / "ferretdb"
        given = Path(o.ferretdb_bin).resolve() if o.ferretdb_bin else None
        # Given, or installed by an earlier run; else install() builds it (scripts/install-ferretdb.sh).
        plan.binaries[target] = given if given is not None and given.exists() else target
    for name in names:
        text = render_text(shipped(f"deploy/systemd/{name}.in").read_text(), values)
        plan.files[o.systemd_dir / name] = FileSpec(text, 0o644)
    plan.units = [n for n in names if "@" not in n]
