"""A mail's facts: what the content filter learnt of it (attachments, size, category) that Dovecot's
delivery event does not say, kept in Redis until the delivery comes. The one place that reads and
writes them, for the relay (the browsers' `new_email`) and for the index (its documents).

The filter publishes its summary (`mta.accepted`) as soon as Postfix has the mail back, before
Dovecot delivers it; the two arrive on two streams, in either order, and the relay and the index
each read both. A summary is kept once per account it describes (each envelope recipient, and the
submitter for its Sent copy) under the account and the Message-ID (bridge.redis_keys.mail_facts): by
Message-ID alone, anyone who knew or guessed the Message-ID of another user's mail could send one
with the same id and change how that mail is shown; scoped to the account, a sender reaches only
the mailboxes it sends to.

A Message-ID is still not one mail: a sender may reuse it, and the same account then receives two
mails under one id, each with its own summary. So summaries are never overwritten: each is kept,
numbered in the order the first reader met it, and a delivery (`message.new`, one mail arriving in
one mailbox) *claims* the oldest summary not yet claimed in its mailbox. The claim is kept in Redis,
so the relay and the index, whichever reads first, agree; a second mail with the same id, delivered
before its own summary came, finds the first one's summary claimed and waits instead of taking it.
Copies of one mail into several mailboxes (Sieve `fileinto :copy`) each claim it in their own
mailbox. An append (`message.append`: a Sent copy, a copy or move) claims nothing and takes the
newest summary.

Both readers make one script call per read of events (`remember_and_read` for the relay, `meet`
for the index), in event order, so a summary earlier in the read is seen by a delivery later in it.
Only the index waits: a delivery with no summary for it leaves its document id on a list
(bridge.redis_keys.facts_waiting), and the summary that comes later completes it — either the
delivery sees the summary or the summary sees the delivery. The relay shows such a delivery
without facts. Entries expire FACTS_TTL_S after their last write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis

from bridge import redis_keys
from bridge.browser_events import MtaFacts
from bridge.events import Event, MessageAdded, MessageNew, MtaAccepted
from bridge.redis_text import text
from bridge.store import FACTS, message_doc_id

# How long a summary waits for its delivery (and a delivery's id for its summary): a mail delivered
# later than this after the filter passed it is shown and indexed without the filter's facts.
FACTS_TTL_S = 86400

# KEYS: per item its facts hash and its waiting list. ARGV[1]: the TTL; ARGV[2]: "1" when the
# reader keeps deliveries waiting (the index). Then per item four values:
#   "s", the summary's event key, its packed facts, ""            a summary
#   "n", the mailbox, the delivery's claim (uidvalidity:uid), doc id   a message.new
#   "a", "", "", doc id                                           a message.append
# The hash: n = summaries kept; k:<event key> = its number; s:<number> = its facts;
# m:<number>\0<mailbox> = claimed there; c:<mailbox>\0<claim> = the number that delivery claimed.
# Returns per summary a flat list of the waiting document ids it completes, each followed by its
# facts (empty for the relay); per delivery its facts, or false when none is there for it.
_MEET = """
local ttl, waits = ARGV[1], ARGV[2] == '1'

local function claim(h, mailbox, who)
  local seq = redis.call('HGET', h, 'c:' .. mailbox .. '\\0' .. who)
  if seq then return seq end
  local n = tonumber(redis.call('HGET', h, 'n') or '0')
  for s = 1, n do
    if redis.call('HSETNX', h, 'm:' .. s .. '\\0' .. mailbox, who) == 1 then
      redis.call('HSET', h, 'c:' .. mailbox .. '\\0' .. who, s)
      return s
    end
  end
  return false
end

local function facts_for(h, kind, mailbox, who)
  if kind == 'n' then
    local seq = claim(h, mailbox, who)
    return seq and redis.call('HGET', h, 's:' .. seq)
  end
  local n = redis.call('HGET', h, 'n')
  return n and redis.call('HGET', h, 's:' .. n)
end

