"""What the benchmark scripts share with the test suite, both kept under ``tests/`` (not part of the package).

* the development data folder: :func:`shared_data_dir` (``$EXAG_SHARED_DATA``, default ``<repo>/../shared/data``;
  ``tests/dev_data.py``), and :func:`missing_reason`, the message when it is absent;
* the throw-away local Orthanc: :class:`LocalOrthanc` and its tools (``tests/orthanc_harness.py``).

A script of this folder imports them with ``from repo_helpers import ...`` (run as ``python benchmarks/NAME.py``,
the folder is on ``sys.path``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from dev_data import SHARED_DATA_ENV, missing_reason, shared_data_dir  # noqa: E402
from orthanc_harness import LocalOrthanc, dcmtk_tool, free_port, orthanc_binary  # noqa: E402

__all__ = [
    "SHARED_DATA_ENV",
    "LocalOrthanc",
    "dcmtk_tool",
    "free_port",
    "missing_reason",
    "orthanc_binary",
    "shared_data_dir",
]
