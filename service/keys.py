"""API keys, read once at startup and checked the same way by every protocol.

A key is ``id:scopes:secret`` (scopes ``inference``, ``admin``); the server keeps
only the SHA-256 of each secret and compares in constant time (``hmac``, every key
tried), and logs and errors name the key's id, never its secret. HTTP
(``http/security.py``) and gRPC take the token from their own headers and ask
``Keys.find``; ``check_exposure`` refuses, at startup, a configuration that would
serve anyone unasked.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from service.settings import Settings

SCOPES: frozenset[str] = frozenset({"inference", "admin"})
MIN_SECRET_CHARS = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

REFUSED = Counter(
    "lstm_requests_refused_total",
    "Requests, WebSocket handshakes and gRPC calls refused for their key or origin",
    ["reason"],
)


@dataclass(frozen=True)
class ApiKey:
    """One key: the id logs name, the scopes it grants, and the SHA-256 of its secret."""

    id: str
    scopes: frozenset[str]
    digest: bytes

    def __repr__(self) -> str:  # never the digest, in case a key object gets logged
        return f"ApiKey({self.id!r}, scopes={sorted(self.scopes)})"


def parse_key(entry: str, where: str) -> ApiKey:
    """``id:scope[,scope]:secret`` as an ApiKey; the error never repeats the secret."""
    parts = entry.strip().split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"{where}: an API key is written id:scopes:secret (e.g. ci:inference:…)")
    key_id, scopes_text, secret = parts
    scopes = frozenset(s.strip() for s in scopes_text.split(",") if s.strip())
    if not _KEY_ID.match(key_id):
        raise ValueError(f"{where}: key id {key_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    if not scopes or not scopes <= SCOPES:
        raise ValueError(
            f"{where}: key {key_id!r} has scopes {scopes_text!r}; use inference, admin or both"
        )
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{where}: key {key_id!r} has a secret of {len(secret)} characters; at least "
            f"{MIN_SECRET_CHARS} are needed (make one with: openssl rand -hex 32)"
        )
    return ApiKey(key_id, scopes, hashlib.sha256(secret.encode()).digest())


def load_keys(settings: Settings) -> list[ApiKey]:
    """Every configured key (setting, then file); ValueError names the faulty entry."""
    entries = [(e, f"api_keys[{i}]") for i, e in enumerate(settings.api_keys)]
    if settings.api_keys_file is not None:
        path: Path = settings.api_keys_file
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"api_keys_file {path} cannot be read: {exc.strerror}") from None
        entries += [
            (line, f"{path} line {n}")
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    keys = [parse_key(entry, where) for entry, where in entries]
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"API key ids must be unique; got {sorted(ids)}")
    return keys


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, keys: list[ApiKey]) -> bool:
    """Whether keys are checked; refuses configurations that would serve anyone unasked."""
    if settings.auth == "off":
        if keys:
            raise ValueError("auth is off but API keys are configured: drop one or the other")
        return False
    if keys:
        return True
    if settings.auth == "required" or not is_loopback(settings.host):
        raise ValueError(
            f"no API key is configured and the server binds {settings.host}, beyond loopback: "
            "set LSTM_SERVE_API_KEYS or LSTM_SERVE_API_KEYS_FILE (entries id:scopes:secret; "
            "make a secret with: openssl rand -hex 32), or LSTM_SERVE_AUTH=off if something "
            "in front authenticates"
        )
    return False


class Keys:
    """The configured keys and whether they are checked (``check_exposure``)."""

    def __init__(self, settings: Settings) -> None:
        self.keys = load_keys(settings)
        self.enabled = check_exposure(settings, self.keys)

    def find(self, token: bytes) -> ApiKey | None:
        """The key whose secret ``token`` is, or None; every key is compared, in constant
        time, so the answer's timing tells nothing about which came close."""
        digest = hashlib.sha256(token).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found
