"""Shared fixtures: one set of tiny random-weight models per test session, small control videos, and one throw-away
PostgreSQL server per session (``pg_cluster``; ``pg_url`` is a fresh database on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pg_fixtures import pg_cluster, pg_url  # noqa: F401  (fixtures, shared here so a session starts one server)

from pipelines.loading import ModelManager
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def models(tiny_weights: Path) -> ModelManager:
    return ModelManager(tiny_weights, device="cpu", max_models=3)


@pytest.fixture(scope="session")
def pose_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 416x240, 17-frame, 16 fps pose control video (already at the 240p output size)."""
    return write_sample("pose", tmp_path_factory.mktemp("videos") / "pose.mp4", num_frames=17)


@pytest.fixture(scope="session")
def depth_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample("depth", tmp_path_factory.mktemp("videos") / "depth.mp4", num_frames=17)
