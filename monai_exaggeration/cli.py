"""Command line: ``python -m monai_exaggeration <command>``.

Commands:
  classify   score chest X-rays (file, folder or CSV manifest) with the bundle's black-box classifier.
  export     send DICOM series (e.g. the inference workflow's output) to a PACS by C-STORE or STOW-RS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from monai_exaggeration.bundle import default_bundle_root, load_bundle_classifier
from monai_exaggeration.data import collect_inputs, default_input
from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.transforms import ASPECT_POLICIES, load_cxr
from monai_exaggeration.utils import write_csv_atomic

__all__ = ["main", "classify"]

logger = logging.getLogger("monai_exaggeration")

#: Columns of ``scores.csv`` (a manifest's extra columns follow them).
SCORE_COLUMNS = ["image", "finding", "score", "predicted", "patient_id", "study_instance_uid", "sop_instance_uid"]


def classify(
    inputs: list[dict],
    output_dir: Path,
    bundle_root: str,
    weights: str | None = None,
    image_size: int = 128,
    aspect: str = "pad",
    device: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every input; write ``scores.csv`` and (if any failed) ``errors.csv``; return both tables."""
    classifier = load_bundle_classifier(bundle_root, weights=weights, device=device)
    finding = classifier.labels[classifier.output_index] if classifier.labels else "finding"
    device_ = next(classifier.parameters(), torch.empty(0)).device
    scores, errors = [], []
    for record in tqdm(inputs, desc="classify", unit="image", disable=None):
        path = record["image"]
        try:
            image = load_cxr(path, spatial_size=image_size, aspect=aspect)
        except CXRInputError as error:
            logger.error("%s", error)
            errors.append({"image": path, "error": error.problem, "hint": error.hint})
            continue
        with torch.no_grad():
            score = float(classifier(image[None].to(device_))[0])
        tags = image.meta["dicom"]
        row = {"image": path, "finding": finding, "score": score, "predicted": int(score >= 0.5)}
        row.update(
            patient_id=tags["PatientID"],
            study_instance_uid=tags["StudyInstanceUID"],
            sop_instance_uid=tags["SOPInstanceUID"],
        )
        row.update({key: value for key, value in record.items() if key != "image"})  # the manifest's values win
        scores.append(row)
    score_table = pd.DataFrame(scores, columns=list(scores[0]) if scores else SCORE_COLUMNS)
    error_table = pd.DataFrame(errors, columns=["image", "error", "hint"])
    write_csv_atomic(score_table, output_dir / "scores.csv")
    if errors:
        write_csv_atomic(error_table, output_dir / "errors.csv")
    return score_table, error_table


def _classify_command(args: argparse.Namespace) -> int:
    try:
        inputs = collect_inputs(args.input or default_input())
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    output_dir = Path(args.output_dir)
    try:
        scores, errors = classify(inputs, output_dir, args.bundle_root, args.weights, args.image_size, args.aspect, args.device)
    except FileNotFoundError as error:
        logger.error("%s", error)
        return 2
    if not scores.empty:
        print(scores[["image", "finding", "score", "predicted"]].to_string(index=False))
    print(
        f"\n{len(inputs)} input(s): {len(scores)} scored, {len(errors)} failed. "
        f"Scores: {output_dir / 'scores.csv'}" + (f"; errors: {output_dir / 'errors.csv'}" if len(errors) else "")
    )
    return 1 if len(errors) else 0


def _export_destination(args: argparse.Namespace):
    from monai_exaggeration.export import Destination, DestinationError, select_destination

    if args.config:
        if args.host or args.url:
            raise DestinationError("give either --config FILE [--destination NAME] or --host/--url, not both")
        return select_destination(args.config, args.destination)
    if args.destination:
        raise DestinationError(f"--destination {args.destination} needs --config FILE (the destinations file that names it)")
    import os

    secrets = {}
    for option, field in (("password_env", "password"), ("bearer_token_env", "bearer_token")):
        variable = getattr(args, option)
        if variable:
            if variable not in os.environ:
                raise DestinationError(f"environment variable {variable} (--{option}) is not set")
            secrets[field] = os.environ[variable]
    settings = dict(
        url=args.url or "", host=args.host or "", port=args.port, called_ae=args.called_ae, calling_ae=args.calling_ae,
        username=args.username or "", tls_ca=args.tls_ca or "", tls_cert=args.tls_cert or "", tls_key=args.tls_key or "",
        connect_timeout=args.timeout, acse_timeout=args.timeout, dimse_timeout=args.timeout, network_timeout=args.timeout,
        **secrets,
    )
    if not settings["url"] and not settings["host"]:
        raise DestinationError("give a destination: --host/--port/--called-ae, --url, or --config FILE [--destination NAME]")
    return Destination(**settings)


