"""What `mail-bridge install` would write, decided from its options and the server's facts.

Contract: pure apart from reading the shipped templates and the existing env file. Given the
options (flags, else what the last install remembered, else defaults) and the `ServerFacts` found by
`bridge.install_discovery`, it decides every value the install writes and returns a `Plan`: files
(content, mode, group), Postfix parameters and master.cf entries, and a plain-language account of
each setting of the admin's that it touches and what each global change costs. It never takes a
setting the admin wrote: our Sieve script and push driver take the next free numbered slot, and an
existing content filter is refused unless the admin asked to chain ours before it.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import pwd
import re
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError
from bridge.install_discovery import ServerFacts, numbered_slot
from bridge.resources import shipped
from bridge.stack.render import MASTER_USER, render_text, ssha256

DOVECOT_FILES = ("90-mail-bridge.conf", "91-mail-bridge-master.conf", "92-mail-bridge-dedupe.conf")
OUR_TRANSPORT = "mail-bridge"
OUR_CLEANUP = "mail-bridge-cleanup"
DEFAULT_FILTER_PORT = 10025
_PARAM = re.compile(r"^([A-Za-z0-9_.@-]+)\s*=\s*(.*)$")


class InstallError(BridgeError):
    """A validation or a command of the installer failed; nothing more is written."""


@dataclass(frozen=True)
class Options:
    """Everything the admin may choose. Zero and empty values mean "find it" (see `resolve`)."""

    dovecot_dir: Path = Path("/etc/dovecot")
    postfix_dir: Path = Path("/etc/postfix")
    hook_dir: Path = Path("/usr/local/lib/mail-bridge")
    spool_dir: Path = Path("/var/spool/mail-bridge")
    env_file: Path = Path("/etc/mail-bridge/mail-bridge.env")
    state_file: Path = Path("/var/lib/mail-bridge/install-state.json")
    mail_user: str = ""  # Dovecot's mail_uid, else vmail
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    # With Redis Sentinel: the sentinels and the master's name (then redis_host/port are unused).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master: str = "mymaster"
    # On Redis Cluster: some of its nodes (the hook is told the first; it follows MOVED from there).
    redis_cluster: tuple[tuple[str, int], ...] = ()
    filter_host: str = "127.0.0.1"
    filter_port: int = 0  # 10025, or the next port no master.cf service holds
    reinject_host: str = "127.0.0.1"
    reinject_port: int = 0  # the filter's port + 1, or the next free one
    http_host: str = "127.0.0.1"
    http_port: int = 18080
    imap_host: str = "127.0.0.1"
    imap_port: int = 0  # Dovecot's imap listener
    submission_host: str = "127.0.0.1"
    submission_port: int = 0  # Postfix's submission service
    mongodb_url: str = ""  # a MongoDB of the site's (replica set URL); empty with --store
    chain_content_filter: bool = False
    # The embedded store: FerretDB from `ferretdb_bin` (or built with Go), its own unit, on loopback.
    store: bool = False
    ferretdb_bin: str = ""
    store_port: int = 27017
    systemd_dir: Path = Path("/etc/systemd/system")
    mail_bridge_bin: str = ""  # the `mail-bridge` the units run: the one running this install

    def remembered(self) -> dict[str, Any]:
        """What the state file keeps, so `--check` and a re-run need no flags again."""
        data = dataclasses.asdict(self)
        for name in ("state_file",):
            data.pop(name)
        if self.store:
            data["mongodb_url"] = ""  # derived from the store's port on every run
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}

    @classmethod
    def from_layers(cls, remembered: dict[str, Any], given: dict[str, Any]) -> Options:
        """Flags given now, else what the last install remembered, else the defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for layer in (remembered, given):
            for name, raw in layer.items():
                if name not in fields or raw is None:
                    continue
                default = fields[name].default
                if isinstance(default, Path):
                    values[name] = Path(raw)
                elif isinstance(default, tuple):
                    values[name] = tuple((str(h), int(p)) for h, p in raw)
                else:
                    values[name] = raw
        # A store named now replaces the one remembered: your MongoDB, or the embedded one.
        if given.get("mongodb_url") and given.get("store") is None:
            values["store"] = False
        if given.get("store") and given.get("mongodb_url") is None:
            values["mongodb_url"] = ""
        return cls(**values)


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
    units: list[str] = field(default_factory=list)  # systemd units to enable, in start order
    secret_files: set[Path] = field(default_factory=set)  # never printed
    main_cf: dict[str, str] = field(default_factory=dict)
    master_cf: dict[str, str] = field(default_factory=dict)  # "service/type" -> the whole entry
    notes: list[str] = field(default_factory=list)  # shown before the diff
    resolved: Options = field(default_factory=Options)
    chained_filter: str = ""


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


