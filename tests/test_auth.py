import base64
import json
import time

import jwt
import pytest

from bridge.auth import MAX_TOKEN_BYTES, TokenIssuer
from bridge.errors import AuthError

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
