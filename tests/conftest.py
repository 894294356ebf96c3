"""Shared fixtures: where the real data lives, and small real chest X-ray files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$EXAG_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("EXAG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared CXR data not found at {root} (set EXAG_SHARED_DATA to run these tests)")
    return root


@pytest.fixture(scope="session")
def shared_dicom(shared_data: Path) -> Path:
    return shared_data / "dicom"


@pytest.fixture(scope="session")
def nih_dir(shared_data: Path) -> Path:
    folder = shared_data / "nih-cardiomegaly-128"
    if not folder.is_dir():
        pytest.skip(f"NIH cardiomegaly sample not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def rg1_uncr() -> Path:
    """A real 15-bit MONOCHROME1 CR chest PA (1955 x 1841) shipped by the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    return Path(path)
