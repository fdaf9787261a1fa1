"""bridge.webpush (pure) and the Web Push settings: what a subscription may be, what a notice holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bridge.errors import ConfigError, InvalidInput
from bridge.push_sender import PublicResolver
from bridge.settings import Settings
from bridge.webpush import (
    application_server_key,
    check_endpoint,
    load_vapid_key,
    new_vapid_pem,
    notice,
    origin_of,
    parse_subscription,
    wants_push,
)
from tests.push_receiver import BrowserKeys, unb64url

BASE = {"BRIDGE_JWT_SECRET": "x" * 32, "BRIDGE_IMAP_MASTER_USER": "m", "BRIDGE_IMAP_MASTER_PASSWORD": "p"}


def test_origins_are_normalised() -> None:
    assert origin_of("https://Push.Example.com:443/a?b") == "https://push.example.com"
    assert origin_of("http://127.0.0.1:8999/push/x") == "http://127.0.0.1:8999"
    assert origin_of("http://[::1]:80/") == "http://[::1]"
    assert origin_of("ftp://push.example.com/") == ""
    assert origin_of("https://push.example.com:99999/") == ""


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://push.example.com/x",
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest",
        "https://localhost/x",
        "https://push.example.com/x#frag",
        "https://a@push.example.com/x",
        "https://push.example.com/" + "x" * 1100,
        12,
    ],
)
def test_endpoints_that_are_not_public_push_services_are_refused(endpoint: object) -> None:
    with pytest.raises(InvalidInput):
        check_endpoint(endpoint, ())


def test_an_allowed_origin_may_be_local_and_plain_http() -> None:
    assert check_endpoint("http://127.0.0.1:8999/push/a", ("http://127.0.0.1:8999",))
    with pytest.raises(InvalidInput):
        check_endpoint("http://127.0.0.1:9000/push/a", ("http://127.0.0.1:8999",))


def test_a_browser_subscription_is_taken_as_the_browser_gives_it() -> None:
    keys = BrowserKeys()
    sub = parse_subscription(keys.subscription("https://fcm.googleapis.com/fcm/send/abc"), ())
    assert sub.info()["keys"]["p256dh"] == keys.p256dh()
    padded = keys.subscription("https://fcm.googleapis.com/fcm/send/abc")
    padded["keys"]["auth"] += "=="
    assert parse_subscription(padded, ()).auth == sub.auth


def test_a_notice_carries_no_body_and_stays_small() -> None:
    payload = {
        "id": "abc",
        "account": "a@example.test",
        "mailbox": "INBOX",
        "fromName": "N" * 5000,
        "fromAddress": "n@example.test",
        "subject": "S" * 5000,
        "preview": "the body's first words",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "source": "delivered",
        "unread": True,
    }
    data = json.loads(notice(payload))
    assert "preview" not in data and "the body" not in json.dumps(data)
    assert len(notice(payload)) < 4096 - 103  # RFC 8030 7.2 less aes128gcm's overhead (RFC 8291 4)
    assert wants_push(payload)
    assert not wants_push({**payload, "source": "appended"})  # a copy saved to Sent, a draft
    assert not wants_push({**payload, "unread": False})


def test_the_vapid_key_is_p256_and_given_as_a_point() -> None:
    key = load_vapid_key(new_vapid_pem())
    assert len(unb64url(application_server_key(key))) == 65
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        load_vapid_key(other)


def test_push_settings_are_checked_at_start(tmp_path: Path) -> None:
    assert Settings.from_env(BASE).vapid_subject.startswith("mailto:")  # works with nothing set
    with pytest.raises(ConfigError, match="BRIDGE_VAPID_SUBJECT"):
        Settings.from_env({**BASE, "BRIDGE_VAPID_SUBJECT": "postmaster"})
    with pytest.raises(ConfigError, match="BRIDGE_PUSH_ALLOWED_ORIGINS"):
        Settings.from_env({**BASE, "BRIDGE_PUSH_ALLOWED_ORIGINS": "http://127.0.0.1:8999/path"})
    wrong = tmp_path / "ed25519.pem"
    wrong.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for path in (wrong, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match="BRIDGE_VAPID_PRIVATE_KEY_FILE"):
            Settings.from_env({**BASE, "BRIDGE_VAPID_PRIVATE_KEY_FILE": str(path)})
    good = tmp_path / "vapid.pem"
    good.write_bytes(new_vapid_pem())
    assert Settings.from_env({**BASE, "BRIDGE_VAPID_PRIVATE_KEY_FILE": str(good)}).vapid_private_key_file == good


@pytest.mark.parametrize(
    ("allowed", "port", "reached"),
    [((), 443, False), (("http://localhost:8999",), 8999, True), (("http://localhost:8999",), 9000, False)],
)
async def test_the_sender_reaches_no_local_address_but_an_allowed_origin(
    allowed: tuple[str, ...], port: int, reached: bool
) -> None:
    resolver = PublicResolver(allowed)
    try:
        if reached:
            assert await resolver.resolve("localhost", port)
        else:
            with pytest.raises(OSError, match="no public address"):
                await resolver.resolve("localhost", port)
    finally:
        await resolver.close()
