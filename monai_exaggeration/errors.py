"""Exceptions with messages meant for users (they name the input and say what to do)."""

from __future__ import annotations

import os


class CXRInputError(ValueError):
    """A chest X-ray input file cannot be used; the message names the file, the problem and a fix."""

    def __init__(self, path: str | os.PathLike, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" -- {hint}"
        super().__init__(message)


def find_cxr_input_error(exc: BaseException) -> CXRInputError | None:
    """Return the CXRInputError inside ``exc`` (MONAI wraps transform errors in RuntimeError), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CXRInputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
