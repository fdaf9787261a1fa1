"""A user's folders: made, renamed, deleted, all read, over IMAP as the user. Dovecot's hook then
reports each change (mailbox.create/rename/delete, the flags) to the index and every device, as for
any IMAP client; nothing here writes the index. The standard folders (bridge.mailbox_order) stay:
they are made on first use and are never renamed or deleted from here."""

from __future__ import annotations

from bridge.errors import InvalidInput
from bridge.imap import ImapGateway
from bridge.mailbox_order import STANDARD_NAMES, folder_name, mailbox_name, own_folder


class Folders:
    def __init__(self, imap: ImapGateway) -> None:
        self.imap = imap

    async def create(self, account: str, name: object) -> str:
        """A new folder (IMAP CREATE); Dovecot's event tells every device (mailbox_updated)."""
        folder = folder_name(name)
        await self.imap.create_mailbox(account, folder)
        return folder

    async def rename(self, account: str, name: object, new_name: object) -> str:
        """One of the user's own folders renamed, with its messages (IMAP RENAME)."""
        old, new = own_folder(name), folder_name(new_name, "newName")
        if new.upper() == "INBOX" or new in STANDARD_NAMES:
            raise InvalidInput(f"{new} is a standard folder's name")
        await self.imap.rename_mailbox(account, old, new)
        return new

    async def delete(self, account: str, name: object) -> None:
        """One of the user's own folders deleted, with its messages (IMAP DELETE)."""
        await self.imap.delete_mailbox(account, own_folder(name))

    async def mark_all_read(self, account: str, mailbox: object) -> None:
        """Every message of `mailbox` read, over IMAP (the hook's events bring the index and every
        device up to date, as for one message)."""
        await self.imap.mark_all_read(account, mailbox_name(mailbox))
