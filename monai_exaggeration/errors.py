"""Exceptions with messages meant for users (they name the input and say what to do)."""

from __future__ import annotations

import logging
import os
import sys


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


class UserError(Exception):
    """A problem the user can fix (a setting, a missing file, an unusable input).

    Commands and bundle workflows show it as one line (exit status 2) instead of a traceback;
    ``--debug`` or ``EXAG_DEBUG=1`` shows the traceback.
    """


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset folder or manifest a workflow needs does not exist or has no manifest."""


#: Set this environment variable to 1 (or pass ``--debug``) to see tracebacks of user errors.
DEBUG_VARIABLE = "EXAG_DEBUG"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when the user asked for tracebacks (``EXAG_DEBUG=1`` or ``--debug`` on the command line)."""
    if os.environ.get(DEBUG_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return "--debug" in (sys.argv if argv is None else argv)


def _raised_in(error: BaseException, *folders: str) -> bool:
    """Whether the innermost frame of ``error``'s traceback is a file under one of ``folders``."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return any(filename.startswith(folder + os.sep) for folder in folders)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes/contexts, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def user_message(error: BaseException) -> str | None:
    """The one-line message of a user error inside ``error``'s chain, or None for a program error.

    User errors are :class:`UserError` (and :class:`CXRInputError`), and ``FileNotFoundError`` /
    ``ValueError`` / ``KeyError`` raised by this package's own checks or by MONAI's config parser
    (a bad reference or override). Anything else is a bug and keeps its traceback.
    """
    chain = _chain(error)
    for item in chain:
        if isinstance(item, (UserError, CXRInputError)):
            return str(item)
    try:
        import monai

        monai_bundle = os.path.join(os.path.dirname(os.path.abspath(monai.__file__)), "bundle")
    except ImportError:  # pragma: no cover - MONAI is a dependency
        monai_bundle = _PACKAGE_DIR
    for item in reversed(chain):  # the innermost is the most specific
        if isinstance(item, (FileNotFoundError, ValueError, KeyError)) and _raised_in(item, _PACKAGE_DIR, monai_bundle):
            text = str(item.args[0]) if isinstance(item, KeyError) and item.args else str(item)
            return text.strip().splitlines()[0] if text.strip() else type(item).__name__
    return None


def report_user_error(error: BaseException, stream=None) -> bool:
    """Print ``error`` as one line with the debug hint when it is a user error; True if it was."""
    message = user_message(error)
    if message is None or debug_requested():
        return False
    stream = stream or sys.stderr
    stream.write(f"error: {message}\n(for the traceback, rerun with --debug or {DEBUG_VARIABLE}=1)\n")
    stream.flush()
    return True


def _bundle_excepthook(previous):
    def hook(exc_type, error, tb):
        if report_user_error(error):
            sys.stdout.flush()
            logging.shutdown()
            os._exit(2)  # the interpreter would exit 1 after an uncaught exception; 2 = nothing could run
        previous(exc_type, error, tb)

    hook.exaggeration = True
    return hook


def install_bundle_error_hook() -> None:
    """Under ``python -m monai.bundle``, show user errors as one line and exit 2 (idempotent).

    MONAI's bundle runner lets exceptions reach the interpreter, which prints a long traceback
    (config evaluation wraps the real message twice). This hook is installed when the package is
    imported by a bundle config and only changes how uncaught *user* errors are reported.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", "") not in {"monai.bundle.__main__", "monai.bundle"}:
        return
    if getattr(sys.excepthook, "exaggeration", False):
        return
    sys.excepthook = _bundle_excepthook(sys.excepthook)
