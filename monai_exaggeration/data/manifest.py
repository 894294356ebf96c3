"""CSV manifests: reading, validating, writing and deterministic train/val/test splits.

A manifest is a CSV file with a column ``image`` (a path relative to the CSV's folder, or
absolute) and one column per label holding 0/1 integers. Optional columns: ``split``
(one of :data:`SPLITS`), ``patient_id`` and ``view``. See ``docs/datasets.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pandas as pd

from monai_exaggeration.errors import DatasetNotFoundError, UserError
from monai_exaggeration.findings import DEFAULT_FINDING
from monai_exaggeration.utils import write_csv_atomic

__all__ = [
    "SPLITS",
    "SPLIT_FRACTIONS",
    "SPLIT_SEED",
    "RESERVED_COLUMNS",
    "read_manifest",
    "write_manifest",
    "assign_split",
    "check_fractions",
    "check_image_files",
    "load_split",
    "load_explainer_split",
    "stratified_head",
    "LABEL_POLICIES",
]

SPLITS = ("train", "val", "test")
#: The project's split of a labelled dataset, defined here once: every config reads it from here
#: (``$monai_exaggeration.data.SPLIT_FRACTIONS``) and may override it with ``--split_fractions``/``--split_seed``.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 0
"""Split names, in the order of the ``fractions`` arguments."""

RESERVED_COLUMNS = ("image", "split", "patient_id", "view")
"""Manifest columns that are not labels."""

_HELP = (
    "point --dataset_dir at a folder with labels.csv ('image' column plus 0/1 label columns), or make one "
    "from a public dataset (NIH ChestX-ray14, CheXpert, MIMIC-CXR) with scripts/make_manifest.py: see docs/datasets.md"
)
_HELP_UNLABELLED = (
    "point --dataset_dir at a folder of frontal chest X-rays (PNG, JPEG, DICOM or NIfTI files, searched "
    "recursively; labels are optional for the explainer, a labels.csv in the folder is used when present) "
    "or at a manifest CSV: see docs/datasets.md"
)
#: ``labels`` of :func:`load_split`: a labelled dataset is needed (``required``), or labels are used when present.
LABEL_POLICIES = ("required", "optional")
_MAX_LISTED = 5


def _preview(values: Sequence[object]) -> str:
    """Short printable list of the first few values."""
    shown = ", ".join(repr(v) for v in list(values)[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _infer_label_columns(df: pd.DataFrame) -> list[str]:
    """All columns that are not reserved manifest columns."""
    return [c for c in df.columns if c not in RESERVED_COLUMNS]


def _validate_binary(df: pd.DataFrame, column: str, csv_path: Path) -> pd.Series:
    """Return ``df[column]`` as int64 0/1, or raise a ValueError naming the bad values."""
    raw = df[column]
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = ~numeric.isin([0, 1])
    if bad.any():
        bad_values = pd.unique(raw[bad].map(lambda v: "<blank>" if pd.isna(v) else str(v)))
        raise ValueError(
            f"Manifest {csv_path}: label column {column!r} must hold only 0/1, but {int(bad.sum())} "
            f"row(s) hold other values: {_preview(bad_values)}. Blank or uncertain (-1) labels must be "
            "mapped to 0/1 (or the rows dropped) when the manifest is made; see docs/datasets.md. "
            "If this column is not a label, pass label_columns=[...] explicitly."
        )
    return numeric.astype(np.int64)


def _validate_split_column(df: pd.DataFrame, csv_path: Path) -> None:
    """Raise a ValueError if the ``split`` column holds names outside :data:`SPLITS`."""
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        bad_values = pd.unique(df.loc[bad, "split"].astype(str))
        raise ValueError(
            f"Manifest {csv_path}: column 'split' must hold only {SPLITS}, "
            f"but {int(bad.sum())} row(s) hold: {_preview(bad_values)}."
        )


def _resolve_images(images: pd.Series, base: Path) -> pd.Series:
    """Turn relative image paths into absolute ones (relative to ``base``)."""
    base_str = str(base)

    def resolve(p: str) -> str:
        return os.path.normpath(p if os.path.isabs(p) else os.path.join(base_str, p))

    return images.astype(str).map(resolve)


def check_image_files(images: Sequence[str], source: str | os.PathLike = "manifest") -> None:
    """Raise FileNotFoundError listing the first few of ``images`` that do not exist."""
    missing = [p for p in images if not os.path.exists(p)]
    if missing:
        raise DatasetNotFoundError(
            f"{source}: {len(missing)} of {len(images)} image file(s) do not exist, e.g. "
            f"{_preview(missing)}. Check the image root the manifest was made with."
        )


def read_manifest(
    csv_path: str | os.PathLike,
    label_columns: Sequence[str] | None = None,
    check_files: bool = False,
) -> pd.DataFrame:
    """Read and validate a manifest; ``image`` is returned as absolute paths.

    ``label_columns`` defaults to every column not in :data:`RESERVED_COLUMNS`. Label columns are
    returned as int64 0/1. With ``check_files`` every image path is checked (slow for big sets).
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"Manifest not found: {csv_path} -- {_HELP}.")
    df = pd.read_csv(csv_path, dtype={"image": str, "split": str, "patient_id": str, "view": str})
    if "image" not in df.columns:
        raise ValueError(
            f"Manifest {csv_path} has no 'image' column (columns: {list(df.columns)}). "
            "A manifest needs 'image' (path relative to the CSV's folder, or absolute) and one 0/1 "
            "column per label; see docs/datasets.md."
        )
    if df.empty:
        raise ValueError(f"Manifest {csv_path} has no rows.")
    if df["image"].isna().any():
        raise ValueError(f"Manifest {csv_path}: {int(df['image'].isna().sum())} row(s) have an empty 'image'.")
    labels = _infer_label_columns(df) if label_columns is None else list(label_columns)
    missing = [c for c in labels if c not in df.columns]
    if missing:
        raise ValueError(f"Manifest {csv_path} lacks label column(s) {missing}; it has {list(df.columns)}.")
    for column in labels:
        df[column] = _validate_binary(df, column, csv_path)
    if "split" in df.columns:
        _validate_split_column(df, csv_path)
    df["image"] = _resolve_images(df["image"], csv_path.resolve().parent)
    if check_files:
        check_image_files(df["image"].tolist(), csv_path)
    return df


