"""dicom3tools' ``dciodvfy`` for the tests that validate written DICOM files (Debian package dicom3tools).

Import in a test module with ``from dicom_validation import dciodvfy_errors, dciodvfy_report``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

__all__ = ["dciodvfy_errors", "dciodvfy_report"]


def dciodvfy_report(path: str | os.PathLike, timeout: float = 120.0) -> tuple[list[str], list[str]] | None:
    """``(errors, warnings)`` lines of ``dciodvfy`` for one file; None if it is not installed."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        return None
    result = subprocess.run(
        [binary, str(path)], check=False, capture_output=True, text=True, errors="replace", timeout=timeout
    )
    lines = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^Error\b", line)]
    warnings = [line for line in lines if re.match(r"^Warning\b", line)]
    return errors, warnings


def dciodvfy_errors(path: str | os.PathLike) -> list[str] | None:
    """The "Error" lines ``dciodvfy`` prints for ``path`` (empty list: valid); None if it is not installed."""
    report = dciodvfy_report(path)
    return None if report is None else report[0]
