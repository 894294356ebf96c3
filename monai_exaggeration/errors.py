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


#: The package's root logger.
_PACKAGE_LOGGER = "monai_exaggeration"

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


#: Every message meant for a user starts with this, whatever reports it (a command, a bundle workflow, the log).
ERROR_PREFIX = "error: "


def error_line(message: object) -> str:
    """``message`` as the one line a user sees: ``error: <what is wrong> -- <what to do>``."""
    text = " ".join(str(message).split())
    return text if text.startswith(ERROR_PREFIX) else ERROR_PREFIX + text


def print_error(message: object, stream=None) -> None:
    """Write :func:`error_line` of ``message`` to ``stream`` (default: standard error)."""
    stream = stream or sys.stderr
    stream.write(error_line(message) + "\n")
    stream.flush()


def fail(error: object, status: int = 2) -> int:
    """Log a settings or data error as one line on the package's logger and return ``status`` (2).

    The commands show the package's errors as ``error: ...`` lines on stderr (:func:`show_errors_as_lines`);
    log files and test capture keep the record.
    """
    logging.getLogger(_PACKAGE_LOGGER).error("%s", " ".join(str(error).split()))
    return status


def report_user_error(error: BaseException, stream=None) -> bool:
    """Print ``error`` as one ``error: ...`` line when it is a user error; True if it was.

    With ``--debug`` or ``EXAG_DEBUG=1`` nothing is printed (False): the caller lets the traceback through.
    """
    message = user_message(error)
    if message is None or debug_requested():
        return False
    print_error(message, stream)
    return True


def add_debug_option(parser) -> None:
    """``--debug`` on an ``argparse`` parser: show the traceback of an error instead of its one line."""
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error (or set {DEBUG_VARIABLE}=1)"
    )


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (standard output or error), where the ``error:`` line goes instead."""
    stream = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and stream in {
        sys.stdout,
        sys.stderr,
        sys.__stdout__,
        sys.__stderr__,
    }


class ErrorLines(logging.Handler):
    """The package's log records as the console shows them: errors as one ``error: ...`` line on stderr.

    Installed on the ``monai_exaggeration`` logger (which then stops propagating) by
    :func:`show_errors_as_lines`: an ERROR record of any of the package's loggers is written as
    :func:`error_line` to standard error and still reaches the root's other handlers (log files,
    test capture); every other record goes to the root's handlers as propagation would send it. So a
    failure reads the same from a bundle workflow, ``classify`` or any other command, and a log file
    keeps its full lines. Records with a traceback (``logger.exception``) are left as they are.
    """

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        if record.levelno < logging.ERROR or record.exc_info:
            root.callHandlers(record)
            return
        try:
            print_error(record.getMessage())
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)
        for handler in root.handlers:
            if not _is_console(handler) and record.levelno >= handler.level:
                handler.handle(record)


def show_errors_as_lines() -> None:
    """Route the package's log records through :class:`ErrorLines` (idempotent; undo: :func:`restore_error_logging`)."""
    package = logging.getLogger(_PACKAGE_LOGGER)
    if not any(isinstance(handler, ErrorLines) for handler in package.handlers):
        package.addHandler(ErrorLines())
    package.propagate = False


def restore_error_logging() -> None:
    """Undo :func:`show_errors_as_lines`: the package's records propagate to the root's handlers again."""
    package = logging.getLogger(_PACKAGE_LOGGER)
    for handler in [h for h in package.handlers if isinstance(h, ErrorLines)]:
        package.removeHandler(handler)
    package.propagate = True


def _bundle_excepthook(previous):
    def hook(exc_type, error, tb):
        if report_user_error(error):
            sys.stdout.flush()
            logging.shutdown()
            os._exit(2)  # the interpreter would exit 1 after an uncaught exception; 2 = nothing could run
        previous(exc_type, error, tb)

    hook.exaggeration = True
    return hook


def running_bundle_workflow() -> bool:
    """True in a process started as ``python -m monai.bundle ...`` (also under ``torchrun``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", "") in {"monai.bundle.__main__", "monai.bundle"}


def install_bundle_error_hook() -> None:
    """Under ``python -m monai.bundle``, show user errors as one line and exit 2 (idempotent).

    MONAI's bundle runner lets exceptions reach the interpreter, which prints a long traceback
    (config evaluation wraps the real message twice). This hook is installed by the first step of every
    bundle workflow (:func:`monai_exaggeration.bundle.check_overrides`) and only changes how uncaught
    *user* errors are reported; the
    package's logged errors become ``error: ...`` lines too (:func:`show_errors_as_lines`).
    """
    if not running_bundle_workflow():
        return
    show_errors_as_lines()
    if getattr(sys.excepthook, "exaggeration", False):
        return
    sys.excepthook = _bundle_excepthook(sys.excepthook)
