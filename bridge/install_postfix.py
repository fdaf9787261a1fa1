"""Postfix's part of the install plan: main.cf parameters and master.cf entries, and why each.

Pure apart from reading the shipped snippets (`postfix-conf/`, FILTER_README "Advanced"). It decides
whether an admin's content filter is chained after ours or refused, merges our
receive_override_options into theirs, adds our outbound header checks to their SMTP transports
after their own, and explains every parameter of theirs that changes and what each global change
costs. The values the snippets need come from `bridge.install_plan`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bridge.install_discovery import ServerFacts
from bridge.install_options import OUR_TRANSPORT, InstallError, Options
from bridge.resources import shipped
from bridge.stack.render import render_text

_PARAM = re.compile(r"^([A-Za-z0-9_.@-]+)\s*=\s*(.*)$")


@dataclass
class PostfixPlan:
    """What the install sets in Postfix, and the notes explaining it, in the order they are shown."""

    main_cf: dict[str, str] = field(default_factory=dict)
    master_cf: dict[str, str] = field(default_factory=dict)  # "service/type" -> the whole entry
    notes: list[str] = field(default_factory=list)


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


def main_cf_names(o: Options, facts: ServerFacts) -> list[str]:
    """Every parameter a plan may set, to read their present values first."""
    names = ["content_filter", "receive_override_options", "smtp_header_checks"]
    text = shipped("postfix-conf/main.cf.snippet").read_text().replace("@LMTP_TRANSPORT@", facts.lmtp_transport)
    for line in text.splitlines():
        found = _PARAM.match(line)
        if found and not line.startswith("#") and "@" not in found.group(1):
            names.append(found.group(1))
    return sorted(set(names))


def chained_filter(o: Options, current_main: dict[str, str | None], previous_chain: str) -> str:
    """The admin's content filter that ours hands mail on to ("" when none): the one main.cf names
    now, else the one an earlier install chained (main.cf then names ours). An admin's filter is
    refused unless they asked to chain ours before it: we never take a setting they wrote."""
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
    return chained


def plan_postfix(
    values: dict[str, str],
    current_main: dict[str, str | None],
    chained: str,
    checks: str,
    *,
    entries: dict[str, str],
    previous_entries: dict[str, str],
) -> PostfixPlan:
    """main.cf and master.cf as the snippets rendered with `values` say, merged with the admin's
    (`current_main`, master.cf's `entries`); `checks` is our outbound header checks table."""
    plan = PostfixPlan()
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
    outbound = _outbound_entries(entries, checks, current_main.get("smtp_header_checks"), previous=previous_entries)
    for key, entry in outbound.items():
        plan.master_cf[key] = entry
        plan.notes.append(
            f"master.cf {key} (yours) gains -o smtp_header_checks: our X-Mail-Bridge-Id stamp, which only"
            " local delivery needs, is removed from mail leaving over SMTP; your own header checks still apply"
        )
    return plan