def _relative_image(path: str, base: str) -> str:
    """``path`` relative to ``base`` (POSIX separators) when it lies under ``base``, else absolute."""
    try:
        under = os.path.commonpath([path, base]) == base
    except ValueError:  # different drives on Windows
        under = False
    return Path(os.path.relpath(path, base)).as_posix() if under else path


def write_manifest(
    df: pd.DataFrame,
    csv_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
) -> Path:
    """Write ``df`` to ``csv_path`` atomically (temporary file in the same folder, then ``os.replace``).

    Relative ``image`` paths in ``df`` are taken relative to ``image_root`` (default: the CSV's
    folder). Images under the CSV's folder are written relative to it, all others absolute.
    """
    if "image" not in df.columns:
        raise ValueError(f"Cannot write manifest {csv_path}: the table has no 'image' column.")
    csv_path = Path(csv_path).expanduser().resolve()
    folder = csv_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(image_root).expanduser().resolve() if image_root is not None else folder
    absolute = _resolve_images(df["image"], root)
    out = df.copy()
    out["image"] = absolute.map(lambda p: _relative_image(p, str(folder)))
    write_csv_atomic(out, csv_path)
    return csv_path


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, val, test) fractions: three finite non-negative numbers summing to 1."""
    message = (
        f"fractions must be {len(SPLITS)} non-negative numbers for {SPLITS} that sum to 1, "
        f"got {tuple(fractions) if isinstance(fractions, Sequence) else fractions!r}"
    )
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if len(values) != len(SPLITS) or any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(message)
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"{message} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def _allocate(sizes: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Split index per unit: units (in order) fill the splits by cumulative row count."""
    total = float(sizes.sum())
    bounds = np.cumsum(fractions)[:-1] * total
    middles = np.cumsum(sizes) - sizes / 2.0
    return np.searchsorted(bounds, middles, side="right")


