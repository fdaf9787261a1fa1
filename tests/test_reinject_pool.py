"""Re-injection connections on the stack's real Postfix: one connection carries mail after mail,
and a connection Postfix closed is never used again."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

from bridge.reinject_pool import ReinjectPool
from bridge.settings import StackSettings
from bridge.stack.launcher import StackInfo
from tests.common import Account
from tests.mailtools import wait_for_messages


def mail(account: Account, tag: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "carol@outside.test"
    m["To"] = account.email
    m["Subject"] = tag
    m["Message-ID"] = f"<{tag}@outside.test>"
    m.set_content("pooled")
    return m


async def test_one_connection_carries_several_mails(
    stack: StackInfo, stack_settings: StackSettings, account: Account
) -> None:
    pool = ReinjectPool(stack.smtp["host"], stack_settings.ports["reinject"], ehlo_name="test", timeout_s=30)
    try:
        for n in range(3):
            client = await pool.acquire()
            message = mail(account, f"pool-{uuid.uuid4().hex[:8]}-{n}")
            errors, _ = await client.sendmail("carol@outside.test", [account.email], message.as_bytes())
            assert errors == {}
            await pool.release(client, clean=True)
        assert pool.opened == 1
        # Postfix closing an idle connection (here: we cut it): the pool opens a fresh one.
        client = await pool.acquire()
        client.close()
        await pool.release(client, clean=True)
        fresh = await pool.acquire()
        assert fresh is not client and fresh.is_connected and pool.opened == 2
        await pool.release(fresh, clean=False)  # after an error: closed, not kept
        assert not fresh.is_connected
    finally:
        await pool.close()
    delivered = await asyncio.to_thread(wait_for_messages, stack, account.email, account.password, 3)
    assert len(delivered) == 3
