"""Fixtures for the PACS export tests: a throw-away Orthanc per test and small SC series to send.

Load them in a test module with ``pytest_plugins = ["orthanc_fixture"]`` (not in conftest.py);
helpers are in ``export_helpers.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from export_helpers import make_series
from orthanc_harness import LocalOrthanc


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> list[Path]:
    """Two SC series (10 + 10 instances, 64 x 64 px) with the RG1 chest's patient and study."""
    return make_series(rg1_uncr, tmp_path_factory.mktemp("series"), ("model A", "model B"))


@pytest.fixture()
def pacs(tmp_path: Path):
    """A fresh Orthanc per test (starts in ~0.1 s; killed afterwards: a graceful stop takes ~3 s)."""
    server = LocalOrthanc(tmp_path / "orthanc").start()
    yield server
    server.stop(kill=True)