def _units(df: pd.DataFrame, key_column: str, stratify_column: str | None) -> pd.DataFrame:
    """One row per unit (image or group), sorted by key, with its size and stratum."""
    keys = df[key_column]
    if keys.isna().any():
        raise ValueError(f"assign_split: column {key_column!r} has {int(keys.isna().sum())} empty value(s).")
    table = pd.DataFrame({"key": keys.astype(str).to_numpy(), "stratum": 0})
    if stratify_column is not None:
        if stratify_column not in df.columns:
            raise ValueError(f"assign_split: stratify column {stratify_column!r} not in {list(df.columns)}.")
        strata = df[stratify_column]
        if strata.isna().any():
            raise ValueError(f"assign_split: stratify column {stratify_column!r} has empty values.")
        table["stratum"] = strata.to_numpy()
    return table.groupby("key", sort=True).agg(size=("stratum", "size"), stratum=("stratum", "max"))


def assign_split(
    df: pd.DataFrame,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = SPLIT_SEED,
    group_column: str | None = None,
    stratify_column: str | None = None,
) -> pd.Series:
    """Deterministic split names (from :data:`SPLITS`) for the rows of ``df``, same index.

    Units are groups (``group_column``, e.g. patients, never straddling splits) or else images;
    units are sorted by key before a seeded shuffle, so the result does not depend on row order.
    With ``stratify_column`` each stratum (a group's maximum label) is split separately, so every
    split keeps about the overall positive rate. Splits are sized by row count.
    """
    values = check_fractions(fractions)
    key_column = group_column or "image"
    if key_column not in df.columns:
        raise ValueError(f"assign_split: column {key_column!r} not in {list(df.columns)}.")
    units = _units(df, key_column, stratify_column)
    rng = np.random.default_rng(seed)
    names = np.asarray(SPLITS, dtype=object)
    unit_split = pd.Series(index=units.index, dtype=object)
    for _, stratum in units.groupby("stratum", sort=True):
        order = rng.permutation(len(stratum))
        sizes = stratum["size"].to_numpy()[order]
        unit_split[stratum.index.to_numpy()[order]] = names[_allocate(sizes, values)]
    keys = df[key_column].astype(str)
    return pd.Series(keys.map(unit_split).to_numpy(), index=df.index, name="split", dtype=object)


def _manifest_path(dataset_dir_or_csv: str | os.PathLike, manifest_name: str, labels: str = "required") -> Path | None:
    """The manifest CSV for a dataset folder or CSV path, or a clear FileNotFoundError.

    With ``labels="optional"`` a folder without the manifest gives None (its images are listed instead).
    """
    path = Path(dataset_dir_or_csv).expanduser()
    if path.is_dir():
        csv_path = path / manifest_name
        if csv_path.is_file():
            return csv_path
        if labels == "optional":
            return None
        raise DatasetNotFoundError(
            f"Dataset folder {path} has no {manifest_name}, which this workflow needs (training the explainer "
            f"does not) -- {_HELP}."
        )
    if path.is_file():
        return path
    raise DatasetNotFoundError(
        f"Dataset not found: {path} does not exist -- {_HELP_UNLABELLED if labels == 'optional' else _HELP}."
    )


