"""JWT issue and verification (RFC 7519, with RFC 8725's best practices): pure, no I/O.

A token names its subject (`sub`, the login) and the mail accounts it grants (`accounts`), each by
its canonical name (`canonical_account`), the one Dovecot uses for it. The algorithm is pinned by
configuration, never taken from the token's header, so `alg: none` and HS/RS key confusion are
refused by construction. `iss`, `aud`, `exp` and `iat` are required.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from bridge.errors import AuthError

MAX_TOKEN_BYTES = 8192  # far above any token we issue; refuses giant tokens before parsing them
MAX_ACCOUNTS = 100  # accounts one token may grant (a host website's token names each mailbox)
LEEWAY_S = 30  # clock skew tolerated between the host website and the bridge


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def canonical_account(address: str) -> str:
    """The one name of an account, as Dovecot names it: the login with its ASCII letters lowercased
    (Dovecot's default `auth_username_format = %Lu`, which lowercases ASCII only). Dovecot accepts
    "ALICE@EXAMPLE.TEST" as alice@example.test, and its events, hence the index, the rooms and the
    resume logs, all say alice@example.test; the bridge checks the password under this name and
    grants nothing else. IMAP offers no command that tells a session its user name, so the bridge
    applies Dovecot's format itself (dovecot-conf/91-mail-bridge-master.conf: keep it at %Lu)."""
    return address.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    accounts: tuple[str, ...]
    expires_at: int


# Asymmetric algorithms a host website may sign with; its public key verifies, so the bridge never
# holds a key that could mint host tokens.
HOST_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """A host website whose tokens are accepted: its issuer, audience, pinned algorithm and public key."""

    issuer: str
    audience: str
    algorithm: str
    public_key: str


SHARED_SECRET_ALGORITHMS = ("HS256", "HS384", "HS512")


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """The bridge's own tokens: HS256 with a shared secret by default, or an asymmetric algorithm
    with a private key to sign (`secret`) and its public key to verify (`verify_key`)."""

    secret: str
    issuer: str
    audience: str
    ttl_s: int
    algorithm: str = "HS256"
    trusted: tuple[TrustedIssuer, ...] = ()
    verify_key: str = ""

    def issue(self, subject: str, accounts: tuple[str, ...], *, now: float | None = None) -> tuple[str, int]:
        issued = int(time.time() if now is None else now)
        expires = issued + self.ttl_s
        claims = {
            "sub": subject,
            "accounts": list(accounts),
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
        }
        return jwt.encode(claims, self.secret, algorithm=self.algorithm), expires

    def verify(self, token: object) -> Identity:
        if not isinstance(token, str) or not token:
            raise AuthError("a token is required")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        key: str = self.verify_key or self.secret
        algorithm, issuer, audience = self.algorithm, self.issuer, self.audience
        if self.trusted:
            # Which key verifies depends on who claims to have issued it; that claim is then
            # verified with that issuer's own pinned algorithm and key, never the token's header.
            try:
                claimed = jwt.decode(token, options={"verify_signature": False}).get("iss")
            except jwt.InvalidTokenError as exc:
                raise AuthError(f"invalid token: {exc}") from None
            for host in self.trusted:
                if claimed == host.issuer:
                    key, algorithm, issuer, audience = host.public_key, host.algorithm, host.issuer, host.audience
            if claimed != issuer:
                # Neither ours nor a trusted host's: say so, rather than whatever the check of the
                # bridge's own algorithm would report about a token that was never meant for it.
                raise AuthError("invalid token: unknown issuer")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        subject = claims["sub"]
        accounts = claims.get("accounts", [subject])
        if not isinstance(subject, str) or not isinstance(accounts, list):
            raise AuthError("invalid token: malformed claims")
        if not all(isinstance(a, str) and "@" in a for a in accounts):
            raise AuthError("invalid token: malformed accounts claim")
        # Every route and socket acts on an account the token grants (the first by default): a
        # token that grants none can do nothing, and is refused here rather than fail later.
        if not 1 <= len(accounts) <= MAX_ACCOUNTS:
            raise AuthError(f"invalid token: the accounts claim must grant 1 to {MAX_ACCOUNTS} accounts")
        # A host website may spell an address as it likes; the bridge knows each account by one name.
        granted = tuple(dict.fromkeys(canonical_account(a) for a in accounts))
        return Identity(subject=subject, accounts=granted, expires_at=int(claims["exp"]))
