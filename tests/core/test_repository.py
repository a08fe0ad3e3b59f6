"""Scanning, version policies, warm-up, and rolling loads/unloads under traffic."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.testing import make_tiny_model
from service.core.errors import ModelNotFound
from service.core.repository import ModelRepository, parse_version, scan
from service.core.server import Server
from service.core.types import InferenceRequest
from service.settings import Settings
from service.version_policy import VersionPolicy
from tests.conftest import reference


def repository(root: Path, policy: str = "latest:1", **policies: str) -> ModelRepository:
    settings = Settings(
        model_repository=root,
        version_policy=policy,
        model_version_policies=policies,
        unload_drain_s=5.0,
    )
    return Server(settings).repository


def copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def served(repo: ModelRepository) -> list[tuple[str, int]]:
    return [(m.name, m.version) for m in repo.all()]


def test_scan_lists_versions_in_order(tiny_repository: Path, tmp_path: Path) -> None:
    root = copy(tiny_repository, tmp_path / "repo")
    (root / "tiny" / "notes").mkdir()  # not a version: ignored
    (root / "tiny" / "7").mkdir()  # no metadata: ignored
    (root / ".hidden").mkdir()
    assert scan(root) == {"tiny": [1, 2], "tiny_bi": [1]}
    assert scan(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("text", "available", "selected"),
    [
        ("latest:1", [1, 2, 5], [5]),
        ("latest:2", [1, 2, 5], [2, 5]),
        ("all", [3, 1], [1, 3]),
        ("specific:1,5", [1, 2, 5], [1, 5]),
        ("specific:9", [1, 2], []),
    ],
)
def test_version_policies(text: str, available: list[int], selected: list[int]) -> None:
    assert VersionPolicy.parse(text).select(available) == selected


@pytest.mark.parametrize("text", ["newest", "latest:0", "specific:", "specific:a", "all:2"])
def test_bad_version_policy_is_refused(text: str) -> None:
    with pytest.raises(
        ValueError, match=r"is not one of 'latest:N', 'all', 'specific:V1,V2,\.\.\.'"
    ):
        VersionPolicy.parse(text)


def test_policies_choose_the_served_versions(tiny_repository: Path) -> None:
    asyncio.run(_test_policies_choose_the_served_versions(tiny_repository))


async def _test_policies_choose_the_served_versions(tiny_repository: Path) -> None:
    repo = repository(tiny_repository, "latest:1", tiny="all")
    await repo.load_all()
    assert served(repo) == [("tiny", 1), ("tiny", 2), ("tiny_bi", 1)]
    assert repo.get("tiny").version == 2
    await repo.close()


def test_corrupt_new_version_leaves_the_old_one_serving(
    tiny_repository: Path, tmp_path: Path
) -> None:
    asyncio.run(_test_corrupt_new_version_leaves_the_old_one_serving(tiny_repository, tmp_path))


async def _test_corrupt_new_version_leaves_the_old_one_serving(
    tiny_repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    repo = repository(root)
    await repo.load_all()
    copy(tiny_repository / "tiny" / "2", root / "tiny" / "2")
    model = root / "tiny" / "2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    (failed,) = await repo.load_model("tiny")
    assert served(repo) == [("tiny", 1)]
    assert (failed.version, failed.state) == (2, "UNAVAILABLE")
    assert "the file is corrupt or was replaced" in failed.reason
    assert [(s.version, s.state) for s in repo.statuses("tiny")] == [
        (1, "READY"),
        (2, "UNAVAILABLE"),
    ]
    await repo.close()


def test_unknown_and_unloaded_models(tiny_repository: Path) -> None:
    asyncio.run(_test_unknown_and_unloaded_models(tiny_repository))


async def _test_unknown_and_unloaded_models(tiny_repository: Path) -> None:
    repo = repository(tiny_repository)
    with pytest.raises(ModelNotFound, match="model 'nope' has no version in the model repository"):
        await repo.load_model("nope")
    await repo.load_all()
    await repo.unload_model("tiny_bi")
    assert served(repo) == [("tiny", 2)]
    with pytest.raises(ModelNotFound, match="model 'tiny_bi' is not loaded"):
        await repo.unload_model("tiny_bi")
    index = {(s.name, s.version): (s.state, s.reason) for s in repo.index()}
    assert index[("tiny_bi", 1)] == ("UNAVAILABLE", "unloaded")
    assert index[("tiny", 1)] == ("UNAVAILABLE", "not loaded")
    await repo.close()


def test_rolling_update_under_traffic_loses_and_mixes_nothing(
    tiny_repository: Path, tmp_path: Path
) -> None:
    asyncio.run(
        _test_rolling_update_under_traffic_loses_and_mixes_nothing(tiny_repository, tmp_path)
    )


async def _test_rolling_update_under_traffic_loses_and_mixes_nothing(
    tiny_repository: Path, tmp_path: Path
) -> None:
    """Clients hammer 'latest' while version 2 arrives and version 1 retires."""
    root = tmp_path / "repo"
    copy(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    repo = repository(root)
    await repo.load_all()
    x = np.random.default_rng(0).normal(size=(2, 9, 3)).astype(np.float32)
    lengths = np.array([9, 4])
    expected = {
        v: reference(tiny_repository / "tiny" / str(v), x, lengths)["final_output"] for v in (1, 2)
    }
    seen: list[list[int]] = [[] for _ in range(8)]
    stop = asyncio.Event()

    async def client(i: int) -> None:
        while not stop.is_set():
            model = repo.get("tiny")
            result = await model.batcher.submit(InferenceRequest(x=x, lengths=lengths))
            np.testing.assert_allclose(result.final_output, expected[model.version], atol=1e-6)
            seen[i].append(model.version)

    clients = [asyncio.create_task(client(i)) for i in range(8)]
    await asyncio.sleep(0.2)
    copy(tiny_repository / "tiny" / "2", root / "tiny" / "2")
    await repo.load_model("tiny")
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)  # any failed request or mismatch raises here
    assert served(repo) == [("tiny", 2)]
    for versions in seen:  # each client moves from 1 to 2 once, never back
        assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    await repo.close()


def test_warm_up_runs_before_the_version_is_visible(tiny_repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    make_tiny_model(root, "w", 1, features=2, layers=(3,), classes=2)
    calls: list[tuple[int, ...]] = []
    server = Server(Settings(model_repository=root))
    original = server.load

    def spying_load(path: Path):  # type: ignore[no-untyped-def]
        model = original(path)
        calls.append(tuple(server.repository.names()))
        return model

    server.repository._loader = spying_load
    asyncio.run(server.repository.load_all())
    assert calls == [()]  # loaded (and warmed, inside load) while not yet visible
    assert server.repository.names() == ["w"]


# -- parse_version: positive ASCII integers, anything else a 404 that says so, never a 500


@pytest.mark.parametrize("text", ["1", "7", "0012"])
def test_positive_integers(text: str) -> None:
    assert parse_version(text) == int(text)


@pytest.mark.parametrize("text", ["0", "", "-1", "1.0", "\u00b2", "\u0661", "v1", " 1"])
def test_anything_else_is_a_version_that_does_not_exist(text: str) -> None:
    with pytest.raises(ModelNotFound, match="versions are positive integers"):
        parse_version(text)


@given(st.text(max_size=8))
def test_any_text_is_a_version_or_model_not_found(text: str) -> None:
    with contextlib.suppress(ModelNotFound):
        assert parse_version(text) >= 1
