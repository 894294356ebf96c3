"""``python -m monai_exaggeration reader-study <build|serve|links|analyze>``: argparse wiring of the reader study.

:func:`add_reader_study_parser` adds the ``reader-study`` command to the package's command line
(:func:`monai_exaggeration.cli.build_parser`) and returns its sub-command action.
Exit codes: 0 done (``serve``: stopped with Ctrl-C), 2 bad input (a one-line message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from monai_exaggeration.errors import add_debug_option
from monai_exaggeration.errors import fail as _fail
from monai_exaggeration.reader_study.config import ReaderStudyError

__all__ = ["add_reader_study_parser"]


#: The optional packages of the reader study (``pip install "monai_exaggeration[reader-study]"``).
OPTIONAL_PACKAGES = ("fastapi", "uvicorn", "statsmodels", "starlette")


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (and unwritable outputs) become exit status 2 with a one-line message; so does a
    missing optional package of the reader study, with the command that installs it."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in OPTIONAL_PACKAGES:
                raise
            return _fail(
                f"the reader study needs the optional package {error.name}, which is not installed: "
                'install the extras with pip install "monai_exaggeration[reader-study]" '
                '(from a source tree: pip install -e ".[reader-study]")'
            )
        except (ReaderStudyError, OSError) as error:
            if getattr(args, "debug", False):
                raise
            return _fail(error)

    return run


def _build_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.reader_study.builder import build_study

    result = build_study(args.config, args.out, force=args.force)
    print(result.describe())
    return 0


def _serve_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.reader_study.server import StudyError, serve

    try:
        serve(
            args.study_dir, host=args.host, port=args.port, base_url=args.base_url, secure_cookies=args.secure_cookies
        )
    except StudyError as error:
        return _fail(error)
    return 0


def _links_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.reader_study.server import StudyError, default_base_url, personal_links

    try:
        links = personal_links(args.study_dir, args.base_url or default_base_url(args.host, args.port))
    except StudyError as error:
        return _fail(error)
    for who, link in links.items():
        print(f"{who}\t{link}")
    return 0


def _analyze_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.reader_study.analysis import analyze_study

    result = analyze_study(args.study_dir, args.out, mrmc_questions=args.mrmc_question)
    print(result.describe())
    return 0


def _add_build(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build",
        help="build a study folder from an inference output",
        description="Build a reader-study folder (study.json, de-identified PNG assets, private/ reader tokens and key) "
        "from an inference output and a study.yaml. See docs/reader_study.md.",
    )
    parser.add_argument(
        "--config", required=True, help="study.yaml (title, seed, inference_dir, cases, readers, arms, questions)"
    )
    parser.add_argument("--out", required=True, help="the study folder to create (must be new or empty)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out (never one holding responses)")
    add_debug_option(parser)
    parser.set_defaults(handler=_guarded(_build_command))


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the web reading app of a study",
        description="Serve the reading app of a study folder: prints each reader's personal link, stores every answer "
        "at once in STUDY_DIR/responses.sqlite. Loopback only by default. See docs/reader_app.md.",
    )
    parser.add_argument("study_dir", help="the study folder made by `reader-study build`")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: %(default)s, this machine only; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--base-url",
        help="the address readers reach the app at, for the personal links "
        "(e.g. https://study.example.org behind a reverse proxy; default: http://HOST:PORT)",
    )
    parser.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the session cookie Secure (browsers send it over HTTPS only): use it behind an HTTPS "
        "reverse proxy, not when readers reach the app over plain http",
    )
    add_debug_option(parser)
    parser.set_defaults(handler=_guarded(_serve_command))


def _add_links(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "links",
        help="print the personal links of a study",
        description="Print each reader's personal link and the administrator's (BASE/r#TOKEN), one per line. "
        "`serve` never prints them (a server's output often ends up in a log); it writes them to "
        "STUDY_DIR/private/links.txt. See docs/reader_app.md.",
    )
    parser.add_argument("study_dir", help="the study folder made by `reader-study build`")
    parser.add_argument("--base-url", help="the address readers reach the app at (default: http://HOST:PORT)")
    parser.add_argument("--host", default="127.0.0.1", help="as given to serve, for the default base URL")
    parser.add_argument("--port", type=int, default=8765, help="as given to serve, for the default base URL")
    add_debug_option(parser)
    parser.set_defaults(handler=_guarded(_links_command))


def _add_analyze(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "analyze",
        help="analyse the answers of a study",
        description="Analyse a study's answers: responses.csv, Likert summaries, ANOVA + Tukey HSD, mixed model, "
        "paired confidence change, inter-reader kappa, forced-choice accuracy, iMRMC files and an HTML report.",
    )
    parser.add_argument("study_dir", help="the study folder (with responses.sqlite)")
    parser.add_argument("--out", help="where to write the results (default: STUDY_DIR/analysis)")
    parser.add_argument(
        "--mrmc-question",
        action="append",
        metavar="ID",
        help="a Likert rating question for the AUC and iMRMC export (repeatable; default: ids starting with 'confidence')",
    )
    add_debug_option(parser)
    parser.set_defaults(handler=_guarded(_analyze_command))


def add_reader_study_parser(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``reader-study`` (sub-commands ``build``, ``serve``, ``links`` and ``analyze``) to ``commands``; return its sub-commands."""
    parser = commands.add_parser(
        "reader-study",
        help="radiologist reader study: build a study, serve the reading app, analyse the answers",
        description="Radiologist reader study of the explanations: `build` a study folder from an inference output, "
        "`serve` the web reading app to the readers, print their personal `links`, `analyze` their answers. "
        "See docs/reader_study.md.",
    )
    study_commands = parser.add_subparsers(dest="reader_study_command", required=True)
    _add_build(study_commands)
    _add_serve(study_commands)
    _add_links(study_commands)
    _add_analyze(study_commands)
    return study_commands