local out = {}
for i = 1, #KEYS / 2 do
  local h, wait = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, a, b, c = ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2]
  if kind == 's' then
    if not redis.call('HGET', h, 'k:' .. a) then
      local seq = redis.call('HINCRBY', h, 'n', 1)
      redis.call('HSET', h, 'k:' .. a, seq, 's:' .. seq, b)
    end
    redis.call('EXPIRE', h, ttl)
    local done = {}
    if waits then
      local still = {}
      for _, member in ipairs(redis.call('LRANGE', wait, 0, -1)) do
        local wkind, mailbox, who, doc = string.match(member, '^(%a)%z(.-)%z(.-)%z(.*)$')
        local found = facts_for(h, wkind, mailbox, who)
        if found then
          done[#done + 1] = doc
          done[#done + 1] = found
        else
          still[#still + 1] = member
        end
      end
      redis.call('DEL', wait)
      if #still > 0 then
        redis.call('RPUSH', wait, unpack(still))
        redis.call('EXPIRE', wait, ttl)
      end
    end
    out[i] = done
  else
    local found = facts_for(h, kind, a, b)
    if found then
      redis.call('EXPIRE', h, ttl)
      out[i] = found
    else
      if waits then
        redis.call('RPUSH', wait, kind .. '\\0' .. a .. '\\0' .. b .. '\\0' .. c)
        redis.call('EXPIRE', wait, ttl)
      end
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

    async def remember_and_read(self, events: Sequence[Event]) -> list[MtaFacts | None]:
        """For the relay: keep the read's summaries and return each delivery's facts (None for any
        other event, or a delivery whose summary has not come). One script call, in event order."""
        replies, plan = await self._run(events, waits=False)
        found: list[MtaFacts | None] = [None] * len(events)
        for index, place, _count in plan:
            raw = replies[place]
            if isinstance(events[index], MessageAdded) and isinstance(raw, bytes):
                facts = _decode(raw)
                found[index] = MtaFacts(bool(facts["hasAttachments"]), int(facts["size"]), str(facts["category"]))
        return found

    async def meet(self, events: Sequence[Event]) -> tuple[dict[int, dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """For the index: ({event index: facts} for the read's deliveries whose summary is known,
        [(message document id, facts)] for deliveries indexed before their summary came)."""
        replies, plan = await self._run(events, waits=True)
        facts: dict[int, dict[str, Any]] = {}
        early: list[tuple[str, dict[str, Any]]] = []
        for index, place, count in plan:
            if isinstance(events[index], MtaAccepted):
                for done in replies[place : place + count]:
                    pairs = list(done or ())
                    early.extend((text(doc), _decode(raw)) for doc, raw in zip(pairs[::2], pairs[1::2], strict=True))
            elif isinstance(replies[place], bytes):
                facts[index] = _decode(replies[place])
        return facts, early

    async def _run(self, events: Sequence[Event], *, waits: bool) -> tuple[Any, list[tuple[int, int, int]]]:
        """One call of the script over the read; the replies and, per event that took part, (its
        index, the place of its first reply, how many replies it has)."""
        keys: list[str] = []
        args: list[str | bytes | int] = [FACTS_TTL_S, "1" if waits else "0"]
        plan: list[tuple[int, int, int]] = []
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                accounts = sorted(summary_accounts(event))
                plan.append((index, len(keys) // 2, len(accounts)))
                packed = msgpack.packb(summary_facts(event))
                for account in accounts:
                    keys += self._keys(account, event.message_id)
                    args += ["s", event.key, packed, ""]
            elif isinstance(event, MessageAdded) and event.message_id:
                plan.append((index, len(keys) // 2, 1))
                keys += self._keys(event.account, event.message_id)
                doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
                if isinstance(event, MessageNew):
                    args += ["n", event.mailbox, f"{event.uidvalidity}:{event.uid}", doc_id]
                else:
                    args += ["a", "", "", doc_id]
        if not keys:
            return [], plan
        return await self._meet(keys=keys, args=args), plan

    def _keys(self, account: str, message_id: str) -> list[str]:
        return [
            redis_keys.mail_facts(self.prefix, account, message_id),
            redis_keys.facts_waiting(self.prefix, account, message_id),
        ]
