"""Every Redis key the bridge and the filter read or write: one function per key, named here only.

Every name starts with the configured prefix (BRIDGE_STREAM_PREFIX, "mail" by default), so several
deployments can share one Redis; on Redis Cluster the prefix is a hash tag (`{mail}`), which puts
every key in one slot, as the scripts that touch several keys at once require (Settings.validate
refuses any other prefix there).

Pure: names only, no I/O. Each docstring says what the key holds, its type and how long it lives;
the owning module keeps the TTL constant and is the one that reads and writes the key.

Written by others, outside this package, under names they build themselves (kept equal to these by
the stack's configuration, `mail_bridge_stream` for the hook, the notifier's STREAM argument):

* `hooks/mail-bridge-push.lua` (the Dovecot hook) and `hooks/mail-bridge-sieve-notify.py` XADD to
  `dovecot_stream` only; they touch no other key.
"""

from __future__ import annotations

import hashlib

# ------------------------------------------------------------------ ingest (bridge.streams, smtp_filter)


def dovecot_stream(prefix: str) -> str:
    """Stream of the Dovecot hook's events (field `e`: one msgpack event, bridge.codec), trimmed
    with MAXLEN ~ BRIDGE_STREAM_MAXLEN; no TTL. Also written by the Lua hook and the Sieve notifier,
    and by the spool drainer for what they spooled."""
    return f"{prefix}:dovecot"


def postfix_stream(prefix: str) -> str:
    """Stream of the content filter's `mta.accepted` events, as `dovecot_stream`."""
    return f"{prefix}:postfix"


def events_lost(prefix: str) -> str:
    """Hash, stream name -> count of events a Python producer could neither publish nor spool
    (bridge.streams.Publisher), read for /metrics; no TTL."""
    return f"{prefix}:events:lost"


def filter_done(prefix: str, event_key: str) -> str:
    """String "1": the filter re-injected the mail whose `mta.accepted` has this key, so Postfix
    re-sending it after a lost reply is not re-injected twice (bridge.smtp_filter); TTL 7 days,
    longer than Postfix keeps a mail queued."""
    return f"{prefix}:filter:done:{event_key}"


# ------------------------------------------------------------------ browser events (bridge.fanout_publish)


def room_channel(prefix: str, account: str) -> str:
    """Sharded PUB/SUB channel, per account (lower case): its browser events as the publish script
    sends them; the nodes with a socket of the account subscribe (bridge.fanout). A channel, not a
    key: it holds nothing."""
    return f"{prefix}:room:{account.lower()}"


def resume_log(prefix: str, account: str) -> str:
    """Stream, per account (lower case): its logged browser events (fields n name, p msgpack
    payload) under their ids (the events' `eventId`), for `lastEventId` resume and for a node that
    missed some on the account's channel; MAXLEN ~ BRIDGE_RESUME_LOG_LEN, no TTL."""
    return f"{prefix}:browser:{account.lower()}"


def relayed(prefix: str, event_key: str) -> str:
    """String, per ingest event key: the comma-separated ids its browser events were published
    under, set by the publish script with them (once-per-key relay); TTL 1 day."""
    return f"{prefix}:relayed:{event_key}"


def published(prefix: str, call_id: str) -> str:
    """String, per publish call (a random id): as `relayed`, so a call redis-py repeats after a lost
    reply is not published twice; TTL 5 minutes."""
    return f"{prefix}:published:{call_id}"


# ------------------------------------------------------------------ a mail's facts (bridge.mail_facts)


def _mail_digest(account: str, message_id: str) -> str:
    """32 hex digits of SHA-256 over "<account, lower case>\\0<Message-ID>" (an address holds no
    NUL, so the first one ends the account). Scoped to the account: a sender who copies another
    mail's Message-ID reaches only the mail of the accounts it sends to."""
    name = f"{account.lower()}\0{message_id}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(name).hexdigest()[:32]


def mail_facts(prefix: str, account: str, message_id: str) -> str:
    """Hash, per account and Message-ID: the content filter's summaries of the mails with that id
    (msgpack maps hasAttachments, size, category) and which delivery claimed which
    (bridge.mail_facts says how), read by the relay and the index; TTL 1 day. Not the `index:facts:`
    string of earlier versions, which kept one summary per id: during a rolling upgrade a mail whose
    summary and delivery are read by nodes of different versions is shown without its facts."""
    return f"{prefix}:facts:{_mail_digest(account, message_id)}"


