"""Adapters from public chest X-ray label files to the manifest format (see ``manifest.py``).

Each adapter returns a DataFrame with ``image`` (relative to the given image root, or absolute
with ``absolute_paths=True``), one 0/1
label column named after the finding (lower case, spaces as ``_``), and where the source has
them ``patient_id``, ``view`` and ``split``. Write it with :func:`write_manifest`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from monai_exaggeration.findings import CARDIOMEGALY

from .manifest import SPLITS, assign_split

__all__ = [
    "label_name",
    "nih_manifest",
    "chexpert_manifest",
    "mimic_manifest",
    "folder_manifest",
    "image_folder_manifest",
    "UNCERTAINTY_POLICIES",
    "NIH_NEGATIVE_POLICIES",
]

UNCERTAINTY_POLICIES = ("zeros", "ones", "ignore")
"""CheXpert-labeller uncertain (-1) handling: map to 0, map to 1, or drop the row."""

NIH_NEGATIVE_POLICIES = ("no_finding", "all_without_finding")
"""NIH negatives: only 'No Finding' images, or every image without the finding."""

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")
_MIMIC_SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_OUTPUT_ORDER = ("image", "patient_id", "view", "split")


def label_name(finding: str) -> str:
    """Manifest column name for a finding: ``"Pleural Effusion"`` -> ``"pleural_effusion"``."""
    return re.sub(r"[^0-9a-z]+", "_", finding.strip().lower()).strip("_")


def _read_table(path: str | os.PathLike, required: Iterable[str], what: str) -> pd.DataFrame:
    """Read a CSV (``.csv`` or ``.csv.gz``), checking that the ``required`` columns exist."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    df = pd.read_csv(path, low_memory=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path} lacks required column(s) {missing}; it should be {what} (columns found: {list(df.columns)[:12]})."
        )
    return df


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def _finish(
    df: pd.DataFrame,
    label: str,
    fractions: Sequence[float] | None,
    seed: int,
    image_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Add a patient-level stratified split (unless present or ``fractions`` is None), order columns.

    With ``image_root`` the root-relative image paths are made absolute.
    """
    if image_root is not None:
        root = os.path.abspath(os.path.expanduser(image_root))
        df["image"] = df["image"].map(lambda p: os.path.normpath(os.path.join(root, p)))
    if fractions is not None and "split" not in df.columns:
        df["split"] = assign_split(df, fractions, seed, group_column="patient_id", stratify_column=label)
    columns = ["image", label] + [c for c in _OUTPUT_ORDER[1:] if c in df.columns]
    return df[columns].sort_values("image", kind="stable").reset_index(drop=True)


def _filter_views(df: pd.DataFrame, column: str, views: Sequence[str] | None) -> pd.DataFrame:
    """Keep rows whose view (upper-cased) is in ``views``; None keeps all."""
    if views is None:
        return df
    wanted = {v.upper() for v in views}
    return df[df[column].fillna("").astype(str).str.strip().str.upper().isin(wanted)].copy()


# --------------------------------------------------------------------------- NIH ChestX-ray14


def _index_tree(root: Path, names: set[str]) -> dict[str, str]:
    """Map each file name in ``names`` found under ``root`` to its root-relative POSIX path."""
    found: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name in names and name not in found:
                found[name] = Path(os.path.relpath(os.path.join(folder, name), root)).as_posix()
    return found


def _nih_images(names: pd.Series, image_root: str | os.PathLike, images_subdir: str, search: bool) -> pd.Series:
    """Root-relative image paths: ``images_subdir/<name>``, or looked up in the folder tree."""
    if not search:
        prefix = images_subdir.strip("/") + "/" if images_subdir else ""
        return prefix + names
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"NIH image root not found: {root}")
    found = _index_tree(root, set(names))
    if not found:
        raise FileNotFoundError(f"None of the {len(names)} NIH images were found under {root}.")
    return names.map(found)


def nih_manifest(
    data_entry_csv: str | os.PathLike,
    image_root: str | os.PathLike = ".",
    finding: str = CARDIOMEGALY.display,
    negatives: str = "no_finding",
    views: Sequence[str] | None = ("PA", "AP"),
    images_subdir: str = "images",
    search_images: bool = False,
    fractions: Sequence[float] | None = DEFAULT_FRACTIONS,
    seed: int = 0,
    absolute_paths: bool = False,
) -> pd.DataFrame:
    """Manifest from NIH ChestX-ray14 ``Data_Entry_2017*.csv(.gz)``.

    Positives have ``finding`` among the ``|``-separated Finding Labels; negatives follow
    ``negatives`` (:data:`NIH_NEGATIVE_POLICIES`). Images are ``images_subdir/<Image Index>``
    relative to ``image_root``; with ``search_images`` the tree under ``image_root`` is searched
    instead (e.g. the ``images_001/images/...`` layout), and images not found are dropped with a
    warning. The split is by patient, stratified by the label.
    """
    _check_choice("negatives", negatives, NIH_NEGATIVE_POLICIES)
    required = ("Image Index", "Finding Labels", "Patient ID", "View Position")
    df = _read_table(data_entry_csv, required, "the NIH ChestX-ray14 label file Data_Entry_2017*.csv(.gz)")
    findings = "|" + df["Finding Labels"].fillna("").astype(str) + "|"
    positive = findings.str.contains(f"|{finding}|", regex=False)
    if not positive.any():
        known = sorted({f for labels in df["Finding Labels"].dropna() for f in str(labels).split("|")})
        raise ValueError(f"Finding {finding!r} does not occur in {data_entry_csv}; known findings: {known}.")
    negative = findings.eq("|No Finding|") if negatives == "no_finding" else ~positive
    label = label_name(finding)
    out = pd.DataFrame(
        {
            "image": df["Image Index"].astype(str),
            label: positive.astype(np.int64),
            "patient_id": df["Patient ID"].astype(str),
            "view": df["View Position"].astype(str),
        }
    )[positive | negative].copy()
    out = _filter_views(out, "view", views)
    out["image"] = _nih_images(out["image"], image_root, images_subdir, search_images)
    if out["image"].isna().any():
        warnings.warn(
            f"{int(out['image'].isna().sum())} NIH image(s) not found under {image_root}; dropped.", stacklevel=2
        )
        out = out.dropna(subset=["image"]).copy()
    return _finish(out, label, fractions, seed, image_root if absolute_paths else None)


# --------------------------------------------------------------------------- CheXpert / MIMIC labels


def _chexpert_labels(values: pd.Series, uncertainty: str, source: str) -> pd.Series:
    """CheXpert-labeller values (1, 0, -1, blank) to 0/1 floats; dropped rows become NaN."""
    _check_choice("uncertainty", uncertainty, UNCERTAINTY_POLICIES)
    numeric = pd.to_numeric(values, errors="coerce")
    bad = ~(numeric.isin([1, 0, -1]) | values.isna())
    if bad.any():
        raise ValueError(
            f"{source}: column {values.name!r} holds values other than 1, 0, -1 or blank: "
            f"{sorted(pd.unique(values[bad].astype(str)))[:5]}."
        )
    uncertain_value = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertainty]
    return numeric.fillna(0.0).replace(-1.0, uncertain_value)


_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


def chexpert_manifest(
    csv_path: str | os.PathLike,
    image_root: str | os.PathLike = ".",
    finding: str = CARDIOMEGALY.display,
    uncertainty: str = "zeros",
    frontal_only: bool = True,
    views: Sequence[str] | None = None,
    strip_prefix: bool = False,
    split: str | None = None,
    fractions: Sequence[float] | None = DEFAULT_FRACTIONS,
    seed: int = 0,
    absolute_paths: bool = False,
) -> pd.DataFrame:
    """Manifest from CheXpert ``train.csv`` / ``valid.csv``.

    Labels: 1 -> 1, 0 and blank (not mentioned) -> 0, -1 (uncertain) per ``uncertainty``
    (:data:`UNCERTAINTY_POLICIES`). ``Path`` is used relative to ``image_root`` (the folder that
    holds ``CheXpert-v1.0*/``; with ``strip_prefix`` its first component is removed so that
    ``image_root`` is that folder itself). ``views`` filters the AP/PA column. Patient ids come
    from the path. ``split`` puts every row in one split (e.g. ``"test"`` for ``valid.csv``);
    otherwise the rows are split by patient.
    """
    _check_choice("uncertainty", uncertainty, UNCERTAINTY_POLICIES)
    if split is not None:
        _check_choice("split", split, SPLITS)
    required = ("Path", "Frontal/Lateral", "AP/PA", finding)
    what = "a CheXpert train.csv/valid.csv (Path, Sex, Age, Frontal/Lateral, AP/PA, observations)"
    df = _read_table(csv_path, required, what)
    if frontal_only:
        df = df[df["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal"]
    df = _filter_views(df, "AP/PA", views)
    paths = df["Path"].astype(str)
    patients = paths.str.extract(_CHEXPERT_PATIENT, expand=False)
    if patients.isna().any():
        raise ValueError(f"{csv_path}: no 'patientNNNNN' folder in Path, e.g. {paths[patients.isna()].iloc[0]!r}.")
    label = label_name(finding)
    view = df["AP/PA"].fillna(df["Frontal/Lateral"]).astype(str)
    out = (
        pd.DataFrame(
            {
                "image": paths.str.split("/", n=1).str[-1] if strip_prefix else paths,
                label: _chexpert_labels(df[finding], uncertainty, str(csv_path)),
                "patient_id": patients,
                "view": view,
            }
        )
        .dropna(subset=[label])
        .copy()
    )
    out[label] = out[label].astype(np.int64)
    if split is not None:
        out["split"] = split
    return _finish(out, label, fractions, seed, image_root if absolute_paths else None)


def _mimic_image(subject: pd.Series, study: pd.Series, dicom: pd.Series) -> pd.Series:
    """MIMIC-CXR-JPG path ``files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg``."""
    subject = subject.astype(str)
    study_folder = "/s" + study.astype(str) + "/"
    return "files/p" + subject.str[:2] + "/p" + subject + study_folder + dicom.astype(str) + ".jpg"


def _mimic_split(df: pd.DataFrame, split_csv: str | os.PathLike) -> pd.Series:
    """Official MIMIC-CXR-JPG split per row (``validate`` -> ``val``), by dicom_id."""
    what = "mimic-cxr-2.0.0-split.csv(.gz) (dicom_id, study_id, subject_id, split)"
    table = _read_table(split_csv, ("dicom_id", "split"), what)
    mapping = table.set_index("dicom_id")["split"].astype(str).str.strip().str.lower()
    unknown = sorted(set(mapping) - set(_MIMIC_SPLIT_NAMES))
    if unknown:
        raise ValueError(f"{split_csv}: unknown split name(s) {unknown}; expected train/validate/test.")
    split = df["dicom_id"].map(mapping.map(_MIMIC_SPLIT_NAMES))
    if split.isna().any():
        example = df.loc[split.isna(), "dicom_id"].iloc[0]
        raise ValueError(f"{split_csv}: {int(split.isna().sum())} image(s) have no split, e.g. {example!r}.")
    return split


def mimic_manifest(
    metadata_csv: str | os.PathLike,
    chexpert_csv: str | os.PathLike,
    image_root: str | os.PathLike = ".",
    finding: str = CARDIOMEGALY.display,
    uncertainty: str = "zeros",
    views: Sequence[str] | None = ("PA", "AP"),
    split_csv: str | os.PathLike | None = None,
    fractions: Sequence[float] | None = DEFAULT_FRACTIONS,
    seed: int = 0,
    absolute_paths: bool = False,
) -> pd.DataFrame:
    """Manifest from MIMIC-CXR-JPG ``mimic-cxr-2.0.0-{metadata,chexpert[,split]}.csv(.gz)``.

    Image rows (metadata) are joined with study labels (chexpert) on subject and study; studies
    without labels are dropped. Labels as in :func:`chexpert_manifest`. Images are relative to
    ``image_root``, the folder holding ``files/``. With ``split_csv`` the official split is used
    (``validate`` -> ``val``), otherwise a patient-level split.
    """
    _check_choice("uncertainty", uncertainty, UNCERTAINTY_POLICIES)
    keys = ("subject_id", "study_id")
    meta_what = "mimic-cxr-2.0.0-metadata.csv(.gz) (dicom_id, subject_id, study_id, ViewPosition, ...)"
    meta = _read_table(metadata_csv, ("dicom_id", *keys, "ViewPosition"), meta_what)
    labels_what = "mimic-cxr-2.0.0-chexpert.csv(.gz) (subject_id, study_id, 14 observations)"
    labels = _read_table(chexpert_csv, (*keys, finding), labels_what)
    meta = _filter_views(meta, "ViewPosition", views)
    df = meta.merge(labels[[*keys, finding]], on=list(keys), how="inner", validate="many_to_one")
    label = label_name(finding)
    out = pd.DataFrame(
        {
            "image": _mimic_image(df["subject_id"], df["study_id"], df["dicom_id"]),
            label: _chexpert_labels(df[finding], uncertainty, str(chexpert_csv)),
            "patient_id": df["subject_id"].astype(str),
            "view": df["ViewPosition"].fillna("").astype(str),
            "dicom_id": df["dicom_id"].astype(str),
        }
    )
    if split_csv is not None:
        out["split"] = _mimic_split(out, split_csv)
    out = out.dropna(subset=[label]).copy()
    out[label] = out[label].astype(np.int64)
    return _finish(out, label, fractions, seed, image_root if absolute_paths else None)


# --------------------------------------------------------------------------- folder per class


def _natural_key(path: str) -> list:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _class_files(root: Path, folder: str, extensions: Sequence[str]) -> list[str]:
    """Root-relative POSIX paths of files with ``extensions`` under ``root/folder``, naturally sorted."""
    base = root / folder
    if not base.is_dir():
        raise FileNotFoundError(f"Class folder {base} not found; expected {root}/<class>/ with images.")
    wanted = tuple(e.lower() for e in extensions)
    files = [
        Path(os.path.relpath(os.path.join(d, f), root)).as_posix()
        for d, _, names in os.walk(base)
        for f in names
        if f.lower().endswith(wanted) and not f.startswith(".")
    ]
    return sorted(files, key=_natural_key)


def folder_manifest(
    root: str | os.PathLike,
    positive: str = "true",
    negative: str = "false",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    label: str = "finding",
) -> pd.DataFrame:
    """Manifest for a folder-per-class layout: ``root/<positive>/**`` -> 1, ``root/<negative>/**`` -> 0.

    Image paths are relative to ``root``; positives come first, each class in natural order.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} not found; expected {root}/{positive}/ and {root}/{negative}/.")
    rows = [(p, 1) for p in _class_files(root, positive, extensions)]
    rows += [(p, 0) for p in _class_files(root, negative, extensions)]
    if not rows:
        raise ValueError(f"No images with extensions {tuple(extensions)} under {root}/{positive} or {root}/{negative}.")
    df = pd.DataFrame(rows, columns=["image", label])
    df[label] = df[label].astype(np.int64)
    return df


def image_folder_manifest(root: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> pd.DataFrame:
    """A manifest without labels (column ``image`` only) of every image file under ``root``, searched
    recursively, paths relative to ``root`` in natural order: a folder of chest X-rays the explainer can
    train on (its source bins come from the classifier)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} not found -- give a folder of chest X-ray images")
    files = _class_files(root, "", extensions)
    if not files:
        raise ValueError(
            f"no images with extensions {', '.join(extensions)} under {root} -- give a folder of chest X-ray images "
            "(searched recursively) or a manifest CSV"
        )
    return pd.DataFrame({"image": files})