def _is_ours(entry_key: str, entry: str) -> bool:
    return entry_key.startswith(OUR_TRANSPORT) or f"cleanup_service_name={OUR_CLEANUP}" in entry


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _free_port(facts: ServerFacts, wanted: int, avoid: set[int], host: str) -> int:
    """`wanted`, or the next port that no admin's master.cf service holds and nothing listens on."""
    port = wanted
    while port in avoid or port in facts.inet_ports or _listening(host, port):
        port += 1
    return port


def resolve(o: Options, facts: ServerFacts, master_entries: dict[str, str]) -> Options:
    """Fill in what the admin left to us: the mail user, the filter's ports, Dovecot's IMAP port and
    Postfix's submission port. A port the admin gave that another service holds is refused."""
    theirs = {port: key for port, key in facts.inet_ports.items() if not _is_ours(key, master_entries.get(key, ""))}
    ours = dataclasses.replace(facts, inet_ports=theirs)
    for name, port in (("--filter-port", o.filter_port), ("--reinject-port", o.reinject_port)):
        if port and port in theirs:
            raise InstallError(f"{name} {port} is master.cf's {theirs[port]}: choose another port")
    filter_port = o.filter_port or _free_port(ours, DEFAULT_FILTER_PORT, set(), o.filter_host)
    reinject_port = o.reinject_port or _free_port(ours, filter_port + 1, {filter_port}, o.reinject_host)
    if filter_port == reinject_port:
        raise InstallError("--filter-port and --reinject-port must differ")
    if o.store and o.mongodb_url:
        raise InstallError("--store (the embedded FerretDB) or --mongodb-url (your MongoDB), not both")
    if not o.store and not o.mongodb_url:
        raise InstallError(
            "the bridge needs a MongoDB-compatible store: give --mongodb-url of your MongoDB (a replica set"
            " URL, e.g. mongodb://db1,db2,db3/mailbridge?replicaSet=rs0), or --store for the embedded FerretDB"
            " (SQLite, its own unit, loopback only)"
        )
    return dataclasses.replace(
        o,
        mongodb_url=o.mongodb_url or f"mongodb://127.0.0.1:{o.store_port}/",
        mail_bridge_bin=o.mail_bridge_bin or str(Path(sys.executable).parent / "mail-bridge"),
        mail_user=o.mail_user or facts.mail_uid or "vmail",
        filter_port=filter_port,
        reinject_port=reinject_port,
        imap_port=o.imap_port or facts.imap_port or 143,
        submission_port=o.submission_port or facts.submission_port or 587,
    )


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


# Shown with the diff: what each global change is for and what it costs (README, "Production").
WHY = {
    "content_filter": "every accepted mail passes the bridge's filter once (the mta.accepted event);"
    " the filter answers 4xx when it cannot publish or re-inject, so mail waits in the queue, never bounces",
    "receive_override_options": "address rewriting happens once, after the filter (FILTER_README)",
    "enable_long_queue_ids": "queue ids never repeat, so a log line or an event never names two mails",
    "smtpd_sasl_authenticated_header": "the filter reads whose outbound mail it is and removes the login"
    " from the mail before it goes on: recipients never see it",
    "mail-bridge_destination_concurrency_limit": "up to 50 mails in the filter at once (the transport's own"
    " limit; Postfix's default of 20 left mail waiting in the queue at 100 mails/s)",
    "_destination_recipient_limit": "one mailbox, one delivery at a time (Dovecot's duplicate database and"
    " the order of message.new events depend on it); only deliveries to Dovecot; cost: a mail to n local"
    " users is n LMTP deliveries",
    "_destination_concurrency_limit": "see the recipient limit above",
}


def _why(name: str) -> str:
    for key, text in WHY.items():
        if name == key or (key.startswith("_") and name.endswith(key)):
            return text
    return ""


OUTBOUND_HEADERS = "mail-bridge-outbound-headers.regexp"
# Postfix header_checks(5): the stamp only serves Dovecot's dedupe script at local delivery.
OUTBOUND_HEADERS_TEXT = """# mail-bridge: headers that serve local delivery only (the dedupe script's X-Mail-Bridge-Id),
# removed from mail leaving this server over SMTP. Used by the smtp and relay transports
# (master.cf -o smtp_header_checks), never by LMTP delivery to Dovecot. header_checks(5).
/^X-Mail-Bridge-Id:/ IGNORE
"""


