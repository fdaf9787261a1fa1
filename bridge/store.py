"""Metadata store edge: MongoDB (or FerretDB, its wire protocol over SQLite) through pymongo's
native async client.

Holds the message metadata index (one document per message, keyed by account, mailbox,
UIDVALIDITY and UID) that search and lists read without touching IMAP.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bridge.errors import Unavailable
from bridge.events import MessageAdded

log = logging.getLogger(__name__)


class Store:
    def __init__(self, url: str, database: str) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, tz_aware=True
        )
        self.db = self.client[database]
        self.messages = self.db["messages"]

    async def open(self) -> None:
        try:
            await self.messages.create_index(
                [("account", 1), ("mailbox", 1), ("uidvalidity", 1), ("uid", 1)], unique=True
            )
        except PyMongoError as exc:
            # Start anyway: the index catches up once the store answers (health reports it).
            log.warning("store unavailable at start: %s", exc)

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            raise Unavailable(f"store did not answer: {exc}") from None

    async def index_message(self, event: MessageAdded) -> None:
        doc = {
            "account": event.account,
            "mailbox": event.mailbox,
            "uidvalidity": event.uidvalidity,
            "uid": event.uid,
            "from": event.from_,
            "fromAddress": event.from_address,
            "fromName": event.from_name,
            "to": event.to,
            "subject": event.subject,
            "snippet": event.snippet,
            "messageId": event.message_id,
            "date": event.date,
            "flags": list(event.flags),
            "keywords": list(event.keywords),
        }
        await self.messages.update_one(
            {k: doc[k] for k in ("account", "mailbox", "uidvalidity", "uid")}, {"$set": doc}, upsert=True
        )
