"""SMTP submission edge (RFC 6409): send as a user through Postfix's submission port.

The bridge authenticates as `user*master` with the Dovecot master user (Postfix's SASL goes through
Dovecot, which then names the user itself), so Postfix applies its own policy to the user:
sender-login match, rate and size limits. Nothing here holds a user's password.
"""

from __future__ import annotations

import ipaddress
import logging
import re

import aiosmtplib

from bridge.compose import Outgoing
from bridge.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_ENHANCED_CODE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(\s+|$)")


def reply_text(message: str, recipient: str = "") -> str:
    """An SMTP reply's text as a person reads it: without the enhanced status code (RFC 3463) and,
    for a recipient, without Postfix's "<address>: " that repeats whom it is about."""
    text = _ENHANCED_CODE.sub("", " ".join(message.split()))
    if recipient:
        text = text.removeprefix(f"<{recipient}>: ")
    return text or "no reason given"


class Submission:
    def __init__(
        self,
        host: str,
        port: int,
        master_user: str,
        master_password: str,
        timeout_s: float = 30,
        *,
        starttls: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.master_user = master_user
        self.master_password = master_password
        self.timeout_s = timeout_s
        self.starttls = starttls
        # Over loopback the certificate names the server's public host name, never 127.0.0.1, and
        # nobody can stand in between: TLS there satisfies smtpd_tls_auth_only, not authentication.
        self.verify = not _loopback(host)

    async def send(self, account: str, outgoing: Outgoing) -> None:
        try:
            async with aiosmtplib.SMTP(
                hostname=self.host,
                port=self.port,
                timeout=self.timeout_s,
                start_tls=self.starttls,
                validate_certs=self.verify,
            ) as client:
                await client.login(f"{account}*{self.master_user}", self.master_password)
                errors, _reply = await client.sendmail(account, list(outgoing.recipients), outgoing.message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(f"{e.recipient}: {reply_text(e.message, e.recipient)}" for e in exc.recipients)
            raise InvalidInput(f"no recipient was accepted ({refused})") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise InvalidInput(f"the mail server refused the message: {reply_text(exc.message)}") from None
            raise Unavailable(f"the mail server deferred the message: {reply_text(exc.message)}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise Unavailable(f"submission failed: {exc}") from None
        if errors:
            refused = ", ".join(errors)
            log.warning("[%s] submitted, but refused for %s", outgoing.message_id, refused)
        log.info("[%s] submitted for %s to %d recipient(s)", outgoing.message_id, account, len(outgoing.recipients))
