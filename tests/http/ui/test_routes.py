"""The page's server side, in process: redirects, static files and headers, examples.

The browser test (``test_page.py``) drives the page itself; these check what it
stands on, cheaply and without a browser.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.data import Dataset
from models.examples import EXAMPLES_FILENAME, write_examples
from models.testing import make_tiny_model
from service.app import create_app
from service.http.ui import routes
from service.http.ui.routes import STATIC, page_address
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny/1 with examples, tiny/2 without, broken/1 with a malformed file."""
    root = tmp_path_factory.mktemp("ui-repository")
    v1 = make_tiny_model(root, "tiny", 1, features=3, layers=(4,), classes=2, seed=1)
    make_tiny_model(root, "tiny", 2, features=3, layers=(4,), classes=2, seed=2)
    broken = make_tiny_model(root, "broken", 1, features=3, layers=(4,), classes=2, seed=3)
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3) / 7
    data = Dataset(x, np.array([1, 0]), np.array([5, 3]))
    write_examples(v1, data, ["a", "b"])
    (broken / EXAMPLES_FILENAME).write_text('{"examples": [{"name": "x", "timesteps": [[1, 2]]}]}')
    return root


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=repository, version_policy="all")
    with TestClient(
        create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as c:
        yield c


def test_root_redirects_to_the_page(client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/plot.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_carry_their_type_and_a_strict_policy(
    client: TestClient, path: str, kind: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fapp.py", "/ui/routes.py", "/ui/.hidden"])
def test_nothing_but_the_listed_files_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "error" in response.json()


def test_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_examples_are_served_as_written(client: TestClient, repository: Path) -> None:
    response = client.get("/ui/models/tiny/versions/1/examples")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    body = response.json()
    written = json.loads((repository / "tiny" / "1" / EXAMPLES_FILENAME).read_text())
    assert body == {"model": "tiny", "version": "1", **written}
    assert [e["label"] for e in body["examples"]] == ["a", "b"]
    assert len(body["examples"][0]["timesteps"]) == 3  # trimmed to its length


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/ui/models/tiny/versions/2/examples", "ships no examples"),
        ("/ui/models/nope/versions/1/examples", "'nope' is not loaded"),
        ("/ui/models/tiny/versions/9/examples", "version 9"),
        ("/ui/models/tiny/versions/x/examples", "positive integers"),
        ("/ui/models/broken/versions/1/examples", "has 2 features; the model expects 3"),
    ],
)
def test_missing_or_bad_examples_are_a_404_that_says_why(
    client: TestClient, path: str, says: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert says in response.json()["error"]


def test_an_oversized_examples_file_is_refused(
    client: TestClient, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "MAX_EXAMPLES_BYTES", 10)
    routes._examples_cache.clear()
    response = client.get("/ui/models/tiny/versions/1/examples")
    assert response.status_code == 404
    assert "the page takes at most 10" in response.json()["error"]
    routes._examples_cache.clear()


def test_the_shipped_model_ships_one_example_per_class() -> None:
    version = ROOT / "models" / "repository" / "basic_motions" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    examples = json.loads((version / EXAMPLES_FILENAME).read_text())["examples"]
    assert [e["label"] for e in examples] == meta["classes"]
    assert all(len(step) == meta["num_features"] for e in examples for step in e["timesteps"])
    assert (version / EXAMPLES_FILENAME).stat().st_size < 100_000


# Namespace identifiers are names, not addresses: nothing fetches them.
_ALLOWED_URLS = {"http://www.w3.org/2000/svg"}


def test_static_files_name_no_external_address() -> None:
    files = [p for p in STATIC.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"index.html", "app.js", "plot.js", "style.css"}
    address = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'`)]*")
    found = {
        (p.name, url)
        for p in files
        for url in address.findall(p.read_text())
        if url not in _ALLOWED_URLS
    }
    assert not found, f"static files refer to outside addresses: {sorted(found)}"


def test_the_package_ships_the_static_files() -> None:
    """A non-editable install must carry the page: pyproject lists it as package data."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    package = ROOT / "service"
    shipped = {p.relative_to(package) for pattern in patterns for p in package.glob(pattern)}
    assert {p.relative_to(package) for p in STATIC.iterdir() if p.is_file()} <= shipped


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000/ui/"),
        ("0.0.0.0", "http://127.0.0.1:8000/ui/"),
        ("::", "http://[::1]:8000/ui/"),
        ("example.internal", "http://example.internal:8000/ui/"),
    ],
)
def test_page_address(host: str, address: str) -> None:
    assert page_address(host, 8000) == address
