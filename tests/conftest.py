"""Shared fixtures. Real-data tests read ../shared in place; they skip only when it is absent
(and under CI=true its absence is an error, so CI can never pass by skipping them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anomseg.shared import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("../shared is required under CI but is missing")
        pytest.skip("../shared is absent")
    return d


@pytest.fixture(scope="session")
def erfnet_checkpoint(shared: Path) -> Path:
    return shared / "models" / "erfnet_cityscapes.pth"


@pytest.fixture(scope="session")
def road_anomaly21(shared: Path) -> Path:
    return shared / "data" / "anomaly_val" / "RoadAnomaly21"


@pytest.fixture(scope="session")
def fs_static(shared: Path) -> Path:
    return shared / "data" / "anomaly_val" / "fs_static"
