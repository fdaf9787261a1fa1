"""Web Push, the pure part: a browser's subscription checked, the notice a new mail becomes, and the
VAPID key (RFC 8292). No I/O: bridge.push_sender sends, bridge.store_push keeps, bridge.http_push
is the HTTP edge.

A subscription is what the browser's PushManager gives (its `toJSON()`): an endpoint URL at its
push service, and the keys of RFC 8291 (`p256dh`, the browser's P-256 public key, and `auth`, a
16-byte secret). Only https endpoints on a named host are taken, or one of an explicit list of
origins (BRIDGE_PUSH_ALLOWED_ORIGINS, for a test's local receiver): the bridge must not become a
way to send requests to hosts of its own network (the sender's resolver refuses those addresses too).

The notice is small and holds no body: the mail's id, account, mailbox, sender and subject, so the
service worker can show who wrote and about what, and open the mail on click.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.errors import InvalidInput

MAX_ENDPOINT = 1024
# What a notice keeps of the sender's name and the subject: push services take at least 4096 bytes
# of payload (RFC 8030 7.2), and aes128gcm adds 103 (RFC 8291 4).
MAX_FIELD = 200


@dataclass(frozen=True, slots=True)
class Subscription:
    endpoint: str
    p256dh: str  # unpadded base64url, as the browser gives it
    auth: str

    def info(self) -> dict[str, Any]:
        """The subscription as pywebpush takes it (the browser's own JSON shape)."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, the host in lower case and a default port left out ("" if
    it has no host)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _named_host(host: str) -> bool:
    """A DNS name with a dot, not an address literal or a single label (`localhost`, `redis`)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "." in host.strip(".")
    return False


def check_endpoint(endpoint: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT:
        raise InvalidInput(f"endpoint must be a URL of at most {MAX_ENDPOINT} characters")
    parts = urlsplit(endpoint)
    origin = origin_of(endpoint)
    if not origin or parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidInput("endpoint must be an http(s) URL without credentials or fragment")
    if origin in allowed:
        return endpoint
    if parts.scheme != "https" or not _named_host(parts.hostname or ""):
        raise InvalidInput("endpoint must be an https URL of a push service")
    return endpoint


def _b64url(value: object, name: str) -> bytes:
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise InvalidInput(f"keys.{name} must be base64url text")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInput(f"keys.{name} must be base64url text") from None


def parse_subscription(body: dict[str, Any], allowed: tuple[str, ...]) -> Subscription:
    """A PushSubscription's JSON checked strictly (InvalidInput says what is wrong)."""
    endpoint = check_endpoint(body.get("endpoint"), allowed)
    keys = body.get("keys")
    if not isinstance(keys, dict):
        raise InvalidInput("keys must be an object with p256dh and auth")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    point = _b64url(p256dh, "p256dh")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise InvalidInput("keys.p256dh must be an uncompressed P-256 public key (65 bytes)") from None
    if len(point) != 65:
        raise InvalidInput("keys.p256dh must be an uncompressed P-256 public key (65 bytes)")
    if len(_b64url(auth, "auth")) != 16:
        raise InvalidInput("keys.auth must be 16 bytes (RFC 8291 3.2)")
    assert isinstance(p256dh, str) and isinstance(auth, str)  # checked by _b64url
    return Subscription(endpoint, p256dh.rstrip("="), auth.rstrip("="))


def subscription_id(endpoint: str) -> str:
    """32 hex digits naming one browser's subscription (the same for each account it is kept for:
    the id its sockets send, whichever accounts their token grants)."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:32]


def is_subscription_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def wants_push(payload: dict[str, Any]) -> bool:
    """A new_email worth telling a closed tab about: delivered, not read (not a copy saved to Sent
    or a draft, which are appended)."""
    return payload.get("source") == "delivered" and payload.get("unread") is True


def _cut(value: object) -> str:
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def notice(payload: dict[str, Any]) -> bytes:
    """The push message for a new_email payload (bridge.browser_events.new_email): no body, no
    preview, nothing but what the notification shows and the id it opens."""
    data = {
        "type": "new_email",
        "id": payload.get("id"),
        "account": payload.get("account"),
        "mailbox": payload.get("mailbox"),
        "fromName": _cut(payload.get("fromName")),
        "fromAddress": _cut(payload.get("fromAddress")),
        "subject": _cut(payload.get("subject")),
        "timestamp": payload.get("timestamp"),
    }
    return json.dumps(data, separators=(",", ":")).encode()


def load_vapid_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A PEM private key, which must be on P-256 (RFC 8292 3.2: ES256). ValueError otherwise."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 (prime256v1) key")
    return key


def new_vapid_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as the browser's `applicationServerKey` takes it: the uncompressed point,
    unpadded base64url (RFC 8292 3.2)."""
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
