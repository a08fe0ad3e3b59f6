"""API key entries, key files and the exposure rule, on their own (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from service.http.security import Security, host_name
from service.keys import check_exposure, load_keys, parse_key
from service.settings import Settings

SECRET = "s" * 32


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (f"ci{SECRET}", "an API key is written id:scopes:secret"),
        (f"c i:inference:{SECRET}", "key id 'c i' must be 1-64 of"),
        (f"ci:root:{SECRET}", "key 'ci' has scopes 'root'; use inference, admin or both"),
        ("ci:inference:short", "key 'ci' has a secret of 5 characters; at least 16"),
    ],
)
def test_bad_entries_are_refused_without_repeating_the_secret(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_key(entry, "api_keys[0]")
    assert SECRET not in str(caught.value) and "short" not in str(caught.value)


def test_a_key_file_with_comments_and_scopes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        "# made with openssl rand -hex 32\n"
        f"app:inference:{SECRET}\n\nops:inference,admin:{'t' * 20}\n"
    )
    keys = load_keys(Settings(api_keys_file=path))
    assert [(k.id, sorted(k.scopes)) for k in keys] == [
        ("app", ["inference"]),
        ("ops", ["admin", "inference"]),
    ]
    assert SECRET not in repr(keys)
    with pytest.raises(ValueError, match="API key ids must be unique"):
        load_keys(Settings(api_keys_file=path, api_keys=[f"app:admin:{SECRET}"]))
    with pytest.raises(ValueError, match=f"api_keys_file {tmp_path / 'nope'} cannot be read"):
        load_keys(Settings(api_keys_file=tmp_path / "nope"))


def test_exposure_rule() -> None:
    assert check_exposure(Settings(), []) is False  # loopback, no keys: open (development)
    keys = load_keys(Settings(api_keys=[f"app:inference:{SECRET}"]))
    assert check_exposure(Settings(host="0.0.0.0"), keys) is True
    public = r"no API key is configured and the server binds 0\.0\.0\.0"
    with pytest.raises(ValueError, match=public):
        check_exposure(Settings(host="0.0.0.0"), [])
    with pytest.raises(ValueError, match="no API key is configured"):
        check_exposure(Settings(auth="required"), [])
    assert check_exposure(Settings(host="0.0.0.0", auth="off"), []) is False
    with pytest.raises(ValueError, match="auth is off but API keys are configured"):
        check_exposure(Settings(auth="off"), keys)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ssl_certfile and ssl_keyfile go together"):
        Settings(ssl_certfile=tmp_path / "cert.pem")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("LocalHost", "localhost"),
        ("::1", "::1"),
    ],
)
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


@settings(max_examples=60, deadline=None)
@given(token=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80))
def test_no_token_but_the_secret_opens_the_api(token: str) -> None:
    assume(token != SECRET)
    app = Security(_ok, Settings(api_keys=[f"app:inference:{SECRET}"]))
    client = TestClient(app, base_url="http://127.0.0.1")  # no lifespan: the app has none
    answer = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert answer.json()["error"] in (
        "the API key is not valid",
        "this API needs a key: send Authorization: Bearer <key> (WebSockets may offer the "
        "subprotocol bearer.<key>)",
    )
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {SECRET}"}).text == "ok"


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the layer: answers ok to whatever gets through."""
    await PlainTextResponse("ok")(scope, receive, send)
