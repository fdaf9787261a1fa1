import base64
import json
import time

import jwt
import pytest

from bridge.auth import MAX_TOKEN_BYTES, TokenIssuer, TrustedIssuer
from bridge.errors import AuthError
from tests.common import host_keys

ISSUER = TokenIssuer(secret="s" * 40, issuer="mail-bridge", audience="mail-bridge", ttl_s=600)


def test_issue_and_verify() -> None:
    token, expires = ISSUER.issue("alice@example.test", ("alice@example.test",))
    identity = ISSUER.verify(token)
    assert identity.subject == "alice@example.test"
    assert identity.accounts == ("alice@example.test",)
    assert identity.expires_at == expires
    assert expires - time.time() == pytest.approx(600, abs=5)


def _forge(claims: dict[str, object], header: dict[str, object]) -> str:
    def b64(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(claims)}."


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not.a.token",
        "x" * (MAX_TOKEN_BYTES + 1),
        # expired
        ISSUER.issue("a@example.test", ("a@example.test",), now=time.time() - 4000)[0],
        # wrong audience and wrong issuer
        TokenIssuer("s" * 40, "mail-bridge", "other", 600).issue("a@example.test", ())[0],
        TokenIssuer("s" * 40, "evil", "mail-bridge", 600).issue("a@example.test", ())[0],
        # signed with another key
        TokenIssuer("t" * 40, "mail-bridge", "mail-bridge", 600).issue("a@example.test", ())[0],
        # alg none
        _forge(
            {"sub": "a@example.test", "iss": "mail-bridge", "aud": "mail-bridge", "iat": 1, "exp": 2**40},
            {"alg": "none", "typ": "JWT"},
        ),
        # missing exp
        jwt.encode({"sub": "a@example.test", "iss": "mail-bridge", "aud": "mail-bridge", "iat": 1}, "s" * 40),
    ],
)
def test_refused_tokens(token: object) -> None:
    with pytest.raises(AuthError):
        ISSUER.verify(token)


def test_tampered_signature() -> None:
    token, _ = ISSUER.issue("alice@example.test", ("alice@example.test",))
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["accounts"] = ["bob@example.test"]
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        ISSUER.verify(f"{head}.{forged_body}.{sig}")


_rsa_pair = host_keys

HOST_PRIVATE, HOST_PUBLIC = _rsa_pair()
WITH_HOST = TokenIssuer(
    secret="s" * 40,
    issuer="mail-bridge",
    audience="mail-bridge",
    ttl_s=600,
    trusted=(
        TrustedIssuer(issuer="https://host.test", audience="mail-bridge", algorithm="RS256", public_key=HOST_PUBLIC),
    ),
)


def _host_token(claims: dict[str, object], key: str = HOST_PRIVATE, algorithm: str = "RS256") -> str:
    now = int(time.time())
    base: dict[str, object] = {"iss": "https://host.test", "aud": "mail-bridge", "iat": now, "exp": now + 300}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


def test_host_website_tokens_are_accepted() -> None:
    identity = WITH_HOST.verify(_host_token({"sub": "alice@example.test", "accounts": ["alice@example.test"]}))
    assert identity.accounts == ("alice@example.test",)
    # The bridge's own tokens keep working beside the host's.
    own, _ = WITH_HOST.issue("bob@example.test", ("bob@example.test",))
    assert WITH_HOST.verify(own).subject == "bob@example.test"


def _hs256_by_hand(claims: dict[str, object], secret: bytes) -> str:
    """PyJWT will not sign HS256 with a PEM key; an attacker's own code will."""
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    body = {"iss": "https://host.test", "aud": "mail-bridge", "iat": now, "exp": now + 300, **claims}
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(body).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def test_host_key_confusion_and_forgeries_are_refused() -> None:
    claims = {"sub": "alice@example.test", "accounts": ["alice@example.test"]}
    forgeries = [
        # HS256 "signed" with the host's public key: the classic RS/HS confusion (RFC 8725 3.1).
        _hs256_by_hand(claims, HOST_PUBLIC.encode()),
        # Signed by some other RSA key.
        _host_token(claims, key=_rsa_pair()[0]),
        # The host's issuer, but the bridge's own HS256 secret.
        _host_token(claims, key="s" * 40, algorithm="HS256"),
        _host_token({**claims, "aud": "someone-else"}),
        _host_token({**claims, "exp": int(time.time()) - 3600}),
    ]
    for token in forgeries:
        with pytest.raises(AuthError):
            WITH_HOST.verify(token)


def test_own_tokens_can_be_asymmetric() -> None:
    private, public = _rsa_pair()
    issuer = TokenIssuer(
        secret=private, verify_key=public, issuer="mail-bridge", audience="mail-bridge", ttl_s=60, algorithm="RS256"
    )
    token, _ = issuer.issue("alice@example.test", ("alice@example.test",))
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert issuer.verify(token).subject == "alice@example.test"
    with pytest.raises(AuthError):  # an HS256 token made with the public key is no token of ours
        issuer.verify(_hs256_by_hand({"sub": "a@example.test", "iss": "mail-bridge"}, public.encode()))
