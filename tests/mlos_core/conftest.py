"""Fixtures of the server tests: per test module, a sandbox with the demo models published
(``published``) and one real MLOS Core serving both (``core``); a module may override either.
For the whole session, one simulated multi-node Ray cluster with Ray Serve (``ray_fleet``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from axon.settings import Settings
from tests.support.core_server import Core, core_server
from tests.support.ray_fleet import RayFleet
from tests.support.ray_fleet import ray_fleet as start_ray_fleet
from tests.support.served import MLP, TEXT, publish_demo_models


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    tmp = tmp_path_factory.mktemp("core")
    return publish_demo_models(tmp), tmp


@pytest.fixture(scope="module")
def core(published: tuple[Settings, Path]) -> Iterator[Core]:
    settings, tmp = published
    with core_server(settings.publish_dir, tmp, "--max-batch-size", "16") as c:
        for spec in (TEXT, MLP):
            status, body, _ = c.call("POST", "/models/register", {"model_id": spec})
            assert status == 201, body
        yield c


@pytest.fixture(scope="session")
def ray_fleet() -> Iterator[RayFleet]:
    pytest.importorskip("ray")
    with start_ray_fleet() as fleet:
        yield fleet