def _outbound_entries(
    entries: dict[str, str], checks: str, admins_checks: str | None, *, previous: dict[str, str]
) -> dict[str, str]:
    """The admin's outbound SMTP transports (smtp/unix, relay/unix running smtp(8)) with our header
    checks added after theirs (their main.cf smtp_header_checks, or their own -o value).
    `previous` holds the entries as they were before an earlier install, so a re-run adds ours once."""
    out: dict[str, str] = {}
    for key in ("smtp/unix", "relay/unix"):
        entry = previous.get(key) or entries.get(key)
        if not entry or entry.split()[7:8] != ["smtp"]:
            continue
        theirs = re.search(r"-o\s+smtp_header_checks=(\S*)", entry)
        if theirs is not None:
            merged = ",".join(x for x in (theirs.group(1), checks) if x)
            out[key] = entry[: theirs.start()] + f"-o smtp_header_checks={merged}" + entry[theirs.end() :]
        else:
            merged = ",".join(x for x in ((admins_checks or "").replace(" ", ""), checks) if x)
            out[key] = f"{entry} -o smtp_header_checks={merged}"
    return out


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
    chained = previous_chain
    existing_filter = current_main.get("content_filter")
    if existing_filter and not existing_filter.startswith(OUR_TRANSPORT + ":"):
        if not o.chain_content_filter:
            raise InstallError(
                f"main.cf already has content_filter = {existing_filter} (another filter, such as amavis)."
                " mail-bridge must see every accepted mail. Either run again with --chain-content-filter:"
                " mail then passes mail-bridge's filter first and goes on to yours exactly as before"
                " (your filter, its ports and its re-injection stay as they are); or remove your"
                " content_filter yourself first. Nothing was changed."
            )
        chained = existing_filter
    plan.chained_filter = chained
    overrides = "no_unknown_recipient_checks,no_header_body_checks,no_milters"
    values = {
        "HOOK": str(o.hook_dir / "mail-bridge-push.lua"),
        "REDIS_HOST": (o.redis_cluster[0] if o.redis_cluster else (o.redis_host, o.redis_port))[0],
        "REDIS_PORT": str((o.redis_cluster[0] if o.redis_cluster else (o.redis_host, o.redis_port))[1]),
        "SENTINEL": "" if o.redis_sentinels else "#",
        "REDIS_SENTINELS": " ".join(f"{host}:{port}" for host, port in o.redis_sentinels) or "127.0.0.1:26379",
        "REDIS_MASTER": o.redis_master,
        "STREAM": f"{stream_prefix(o)}:dovecot",
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
    for name in DOVECOT_FILES:
        plan.files[o.dovecot_dir / "conf.d" / name] = FileSpec(
            render_text(shipped(f"dovecot-conf/{name}").read_text(), values), 0o644
        )
    for hook in ("mail-bridge-push.lua", "mail-bridge-dedupe.sieve"):
        plan.files[o.hook_dir / hook] = FileSpec(shipped(f"hooks/{hook}").read_text(), 0o644)
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

    main = parse_main_snippet(render_text(shipped("postfix-conf/main.cf.snippet").read_text(), values))
    theirs = current_main.get("receive_override_options")
    if theirs and "receive_override_options" in main:
        merged = [x.strip() for x in theirs.split(",") if x.strip()]
        merged += [x for x in main["receive_override_options"].split(",") if x.strip() not in merged]
        main["receive_override_options"] = ",".join(merged)
    for name, value in main.items():
        old = current_main.get(name)
        if old is not None and old != value and not old.startswith(OUR_TRANSPORT):
            plan.notes.append(f"main.cf {name}: yours is {old!r}; becomes {value!r}")
        why = _why(name)
        if why:
            plan.notes.append(f"main.cf {name} = {value}: {why}")
    if chained:
        plan.notes.append(
            f"your content_filter {chained} stays in the path: mail-bridge's re-injection hands mail on to it"
        )
    plan.main_cf = main
    plan.master_cf = parse_master_snippet(render_text(shipped("postfix-conf/master.cf.snippet").read_text(), values))
    checks_file = o.hook_dir / OUTBOUND_HEADERS
    plan.files[checks_file] = FileSpec(OUTBOUND_HEADERS_TEXT, 0o644)
    outbound = _outbound_entries(
        entries or {},
        f"regexp:{checks_file}",
        current_main.get("smtp_header_checks"),
        previous=previous_entries or {},
    )
    for key, entry in outbound.items():
        plan.master_cf[key] = entry
        plan.notes.append(
            f"master.cf {key} (yours) gains -o smtp_header_checks: our X-Mail-Bridge-Id stamp, which only"
            " local delivery needs, is removed from mail leaving over SMTP; your own header checks still apply"
        )
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


def main_cf_names(o: Options, facts: ServerFacts) -> list[str]:
    """Every parameter a plan may set, to read their present values first."""
    names = ["content_filter", "receive_override_options", "smtp_header_checks"]
    text = shipped("postfix-conf/main.cf.snippet").read_text().replace("@LMTP_TRANSPORT@", facts.lmtp_transport)
    for line in text.splitlines():
        found = _PARAM.match(line)
        if found and not line.startswith("#") and "@" not in found.group(1):
            names.append(found.group(1))
    return sorted(set(names))