def load_split(
    dataset_dir_or_csv: str | os.PathLike,
    split: str,
    label: str = DEFAULT_FINDING,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = SPLIT_SEED,
    manifest_name: str = "labels.csv",
    labels: str = "required",
) -> list[dict]:
    """Records of one split, for a MONAI ``Dataset``, sorted by image path.

    Each record is ``{"image": abs_path, "label": float32 array of shape (1,), <label>: int}``.
    The manifest's ``split`` column is used when present; otherwise :func:`assign_split` with
    ``stratify_column=label`` and ``group_column="patient_id"`` when that column exists.

    ``labels="optional"`` (the explainer's training: source bins come from the classifier, not from
    labels) also accepts a folder without ``manifest_name``, whose image files (``.png``, ``.jpg``,
    ``.jpeg``, ``.dcm``, ``.nii``, ``.nii.gz``, searched recursively) become records ``{"image":
    abs_path}``, and a manifest without the ``label`` column; such records carry no label and the
    split is seeded but not stratified.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if labels not in LABEL_POLICIES:
        raise ValueError(f"labels must be one of {LABEL_POLICIES}, got {labels!r}.")
    csv_path = _manifest_path(dataset_dir_or_csv, manifest_name, labels)
    if csv_path is None:
        from monai_exaggeration.data.adapters import image_folder_manifest

        source = Path(dataset_dir_or_csv).expanduser()
        df = image_folder_manifest(source)
        df["image"] = _resolve_images(df["image"], source.resolve())
    else:
        source = csv_path
        header = pd.read_csv(csv_path, nrows=0).columns
        unlabelled = labels == "optional" and label not in header
        df = read_manifest(csv_path, label_columns=[] if unlabelled else [label])
    labelled = label in df.columns
    if "split" not in df.columns:
        group = "patient_id" if "patient_id" in df.columns else None
        df["split"] = assign_split(df, fractions, seed, group_column=group, stratify_column=label if labelled else None)
    chosen = df[df["split"] == split].sort_values("image", kind="stable")
    if chosen.empty:
        counts = df["split"].value_counts().to_dict()
        raise ValueError(
            f"{source}: split {split!r} is empty (images per split: {counts}) -- add images or change --split_fractions"
        )
    if not labelled:
        return [{"image": image} for image in chosen["image"]]
    return [_record(image, int(value), label) for image, value in zip(chosen["image"], chosen[label])]


def load_explainer_split(
    dataset_dir_or_csv: str | os.PathLike,
    split: str,
    label: str = DEFAULT_FINDING,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = SPLIT_SEED,
    target_sampling: str = "uniform",
) -> list[dict]:
    """The explainer's images of one split: :func:`load_split` with labels optional (source bins come
    from the classifier), so any folder of frontal chest X-rays will do. Only ``target_sampling``
    ``calibrated`` draws target bins from the labels; it is refused in one line when they are missing.
    """
    records = load_split(dataset_dir_or_csv, split, label, fractions, seed, labels="optional")
    if target_sampling == "calibrated" and records and label not in records[0]:
        raise UserError(
            f"--target_sampling calibrated draws each image's target bin from its {label} label, and "
            f"{dataset_dir_or_csv} has no {label} labels -- add a labels.csv with a {label} column "
            "(docs/datasets.md) or train with --target_sampling uniform, which needs no labels"
        )
    return records


def stratified_head(records: Sequence[dict], count: int | None, label: str = DEFAULT_FINDING) -> list[dict]:
    """The first ``count`` records with the classes interleaved (negative, positive, negative, ...).

    ``load_split`` sorts by path, and folder-per-class datasets put one class first, so a plain
    ``records[:count]`` may hold one class only. Interleaving keeps the subset deterministic and as
    balanced as the split allows. ``count=None`` returns all records, interleaved.
    """
    by_class: dict[int, list[dict]] = {}
    for record in records:  # records without the label (an unlabelled dataset) form one class
        by_class.setdefault(int(record[label]) if label in record else -1, []).append(record)
    queues = [by_class[key] for key in sorted(by_class)]
    mixed = [record for group in zip_longest(*queues) for record in group if record is not None]
    return mixed if count is None else mixed[: int(count)]


def _record(image: str, value: int, label: str) -> dict:
    """One dataset record; the 1-element float label collates to (B, 1) in MONAI."""
    record: dict = {"image": image, "label": np.array([value], dtype=np.float32)}
    if label != "label":
        record[label] = value
    return record
