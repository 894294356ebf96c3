"""Where the project's development data lives: for the test suite and the benchmarks only, users never need it.

One setting with one default: ``$EXAG_SHARED_DATA``, else the ``shared/data`` folder next to the repository's
folder. The tests reach it through the ``shared_data`` fixture of ``conftest.py`` (and the fixtures built on it),
which skips a test with :func:`missing_reason` when the data is absent; the benchmarks through
``benchmarks/repo_helpers.py``. Plain Python (no pytest), so that the benchmark scripts can import it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SHARED_DATA_ENV", "missing_reason", "shared_data_dir"]

#: The environment variable naming the development data folder.
SHARED_DATA_ENV = "EXAG_SHARED_DATA"

_REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$EXAG_SHARED_DATA``, else ``<repo>/../shared/data``; it may not exist."""
    return Path(os.environ.get(SHARED_DATA_ENV) or _REPO_ROOT.parent / "shared" / "data")


def missing_reason(path: Path, what: str = "development data") -> str:
    """The one message for absent development data (a test's skip reason, a benchmark's note)."""
    return f"{what} not found at {path} (set {SHARED_DATA_ENV} to the development data folder)"
