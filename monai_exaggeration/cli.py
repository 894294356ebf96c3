"""Command line: ``python -m monai_exaggeration <command>``.

Commands:
  classify       score chest X-rays (file, folder or CSV manifest) with the bundle's black-box classifier.
  export         send DICOM series (e.g. the inference workflow's output) to a PACS by C-STORE or STOW-RS.
  reader-study   build, serve and analyse a radiologist reader study of the explanations.
  serve-dicom    a DICOM node: receive chest X-rays, explain them, send the results back to a PACS.
  viewer-demo    explain a chest X-ray into a private Orthanc and show the results in the OHIF viewer.

The arguments are parsed before torch, MONAI or pandas are imported, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_exaggeration.bundle import default_bundle_root
from monai_exaggeration.errors import (
    add_debug_option,
    fail,
    print_error,
    report_user_error,
    restore_error_logging,
    show_errors_as_lines,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = ["main", "classify", "build_parser"]

logger = logging.getLogger("monai_exaggeration")

#: Columns of ``scores.csv`` (a manifest's extra columns follow them).
SCORE_COLUMNS = ["image", "finding", "score", "predicted", "patient_id", "study_instance_uid", "sop_instance_uid"]


class _ModelInput:
    """Read one file and preprocess it for the classifier: ``(tensor (1, S, S), DICOM tags)`` (picklable)."""

    def __init__(self, image_size: int, aspect: str) -> None:
        self.image_size, self.aspect = image_size, aspect

    def __call__(self, path: str) -> tuple[torch.Tensor, dict]:
        from monai_exaggeration.transforms import InputLimits, read_cxr
        from monai_exaggeration.transforms.cxr import model_input

        # read_cxr + model_input: load_cxr's numbers without its MetaTensor bookkeeping (a score needs no inverse)
        image = read_cxr(path, InputLimits.for_sources())
        return model_input(image.pixels, self.image_size, self.aspect), dict(image.meta["dicom"])


def classify(
    inputs: list[dict],
    output_dir: Path,
    bundle_root: str,
    weights: str | None = None,
    image_size: int | None = None,
    aspect: str = "pad",
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every input; write ``scores.csv`` and (if any failed) ``errors.csv``; return both tables.

    Files are read and preprocessed by ``num_workers`` reader processes (default:
    :func:`~monai_exaggeration.data.streaming.default_workers`, none on 2 CPUs) while the classifier
    scores ``batch_size`` images per forward, channels-last; memory stays flat, rows keep the input
    order, and the scores equal one-by-one scoring with ``load_cxr`` to 1e-6 (tests/test_throughput.py).
    """
    import pandas as pd
    import torch

    from monai_exaggeration.binning import DECISION_THRESHOLD
    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.data.streaming import (
        ERROR_COLUMNS,
        LoadFailure,
        batches,
        compute_threads,
        failure_row,
        stream_inputs,
    )
    from monai_exaggeration.handlers import Progress
    from monai_exaggeration.utils import for_inference, write_csv_atomic

    classifier = load_bundle_classifier(bundle_root, weights=weights, device=device)
    image_size = image_size or getattr(classifier, "input_size", None)
    if not image_size:
        raise ValueError("the classifier does not record its input size -- give --image_size")
    finding = classifier.labels[classifier.output_index] if classifier.labels else "finding"
    device_ = next(classifier.parameters(), torch.empty(0)).device
    classifier = for_inference(classifier)
    scores, errors = [], []
    progress = Progress(len(inputs), "classify", unit="image", log=logger)
    stream = stream_inputs(inputs, _ModelInput(image_size, aspect), num_workers=num_workers)
    with compute_threads(num_workers, device_):
        for group in batches(stream, max(1, int(batch_size))):
            loaded = [(record, item) for _, record, item in group if not isinstance(item, LoadFailure)]
            for _, record, item in group:
                if isinstance(item, LoadFailure):
                    logger.error("%s: %s -- %s", record["image"], item.error, item.hint)
                    errors.append(failure_row(record["image"], item))
            if loaded:
                with torch.inference_mode():
                    batch = torch.stack([tensor for _, (tensor, _) in loaded]).to(device_)
                    values = classifier(batch).reshape(-1).float().cpu().tolist()
                for (record, (_, tags)), score in zip(loaded, values):
                    row = {
                        "image": record["image"],
                        "finding": finding,
                        "score": score,
                        "predicted": int(score >= DECISION_THRESHOLD),
                    }
                    row.update(
                        patient_id=tags["PatientID"],
                        study_instance_uid=tags["StudyInstanceUID"],
                        sop_instance_uid=tags["SOPInstanceUID"],
                    )
                    row.update(
                        {key: value for key, value in record.items() if key != "image"}
                    )  # the manifest's values win
                    scores.append(row)
            progress.update(len(group))
    progress.close()
    score_table = pd.DataFrame(scores, columns=list(scores[0]) if scores else SCORE_COLUMNS)
    error_table = pd.DataFrame(errors, columns=ERROR_COLUMNS)
    write_csv_atomic(score_table, output_dir / "scores.csv")
    if errors:
        write_csv_atomic(error_table, output_dir / "errors.csv")
    return score_table, error_table


