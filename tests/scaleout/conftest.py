"""A cluster for the scale-out tests: Redis, three replicas (one with two workers), nginx.

``scaleout_cluster`` starts once per module; ``cluster`` hands it to a test with whatever
an earlier test took down (Redis, a killed replica) brought back first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.testing import make_tiny_model
from tests.scaleout.client import MODEL
from tests.scaleout.cluster import Cluster, require

WORKERS = [1, 2, 1]
"""Worker processes of each replica: workers and replicas both share the state."""

REQUEST_TIMEOUT_S = 3.0
"""Each replica's LSTM_SERVE_REQUEST_TIMEOUT_S: a stateful chunk without Redis gets its
503 within it."""


@pytest.fixture(scope="session")
def scaleout_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One unidirectional classifier (server-held state needs that), version 1."""
    root = tmp_path_factory.mktemp("scaleout-repository")
    make_tiny_model(root, MODEL, 1, features=3, layers=(8, 4), classes=3, seed=11)
    return root


@pytest.fixture(scope="module")
def scaleout_cluster(
    tmp_path_factory: pytest.TempPathFactory, scaleout_repository: Path
) -> Iterator[Cluster]:
    require("redis-server")
    require("nginx")
    cluster = Cluster(
        tmp_path_factory.mktemp("scaleout"),
        scaleout_repository,
        WORKERS,
        {
            "LSTM_SERVE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
            "LSTM_SERVE_LOG_LEVEL": "warning",
        },
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(scaleout_cluster: Cluster) -> Cluster:
    scaleout_cluster.heal()
    return scaleout_cluster