def _export_command(args: argparse.Namespace) -> int:
    from monai_exaggeration.export import (
        DestinationError,
        PermanentSendError,
        SendLedger,
        TransientSendError,
        collect_dicom_files,
        export_files,
        make_sender,
    )

    if args.debug:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
    try:
        if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
            raise ValueError("--retries and --backoff must be >= 0, --timeout > 0")
        destination = _export_destination(args)
        files = [] if args.echo else collect_dicom_files(args.sources)
    except (DestinationError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    if args.echo:
        sender = make_sender(destination)
        try:
            status = sender.echo()
        except (TransientSendError, PermanentSendError) as error:
            logger.error("C-ECHO to %s failed: %s", destination.label, error)
            return 1
        finally:
            sender.close()
        what = "C-ECHO" if destination.kind == "dimse" else "DICOMweb query"
        print(f"{what} to {destination.label}: status 0x{status:04X}" + (" (success)" if status == 0 else ""))
        return 0 if status == 0 else 1
    if not files:
        logger.error("nothing to send: no files found in %s", ", ".join(args.sources))
        return 2
    first = Path(args.sources[0]).expanduser()
    home = first if first.is_dir() else first.parent
    ledger_path = Path(args.ledger) if args.ledger else home / "export_ledger.sqlite"
    report_path = Path(args.report) if args.report else home / "export_report.csv"
    try:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        with SendLedger(ledger_path) as ledger:
            report = export_files(files, destination, ledger, retries=args.retries, backoff=args.backoff)
    except (ValueError, OSError) as error:
        logger.error("%s", error)
        return 2
    if not report.rows:
        logger.error("nothing to send: no DICOM files in %s", ", ".join(args.sources))
        return 2
    report.write_csv(report_path)
    print(report.describe())
    print(f"report: {report_path}; ledger: {ledger_path}")
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m monai_exaggeration", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    classify_parser = commands.add_parser(
        "classify",
        help="score chest X-rays with the bundle's classifier",
        description="Score chest X-rays (DICOM/PNG/JPEG/NIfTI file, folder searched recursively, or CSV manifest) "
        "with the bundle's black-box classifier. Writes scores.csv (and errors.csv for unreadable files).",
    )
    classify_parser.add_argument("--input", help="file, folder or CSV manifest (default: RG1_UNCR.dcm from pydicom-data)")
    classify_parser.add_argument("--output_dir", default="classify_output", help="where to write scores.csv")
    classify_parser.add_argument("--bundle_root", default=default_bundle_root(), help="bundle folder (default: %(default)s)")
    classify_parser.add_argument("--weights", help="classifier weights (default: <bundle_root>/models/classifier.pt)")
    classify_parser.add_argument("--image_size", type=int, default=128, help="model input size (default: %(default)s)")
    classify_parser.add_argument("--aspect", choices=ASPECT_POLICIES, default="pad", help="aspect policy (default: pad)")
    classify_parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    classify_parser.set_defaults(handler=_classify_command)

    export_parser = commands.add_parser(
        "export",
        help="send DICOM series to a PACS (C-STORE or DICOMweb STOW-RS)",
        description="Send DICOM files (folders searched recursively, files, or an inference frames.csv) to a PACS\n"
        "by DICOM C-STORE or DICOMweb STOW-RS. Instances the destination has confirmed are kept in a send\n"
        "ledger (SQLite), so an interrupted export can simply be run again: it sends only what is missing.\n"
        "Writes export_report.csv. Exit status: 0 all arrived, 1 some failed, 2 bad arguments or nothing to send.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m monai_exaggeration export --echo --host pacs --port 11112 --called-ae ARCHIVE\n"
        "  python -m monai_exaggeration export out/ --host pacs --port 11112 --called-ae ARCHIVE --calling-ae EXAGGERATION\n"
        "  python -m monai_exaggeration export out/frames.csv --config destinations.yaml --destination research-pacs\n"
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
    export_parser.add_argument("--ledger", help="send ledger (default: <first source folder>/export_ledger.sqlite)")
    export_parser.add_argument("--report", help="CSV report (default: <first source folder>/export_report.csv)")
    export_parser.add_argument("--retries", type=int, default=3, help="retries of transient failures (default: %(default)s)")
    export_parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay in s, doubling (default: %(default)s)")
    export_parser.add_argument("--timeout", type=float, default=30.0, help="network timeouts in s (default: %(default)s)")
    export_parser.add_argument("--debug", action="store_true", help="log pynetdicom's association and DIMSE messages")
    export_parser.set_defaults(handler=_export_command)
    from monai_exaggeration.reader_study.cli import add_reader_study_parser

    add_reader_study_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
