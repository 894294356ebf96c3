#!/usr/bin/env python
"""Make a manifest CSV (``image`` + 0/1 label [+ split, patient_id, view]) from a public CXR dataset.

Examples (see docs/datasets.md)::

    python scripts/make_manifest.py nih --data_entry Data_Entry_2017_v2020.csv --image_root /data/nih \\
        --output /data/nih/labels.csv
    python scripts/make_manifest.py chexpert --train_csv /data/CheXpert-v1.0-small/train.csv \\
        --valid_csv /data/CheXpert-v1.0-small/valid.csv --image_root /data --output /data/chexpert.csv
    python scripts/make_manifest.py mimic --metadata mimic-cxr-2.0.0-metadata.csv.gz \\
        --chexpert mimic-cxr-2.0.0-chexpert.csv.gz --split_csv mimic-cxr-2.0.0-split.csv.gz \\
        --image_root /data/mimic-cxr-jpg/2.0.0 --output /data/mimic-cxr-jpg/2.0.0/labels.csv
    python scripts/make_manifest.py folder --root /data/my_set --label cardiomegaly \\
        --output /data/my_set/labels.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

try:
    import monai_exaggeration  # noqa: F401
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monai_exaggeration.data import (  # noqa: E402
    NIH_NEGATIVE_POLICIES,
    SPLITS,
    UNCERTAINTY_POLICIES,
    assign_split,
    check_fractions,
    chexpert_manifest,
    folder_manifest,
    label_name,
    mimic_manifest,
    nih_manifest,
    write_manifest,
)


def _add_common(parser: argparse.ArgumentParser, finding: bool = True) -> None:
    parser.add_argument("--output", "-o", required=True, type=Path, help="manifest CSV to write (atomically)")
    if finding:
        parser.add_argument("--finding", default="Cardiomegaly", help="finding to label (default: %(default)s)")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions, must sum to 1 (default: 0.8 0.1 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")


def _add_uncertainty(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--uncertainty",
        choices=UNCERTAINTY_POLICIES,
        default="zeros",
        help="uncertain (-1) labels: map to 0 (zeros), to 1 (ones) or drop the image (ignore); default: zeros",
    )


def _add_nih(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_entry", required=True, help="Data_Entry_2017_v2020.csv or .csv.gz")
    p.add_argument(
        "--image_root", required=True, help="folder holding images/ (or images_0XX/images/ with --search_images)"
    )
    p.add_argument("--images_subdir", default="images", help="image folder under --image_root (default: %(default)s)")
    p.add_argument(
        "--search_images",
        action="store_true",
        help="find each image anywhere under --image_root (layout images_001/images/...); missing ones are dropped",
    )
    p.add_argument(
        "--negatives",
        choices=NIH_NEGATIVE_POLICIES,
        default="no_finding",
        help="negatives: 'No Finding' images only, or all images without the finding (default: %(default)s)",
    )
    p.add_argument("--views", nargs="+", default=["PA", "AP"], help="View Position values to keep (default: PA AP)")
    _add_common(p)


def _add_chexpert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train_csv", required=True, help="CheXpert train.csv; split by patient into train/val/test")
    p.add_argument(
        "--valid_csv",
        help="CheXpert valid.csv; if given, all its images form the test split and train.csv is split into "
        "train/val only (in the ratio of the first two --fractions)",
    )
    p.add_argument("--image_root", required=True, help="folder that holds CheXpert-v1.0-small/ (or CheXpert-v1.0/)")
    p.add_argument(
        "--strip_prefix",
        action="store_true",
        help="drop the first Path component (when --image_root is the CheXpert-v1.0* folder itself)",
    )
    p.add_argument("--include_lateral", action="store_true", help="keep lateral images too (default: frontal only)")
    p.add_argument("--views", nargs="+", help="AP/PA values to keep (default: all)")
    _add_uncertainty(p)
    _add_common(p)


def _add_mimic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metadata", required=True, help="mimic-cxr-2.0.0-metadata.csv[.gz]")
    p.add_argument("--chexpert", required=True, help="mimic-cxr-2.0.0-chexpert.csv[.gz]")
    p.add_argument(
        "--split_csv", help="mimic-cxr-2.0.0-split.csv[.gz] (official split; default: own patient-level split)"
    )
    p.add_argument("--image_root", required=True, help="folder that holds files/p10/...")
    p.add_argument("--views", nargs="+", default=["PA", "AP"], help="ViewPosition values to keep (default: PA AP)")
    _add_uncertainty(p)
    _add_common(p)


def _add_folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="folder holding the class folders")
    p.add_argument("--positive", default="true", help="positive class folder (default: %(default)s)")
    p.add_argument("--negative", default="false", help="negative class folder (default: %(default)s)")
    p.add_argument("--label", default="finding", help="label column name (default: %(default)s)")
    p.add_argument(
        "--with_split",
        action="store_true",
        help="add a random stratified split column (no patient ids: images are split independently)",
    )
    _add_common(p, finding=False)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Image paths are written relative to the output CSV's folder when the images lie under it, "
        "else absolute. Documentation: docs/datasets.md.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{nih,chexpert,mimic,folder}")
    _add_nih(sub.add_parser("nih", help="NIH ChestX-ray14 (Data_Entry_2017*.csv[.gz])"))
    _add_chexpert(sub.add_parser("chexpert", help="CheXpert (train.csv, optional valid.csv as the test split)"))
    _add_mimic(sub.add_parser("mimic", help="MIMIC-CXR-JPG (metadata + chexpert [+ split] CSVs)"))
    _add_folder(sub.add_parser("folder", help="folder per class: ROOT/<positive>/... and ROOT/<negative>/..."))
    return parser


def _make_nih(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    df = nih_manifest(
        args.data_entry,
        args.image_root,
        finding=args.finding,
        negatives=args.negatives,
        views=args.views,
        images_subdir=args.images_subdir,
        search_images=args.search_images,
        fractions=args.fractions,
        seed=args.seed,
    )
    return df, args.image_root


def _make_chexpert(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    fractions = args.fractions
    options = dict(
        image_root=args.image_root,
        finding=args.finding,
        uncertainty=args.uncertainty,
        frontal_only=not args.include_lateral,
        views=args.views,
        strip_prefix=args.strip_prefix,
        seed=args.seed,
    )
    if args.valid_csv is None:
        return chexpert_manifest(args.train_csv, fractions=fractions, **options), args.image_root
    train_val = fractions[0] + fractions[1]
    if train_val <= 0:
        raise ValueError("--fractions: train + val must be > 0 when --valid_csv is given")
    train = chexpert_manifest(
        args.train_csv, fractions=(fractions[0] / train_val, fractions[1] / train_val, 0.0), **options
    )
    test = chexpert_manifest(args.valid_csv, split="test", **options)
    return pd.concat([train, test], ignore_index=True), args.image_root


def _make_mimic(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    df = mimic_manifest(
        args.metadata,
        args.chexpert,
        args.image_root,
        finding=args.finding,
        uncertainty=args.uncertainty,
        views=args.views,
        split_csv=args.split_csv,
        fractions=args.fractions,
        seed=args.seed,
    )
    return df, args.image_root


def _make_folder(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    label = label_name(args.label)
    df = folder_manifest(args.root, positive=args.positive, negative=args.negative, label=label)
    if args.with_split:
        df["split"] = assign_split(df, args.fractions, args.seed, stratify_column=label)
    return df, args.root


def _summary(df: pd.DataFrame) -> str:
    """One line per split: images and positives."""
    label = df.columns[1]
    groups = [("all", df)] + ([(s, df[df["split"] == s]) for s in SPLITS] if "split" in df.columns else [])
    lines = [f"  {name:5s} {len(part):7d} images, {int(part[label].sum()):6d} with {label}" for name, part in groups]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, build the manifest, write it atomically, print a summary."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        args.fractions = check_fractions(args.fractions)
    except ValueError as err:
        parser.error(f"--fractions: {err}")
    makers = {"nih": _make_nih, "chexpert": _make_chexpert, "mimic": _make_mimic, "folder": _make_folder}
    try:
        df, image_root = makers[args.dataset](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_manifest(df, args.output, image_root=image_root)
    print(f"wrote {path}\n{_summary(df)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
