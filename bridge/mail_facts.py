"""A mail's facts: what the content filter learnt of it (attachments, size, category) that Dovecot's
delivery event does not say, kept in Redis until the delivery comes. The one place that reads and
writes them, for the relay (the browsers' `new_email`) and for the index (its documents).

The filter publishes its summary (`mta.accepted`) as soon as Postfix has the mail back, before
Dovecot delivers it; the two arrive on two streams, in either order. The summary is stored once per
account it describes (each envelope recipient, and the submitter for its Sent copy) under the
account and the Message-ID (bridge.redis_keys.mail_facts): by Message-ID alone, anyone who knew or
guessed the Message-ID of another user's mail could send one with the same id and change how that
mail is shown; scoped to the account, a sender reaches only the mailboxes it sends to. One encoding:
a msgpack map {hasAttachments, size, category}; entries expire after FACTS_TTL_S.

Two readers, each in one round trip per read of events:
* the relay (`remember_and_read`): stores the read's summaries and reads its deliveries' facts in
  one pipeline, in event order, so a summary earlier in the read is seen by a delivery later in it;
  a delivery whose summary has not come is shown without facts;
* the index (`meet`): one script where a summary is stored and takes the list of deliveries indexed
  before it (bridge.redis_keys.facts_waiting), and a delivery reads its facts or, only if they have
  not come, leaves its document id on that list. Either the delivery sees the summary or the summary
  sees the delivery, and a delivery that saw its summary is done: a later mail with the same
  Message-ID does not rewrite it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis

from bridge import redis_keys
from bridge.browser_events import MtaFacts
from bridge.events import Event, MessageAdded, MtaAccepted
from bridge.redis_text import text
from bridge.store import FACTS, message_doc_id

# How long a summary waits for its delivery (and a delivery's id for its summary): a mail delivered
# later than this after the filter passed it is shown and indexed without the filter's facts.
FACTS_TTL_S = 86400

# KEYS: per summary or delivery, its facts and waiting keys. ARGV: the TTL, then per one "s" and the
# packed facts (a summary), or "d" and the document id (a delivery). Returns per summary the ids
# waiting for it; per delivery its facts, or nil when they have not come (its id now waits).
_MEET = """
local out = {}
for i = 1, #KEYS / 2 do
  local facts, wait = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, value = ARGV[2 * i], ARGV[2 * i + 1]
  if kind == 's' then
    redis.call('SET', facts, value, 'EX', ARGV[1])
    out[i] = redis.call('SMEMBERS', wait)
    redis.call('DEL', wait)
  else
    local found = redis.call('GET', facts)
    if found then
      out[i] = found
    else
      redis.call('SADD', wait, value)
      redis.call('EXPIRE', wait, ARGV[1])
      out[i] = false
    end
  end
end
return out
"""


def summary_accounts(event: MtaAccepted) -> set[str]:
    """Whose mail the summary describes: each envelope recipient's, and the submitter's Sent copy."""
    accounts = {rcpt.lower() for rcpt in event.rcpt_to if rcpt}
    if event.sasl_user:
        accounts.add(event.sasl_user.lower())
    return accounts


def summary_facts(event: MtaAccepted) -> dict[str, Any]:
    """The facts of the summary, as the index stores them (the keys of bridge.store.FACTS)."""
    return {"hasAttachments": bool(event.attachments), "size": event.size, "category": event.category}


def _decode(raw: bytes) -> dict[str, Any]:
    found = msgpack.unpackb(raw, raw=False)
    return {k: found[k] for k in FACTS}


class MailFacts:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._meet = redis.register_script(_MEET)

    def _key(self, account: str, message_id: str) -> str:
        return redis_keys.mail_facts(self.prefix, account, message_id)

    async def remember_and_read(self, events: Sequence[Event]) -> list[MtaFacts | None]:
        """For the relay: store the read's summaries and return each delivery's facts (None for
        any other event, or a delivery whose summary has not come). One pipeline, in event order."""
        pipe = self.redis.pipeline(transaction=False)
        asked: list[tuple[int, int]] = []  # (event index, its GET's place in the pipeline)
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                packed = msgpack.packb(summary_facts(event))
                for account in sorted(summary_accounts(event)):
                    pipe.set(self._key(account, event.message_id), packed, ex=FACTS_TTL_S)
            elif isinstance(event, MessageAdded) and event.message_id:
                asked.append((index, len(pipe)))
                pipe.get(self._key(event.account, event.message_id))
        found: list[MtaFacts | None] = [None] * len(events)
        if not len(pipe):
            return found
        replies = await pipe.execute()
        for index, place in asked:
            raw = replies[place]
            if isinstance(raw, bytes):
                facts = _decode(raw)
                found[index] = MtaFacts(bool(facts["hasAttachments"]), int(facts["size"]), str(facts["category"]))
        return found

    async def meet(self, events: Sequence[Event]) -> tuple[dict[int, dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """For the index: ({event index: facts} for the read's deliveries whose summary is known,
        [(message document id, facts)] for deliveries indexed before their summary came)."""
        keys: list[str] = []
        args: list[str | bytes | int] = [FACTS_TTL_S]
        plan: list[tuple[int, int, int]] = []  # (event index, place of its first reply, replies)
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                accounts = sorted(summary_accounts(event))
                plan.append((index, len(keys) // 2, len(accounts)))
                packed = msgpack.packb(summary_facts(event))
                for account in accounts:
                    keys += [self._key(account, event.message_id), self._waiting(account, event.message_id)]
                    args += ["s", packed]
            elif isinstance(event, MessageAdded) and event.message_id:
                plan.append((index, len(keys) // 2, 1))
                keys += [self._key(event.account, event.message_id), self._waiting(event.account, event.message_id)]
                args += ["d", message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)]
        facts: dict[int, dict[str, Any]] = {}
        early: list[tuple[str, dict[str, Any]]] = []
        if not keys:
            return facts, early
        replies: Any = await self._meet(keys=keys, args=args)
        for index, place, count in plan:
            event = events[index]
            if isinstance(event, MtaAccepted):
                for waiting in replies[place : place + count]:
                    early.extend((text(doc_id), summary_facts(event)) for doc_id in waiting or ())
            elif isinstance(replies[place], bytes):
                facts[index] = _decode(replies[place])
        return facts, early

    def _waiting(self, account: str, message_id: str) -> str:
        return redis_keys.facts_waiting(self.prefix, account, message_id)