def facts_waiting(prefix: str, account: str, message_id: str) -> str:
    """List, per account and Message-ID: the index's deliveries (kind, mailbox, claim, document id)
    indexed before their summary came, completed by the summary when it comes; TTL 1 day."""
    return f"{prefix}:facts:wait:{_mail_digest(account, message_id)}"


# ------------------------------------------------------------------ index counts (bridge.index_cache)


def index_unread(prefix: str, account: str) -> str:
    """Hash, mailbox -> unread count of the account's mailbox; no TTL (a missing field is counted
    from the store)."""
    return f"{prefix}:index:unread:{account}"


def index_total(prefix: str, account: str) -> str:
    """Hash, mailbox -> message count, as `index_unread`."""
    return f"{prefix}:index:total:{account}"


def index_counts_version(prefix: str, account: str) -> str:
    """Hash, mailbox -> version of its counts: raised whenever they are moved, dropped or kept
    afresh, to at least the Redis clock in microseconds (so it also rises after Redis lost it);
    no TTL."""
    return f"{prefix}:index:version:{account}"


def index_writing(prefix: str, account: str) -> str:
    """Hash, mailbox -> number of writers between its documents and its counts; TTL 5 minutes
    (a writer that died leaves its mark no longer)."""
    return f"{prefix}:index:writing:{account}"


# ------------------------------------------------------------------ listing order (bridge.listing_order)


def listing_order(prefix: str, account: str, mailbox: str) -> str:
    """Sorted set of one mailbox's messages (member `<UID, 10 digits>:<UIDVALIDITY>`, score the
    arrival in Unix seconds), the order of its listing, with the member `built` scored -inf once
    complete; no TTL (dropped with the mailbox)."""
    return f"{prefix}:order:{_mailbox_digest(account, mailbox)}"


def search_digests(prefix: str, account: str, mailbox: str) -> str:
    """Hash beside one mailbox's listing order: member -> the message's search digest
    (bridge.search_match), with the field `built` once a fill wrote every message's; no TTL
    (dropped with the order)."""
    return f"{prefix}:search:{_mailbox_digest(account, mailbox)}"


def listing_generation(prefix: str, account: str) -> str:
    """Hash, mailbox -> how often its set was dropped (a fill that read the store before the last
    drop does not count); no TTL."""
    return f"{prefix}:order:generation:{account}"


def _mailbox_digest(account: str, mailbox: str) -> str:
    # A mailbox name may hold any character (RFC 3501 5.1, modified UTF-7 decoded): hashed, as the
    # facts' keys are, so a key never holds a separator or a newline from a name.
    return hashlib.sha256(f"{account}\0{mailbox}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


# ------------------------------------------------------------------ REST (mail_service, uploads, rate_limit)


def body_cache(prefix: str, email_id: str, *, remote_images: bool) -> str:
    """String: one message parsed for display (msgpack map), with or without its remote images;
    TTL 1 hour."""
    return f"{prefix}:body:{email_id}" + (":remote-images" if remote_images else "")


def upload(prefix: str, account: str, upload_id: str) -> str:
    """String: one staged upload of the account (msgpack map filename, contentType, data); TTL
    24 hours."""
    return f"{prefix}:upload:{account.lower()}:{upload_id}"


def uploads_pending(prefix: str, account: str) -> str:
    """Sorted set: the account's live uploads as "<id> <size>", scored by expiry time; TTL that of
    its newest upload."""
    return f"{prefix}:uploads:{account.lower()}"


def login_address(prefix: str, address: str) -> str:
    """String: when (Redis milliseconds) the failed-login bucket of a client address (IPv6: its
    /64) is full again; expires then."""
    return f"{prefix}:login:address:{address}"


def login_account(prefix: str, account: str) -> str:
    """String: as `login_address`, for the failed logins one account took."""
    return f"{prefix}:login:account:{account}"


def login_known(prefix: str, account: str) -> str:
    """Sorted set: the client addresses the account last signed in from (at most 20), scored by
    when; TTL 30 days."""
    return f"{prefix}:login:known:{account}"


# ------------------------------------------------------------------ Web Push (bridge.push_presence)


def push_open(prefix: str, account: str, subscription_id: str) -> str:
    """Sorted set, per account and push subscription: the sockets ("<node> <sid>") of that browser
    that are connected, scored by when their mark lapses (Unix milliseconds), refreshed by their
    node while they stay; TTL that of the newest mark. A subscription with a live mark gets no push."""
    return f"{prefix}:push:open:{account.lower()}:{subscription_id}"