def _classify_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.data import collect_inputs, default_input
    from monai_exaggeration.transforms import ASPECT_POLICIES

    if args.aspect not in ASPECT_POLICIES:
        return fail(f"--aspect {args.aspect} is not an aspect policy -- use one of {', '.join(ASPECT_POLICIES)}")
    try:
        inputs = collect_inputs(args.input or default_input())
    except (FileNotFoundError, ValueError) as error:
        return fail(error)
    output_dir = Path(args.output_dir)
    try:
        scores, errors = classify(
            inputs,
            output_dir,
            args.bundle_root,
            args.weights,
            args.image_size,
            args.aspect,
            args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
    except FileNotFoundError as error:
        return fail(error)
    if not scores.empty:
        print(scores[["image", "finding", "score", "predicted"]].to_string(index=False))
    print(
        f"\n{len(inputs)} input(s): {len(scores)} scored, {len(errors)} failed. "
        f"Scores: {output_dir / 'scores.csv'}" + (f"; errors: {output_dir / 'errors.csv'}" if len(errors) else "")
    )
    if len(errors):
        return 2 if scores.empty else 1  # 2: every input failed
    return 0


def _export_destination(args: argparse.Namespace):
    from monai_exaggeration.export import Destination, DestinationError, select_destination

    if args.config:
        if args.host or args.url:
            raise DestinationError(
                "both --config and --host/--url given -- give either --config FILE "
                "[--destination NAME] or --host/--url, not both"
            )
        return select_destination(args.config, args.destination)
    if args.destination:
        raise DestinationError(
            f"--destination {args.destination} needs --config -- add --config FILE, the destinations file that names it"
        )
    import os

    secrets = {}
    for option, field in (("password_env", "password"), ("bearer_token_env", "bearer_token")):
        variable = getattr(args, option)
        if variable:
            if variable not in os.environ:
                flag = "--" + option.replace("_", "-")
                raise DestinationError(
                    f"environment variable {variable} ({flag}) is not set -- set it, or leave out {flag}"
                )
            secrets[field] = os.environ[variable]
    settings = dict(
        url=args.url or "",
        host=args.host or "",
        port=args.port,
        called_ae=args.called_ae,
        calling_ae=args.calling_ae,
        username=args.username or "",
        tls_ca=args.tls_ca or "",
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        connect_timeout=args.timeout,
        acse_timeout=args.timeout,
        dimse_timeout=args.timeout,
        network_timeout=args.timeout,
        **secrets,
    )
    if not settings["url"] and not settings["host"]:
        raise DestinationError(
            "no destination given -- give --host/--port/--called-ae, --url, or --config FILE [--destination NAME]"
        )
    return Destination(**settings)


def _echo(destination) -> int:
    """``export --echo``: C-ECHO (DIMSE) or a DICOMweb query to ``destination``; 0 on success."""
    from monai_exaggeration.export import PermanentSendError, TransientSendError, make_sender

    sender = make_sender(destination)
    try:
        status = sender.echo()
    except (TransientSendError, PermanentSendError) as error:
        return fail(
            f"C-ECHO to {destination.label} failed: {error} -- check the host, port and AE titles, "
            "and that the PACS accepts our calling AE",
            status=1,
        )
    finally:
        sender.close()
    what = "C-ECHO" if destination.kind == "dimse" else "DICOMweb query"
    print(f"{what} to {destination.label}: status 0x{status:04X}" + (" (success)" if status == 0 else ""))
    return 0 if status == 0 else 1


def _open_ledger(path: Path, verify: bool, destination_label: str):
    """The send ledger at ``path``; with ``verify`` an unusable one is moved aside and rebuilt from the PACS."""
    from monai_exaggeration.export import LedgerError, SendLedger, move_aside

    try:
        return SendLedger(path)
    except LedgerError as error:
        if not verify:
            raise
        aside = move_aside(path)  # --verify rebuilds it from what the PACS holds
        logger.warning(
            "send ledger %s was unusable (%s): moved it to %s; rebuilding it from what %s holds",
            path,
            error.problem,
            aside,
            destination_label,
        )
        return SendLedger(path)


def _export_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.export import DestinationError, collect_dicom_files, export_files

    if args.debug:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
    try:
        if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
            raise ValueError(
                "--retries, --backoff or --timeout out of range -- give --retries and --backoff >= 0, --timeout > 0"
            )
        if args.echo and args.verify:
            raise ValueError(
                "--verify with --echo -- --verify checks the instances of an export: give the files "
                "to export instead of --echo"
            )
        destination = _export_destination(args)
        files = [] if args.echo else collect_dicom_files(args.sources)
    except (DestinationError, FileNotFoundError, ValueError) as error:
        return fail(error)
    if args.echo:
        return _echo(destination)
    if not files:
        return fail(
            f"nothing to send: no files found in {', '.join(args.sources) or 'the command line'} -- "
            "give the inference's output folder, DICOM files or a frames.csv"
        )
    first = Path(args.sources[0]).expanduser()
    home = first if first.is_dir() else first.parent
    ledger_path = Path(args.ledger) if args.ledger else home / "export_ledger.sqlite"
    report_path = Path(args.report) if args.report else home / "export_report.csv"
    try:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        with _open_ledger(ledger_path, args.verify, destination.label) as ledger:
            report = export_files(
                files, destination, ledger, retries=args.retries, backoff=args.backoff, verify=args.verify
            )
    except (ValueError, OSError) as error:
        return fail(error)
    if not report.rows:
        return fail(
            f"nothing to send: no DICOM files in {', '.join(args.sources)} -- "
            "give the inference's output folder, DICOM files or a frames.csv"
        )
    report.write_csv(report_path)
    print(report.describe())
    if not args.verify and report.count("already_sent"):
        print(
            f"({report.count('already_sent')} already present according to the send ledger, not checked with the "
            "PACS: --verify asks it and resends what it lacks)"
        )
    print(f"report: {report_path}; ledger: {ledger_path}")
    return report.exit_code


class CommandParser(argparse.ArgumentParser):
    """argparse with the package's error format: the usage of the (sub)command that was given, then one
    ``error: <what is wrong> -- <what to do>`` line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        guesses = _closest_words(self, message)
        hint = (
            f"did you mean {', '.join(guesses)}? ({self.prog} --help lists the options)"
            if guesses
            else (f"{self.prog} --help lists the options")
        )
        print_error(f"{message} -- {hint}")
        sys.exit(2)


def _closest_words(parser: argparse.ArgumentParser, message: str) -> list[str]:
    """The options (``--inptu`` -> ``--input``) or command (``classfy`` -> ``classify``) an argparse
    ``message`` most likely meant."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        names = re.findall(r"'([^']*)'", choice.group(2))
        return difflib.get_close_matches(choice.group(1), names, n=1, cutoff=0.6)
    options = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    guesses = []
    for word in message.replace(",", " ").split():
        if word.startswith("--") and word not in options:
            guesses += difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6)
    return guesses


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that ``args`` went through (``classify``, ``reader-study build``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _chosen_parser(chosen, args)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``classify``, ``export``, ``reader-study``, ``serve-dicom`` and ``viewer-demo``, each with
    its own options."""
    from monai_exaggeration.node.cli import add_dicom_node_parser
    from monai_exaggeration.reader_study.cli import add_reader_study_parser

    parser = CommandParser(prog="python -m monai_exaggeration", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_classify_parser(commands)
    _add_export_parser(commands)
    add_reader_study_parser(commands)
    add_dicom_node_parser(commands)
    _add_viewer_demo_parser(commands)
    return parser


def _add_viewer_demo_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "viewer-demo",
        help="explain a chest X-ray into a private Orthanc and show the results in the OHIF viewer",
        description="Start Orthanc with DICOMweb, explain one chest X-ray (default: RG1 of pydicom-data) into it "
        "(SC series, presentation state, SR with CTR widths, burned-in copy) and serve the OHIF viewer on "
        "localhost (docs/dicom_node.md, 'In the OHIF viewer').",
    )
    demo.add_argument("--input", default=None, help="the chest X-ray to explain (default: RG1_UNCR.dcm)")
    demo.add_argument("--port", type=int, default=3000, help="the viewer's local port (default 3000; 0: any free)")
    demo.add_argument("--dicomweb", default=None, help="a running DICOMweb server's root instead of a private Orthanc")
    demo.add_argument("--work_dir", default=None, help="keep the outputs and Orthanc's data here (default: temporary)")
    demo.add_argument("--serve_seconds", type=float, default=None, help="stop after this long (default: at Ctrl-C)")
    demo.set_defaults(handler=_viewer_demo_command)


def _viewer_demo_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.viewer_demo import run_demo

    return run_demo(args.input, args.port, args.dicomweb, args.work_dir, args.serve_seconds)


def _add_classify_parser(commands: Any) -> None:
    classify_parser = commands.add_parser(
        "classify",
        help="score chest X-rays with the bundle's classifier",
        description="Score chest X-rays (DICOM/PNG/JPEG/NIfTI file, folder searched recursively, or CSV manifest) "
        "with the bundle's black-box classifier. Writes scores.csv (and errors.csv for unreadable files).",
    )
    classify_parser.add_argument(
        "--input", help="file, folder or CSV manifest (default: RG1_UNCR.dcm from pydicom-data)"
    )
    classify_parser.add_argument("--output_dir", default="classify_output", help="where to write scores.csv")
    classify_parser.add_argument(
        "--bundle_root",
        default=default_bundle_root("cxr_classifier"),
        help="the classifier's bundle folder (default: %(default)s)",
    )
    classify_parser.add_argument("--weights", help="classifier weights (default: <bundle_root>/models/classifier.pt)")
    classify_parser.add_argument(
        "--image_size", type=int, default=None, help="model input size (default: the classifier's own, from its bundle)"
    )
    classify_parser.add_argument(
        "--aspect", default="pad", help="aspect policy: pad, crop or stretch (default: pad; see docs/input.md)"
    )
    classify_parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    classify_parser.add_argument(
        "--batch_size", type=int, default=64, help="images per classifier forward (default: %(default)s)"
    )
    classify_parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="reader processes (default: one per CPU beyond two, at most 4; 0 reads in the main process)",
    )
    add_debug_option(classify_parser)
    classify_parser.set_defaults(handler=_classify_command)


def _add_export_parser(commands: Any) -> None:
    from monai_exaggeration.retry import BACKOFF_S, RETRIES

    export_parser = commands.add_parser(
        "export",
        help="send DICOM series to a PACS (C-STORE or DICOMweb STOW-RS)",
        description="Send DICOM files (folders searched recursively, files, or an inference frames.csv) to a PACS\n"
        "by DICOM C-STORE or DICOMweb STOW-RS. Instances the destination has confirmed are kept in a send\n"
        "ledger (SQLite), so an interrupted export can simply be run again: it sends only what is missing.\n"
        "With --verify the PACS is asked (C-FIND, or QIDO-RS for DICOMweb) which instances it holds, and\n"
        "what it lacks is sent again. Writes export_report.csv. Exit status: 0 all arrived (with --verify:\n"
        "and the PACS lists them all), 1 some failed or could not be confirmed, 2 bad arguments, a damaged\n"
        "send ledger, or nothing to send.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m monai_exaggeration export --echo --host pacs --port 11112 --called-ae ARCHIVE\n"
        "  python -m monai_exaggeration export out/ --host pacs --port 11112 --called-ae ARCHIVE --calling-ae EXAGGERATION\n"
        "  python -m monai_exaggeration export out/frames.csv --config destinations.yaml --destination research-pacs\n"
        "  python -m monai_exaggeration export out/ --config destinations.yaml --verify   # ask the PACS, resend losses\n"
        "  PACS_TOKEN=... python -m monai_exaggeration export out/ --url https://pacs/dicom-web --bearer-token-env PACS_TOKEN\n"
        "see docs/pacs_export.md",
    )
    export_parser.add_argument("sources", nargs="*", help="folders, DICOM files or an inference frames.csv")
    where = export_parser.add_argument_group("destination (DIMSE)")
    where.add_argument("--host", help="PACS host name or address")
    where.add_argument("--port", type=int, default=104, help="PACS DICOM port (default: %(default)s)")
    where.add_argument("--called-ae", default="ANY-SCP", help="the PACS's AE title (default: %(default)s)")
    where.add_argument("--calling-ae", default="EXAGGERATION", help="our AE title (default: %(default)s)")
    where.add_argument("--tls-ca", help="CA certificate file: use TLS and verify the peer")
    where.add_argument("--tls-cert", help="our certificate (TLS client authentication)")
    where.add_argument("--tls-key", help="our private key")
    web = export_parser.add_argument_group("destination (DICOMweb)")
    web.add_argument("--url", help="DICOMweb base URL, e.g. https://pacs.example.org/dicom-web (STOW-RS)")
    web.add_argument("--username", help="HTTP basic authentication user")
    web.add_argument("--password-env", help="environment variable holding the basic-auth password")
    web.add_argument("--bearer-token-env", help="environment variable holding a bearer token")
    named = export_parser.add_argument_group("named destinations")
    named.add_argument("--config", help="YAML/JSON file with a 'destinations:' mapping (see docs/pacs_export.md)")
    named.add_argument("--destination", help="name of the destination in --config")
    export_parser.add_argument("--echo", action="store_true", help="only check the peer with C-ECHO")
    export_parser.add_argument(
        "--verify",
        action="store_true",
        help="ask the PACS which instances it holds (C-FIND at IMAGE level; QIDO-RS for --url) instead of trusting the "
        "send ledger alone: resend what it lacks, rebuild a damaged ledger, report 'confirmed in PACS: N of M'",
    )
    export_parser.add_argument("--ledger", help="send ledger (default: <first source folder>/export_ledger.sqlite)")
    export_parser.add_argument("--report", help="CSV report (default: <first source folder>/export_report.csv)")
    export_parser.add_argument(
        "--retries", type=int, default=RETRIES, help="retries of transient failures (default: %(default)s)"
    )
    export_parser.add_argument(
        "--backoff", type=float, default=BACKOFF_S, help="first retry delay in s, doubling (default: %(default)s)"
    )
    export_parser.add_argument(
        "--timeout", type=float, default=30.0, help="network timeouts in s (default: %(default)s)"
    )
    export_parser.add_argument("--debug", action="store_true", help="log pynetdicom's association and DIMSE messages")
    export_parser.set_defaults(handler=_export_command)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (bad input, setting or missing file) is one ``error: ...`` line on stderr
    and exit status 2.

    The arguments are parsed first (torch and MONAI are imported by the command that needs them). An
    option the chosen (sub)command does not know prints that command's usage. ``--debug`` or
    ``EXAG_DEBUG=1`` shows a user error's traceback instead (``export --debug`` also logs the DICOM messages).
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # library warnings go to the log, not as raw warnings to the console
    show_errors_as_lines()  # the package's logged errors read like the command's own: `error: ...` on stderr
    try:
        return int(args.handler(args))
    except Exception as error:  # noqa: BLE001 - user errors become one line, the rest keeps its traceback
        if not getattr(args, "debug", False) and report_user_error(error):
            return 2
        raise
    finally:
        restore_error_logging()


if __name__ == "__main__":
    sys.exit(main())
