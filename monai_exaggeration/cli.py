"""Command line: ``python -m monai_exaggeration <command>``.

Commands:
  classify   score chest X-rays (file, folder or CSV manifest) with the bundle's black-box classifier.
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
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
