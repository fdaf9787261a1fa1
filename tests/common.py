"""What the tests share besides fixtures: where the suite keeps its state, fresh accounts, signing in,
the host website's tokens, free ports.

tests/conftest.py holds the fixtures (and pytest's hooks) and takes these from here; a test module
imports them from here too, never from conftest (which pytest imports under a name of its own).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt

from bridge.settings import DEFAULT_PORTS, suite_state_dir
from bridge.stack.launcher import Stack, free_ports
from bridge.store import MailboxCounts

REPO = Path(__file__).resolve().parent.parent

# Two test runs at once (two people, or a person and a helper) each need their own state dir.
TEST_STATE = Path(os.environ.get("MAIL_BRIDGE_TEST_STATE") or suite_state_dir(REPO))
HOST_KEY_DIR = TEST_STATE

HOST_ISSUER = "https://host.test"


def free_port() -> int:
    return free_ports(1)[0]


def stack_ports_env() -> dict[str, str]:
    ports = free_ports(len(DEFAULT_PORTS))
    return {f"BRIDGE_{name.upper()}_PORT": str(port) for name, port in zip(DEFAULT_PORTS, ports, strict=True)}


def host_keys() -> tuple[str, str]:
    """An RSA key pair standing for the host website that issues its own tokens."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def remove_suite_state(state: Path) -> None:
    """Remove the suite's state; under /var/tmp also the checkout's directory there once it is empty
    (`make run` keeps its own state in it) and the `var` link that pointed to it."""
    shutil.rmtree(state, ignore_errors=True)
    root, link = state.parent, REPO / "var"
    if root != link and not any(root.iterdir()):
        root.rmdir()
        if link.is_symlink() and not link.exists():
            link.unlink()


@dataclass(frozen=True)
class Account:
    email: str
    password: str


class AccountPool:
    """Fresh accounts, created in batches (each batch costs Dovecot's one-second re-read)."""

    def __init__(self, launcher: Stack, batch: int = 40) -> None:
        self.launcher = launcher
        self.batch = batch
        self.free: list[Account] = []
        self.created: list[Account] = []  # every account of the session (the log hygiene test checks their passwords)

    def take(self) -> Account:
        if not self.free:
            fresh = [
                Account(f"t{uuid.uuid4().hex[:12]}@example.test", secrets.token_urlsafe(12)) for _ in range(self.batch)
            ]
            self.launcher.add_users({a.email: a.password for a in fresh})
            self.created.extend(fresh)
            self.free = fresh
        return self.free.pop()


async def login(http: aiohttp.ClientSession, account: Account) -> str:
    async with http.post("/api/v1/auth/login", json={"email": account.email, "password": account.password}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    token: str = body["token"]
    return token


def host_token(subject: str, accounts: list[str], **claims: object) -> str:
    """A token as the host website would issue it (RS256, its own issuer), signed with the key the
    session's `stack_settings` fixture wrote into the suite's state."""
    now = int(time.time())
    body = {
        "iss": HOST_ISSUER,
        "aud": "mail-bridge",
        "sub": subject,
        "accounts": accounts,
        "iat": now,
        "exp": now + 600,
    }
    private = (HOST_KEY_DIR / "host-website.key").read_text()
    return jwt.encode({**body, **claims}, private, algorithm="RS256")


def unread_total(counts: MailboxCounts) -> tuple[int, int]:
    """A mailbox's counts without their version (which orders counts, and is tested apart)."""
    return counts.unread, counts.total
