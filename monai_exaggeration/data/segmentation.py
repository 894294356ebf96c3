"""Heart/lung segmentation data (the shared ``wingspan-ctr`` layout) and its MONAI preprocessing.

Layout: ``png/<id>.png`` (8-bit chest radiograph) and ``mask/{heart,left_lung,right_lung}/<id>.png``
(anti-aliased 0..255, foreground >= 128); optionally ``ctr_ground_truth.csv`` (``id,ctr``).
Records are ``{"image", "heart", "left_lung", "right_lung", "id", "ctr"}`` (``ctr`` NaN when unknown);
the split is a deterministic shuffle of the ids with ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from monai.transforms import (
    AsDiscreted,
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    Resized,
    ScaleIntensityRanged,
    Transform,
)

from monai_exaggeration.data.manifest import SPLITS, check_fractions
from monai_exaggeration.errors import DatasetNotFoundError
from monai_exaggeration.transforms import LoadCXRd

__all__ = ["STRUCTURES", "load_segmentation_split", "segmentation_preprocessing"]

#: Output channels of the segmentation network, in this order.
STRUCTURES = ("heart", "left_lung", "right_lung")


def load_segmentation_split(
    dataset_dir: str | os.PathLike,
    split: str,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> list[dict]:
    """Records of one split of a heart/lung mask dataset (see the module docstring)."""
    root = Path(dataset_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (root / "png").is_dir():
        raise DatasetNotFoundError(
            f"Segmentation dataset not found: {root} has no png/ folder. Expected png/<id>.png and "
            f"mask/{{heart,left_lung,right_lung}}/<id>.png (see docs/datasets.md)"
        )
    ids = sorted(
        p.name for p in (root / "png").glob("*.png") if all((root / "mask" / s / p.name).is_file() for s in STRUCTURES)
    )
    if not ids:
        raise DatasetNotFoundError(f"no image in {root / 'png'} has all three masks under {root / 'mask'}")
    truth = {}
    if (root / "ctr_ground_truth.csv").is_file():
        table = pd.read_csv(root / "ctr_ground_truth.csv")
        truth = dict(zip(table["id"].astype(str), table["ctr"].astype(float)))
    order = np.random.default_rng(seed).permutation(len(ids))
    train, val, _ = check_fractions(fractions)
    bounds = {"train": (0, round(train * len(ids))), "val": (round(train * len(ids)), round((train + val) * len(ids)))}
    bounds["test"] = (bounds["val"][1], len(ids))
    start, stop = bounds[split]
    chosen = sorted(ids[i] for i in order[start:stop])
    return [
        {
            "image": str(root / "png" / name),
            **{s: str(root / "mask" / s / name) for s in STRUCTURES},
            "id": name,
            "ctr": truth.get(name, float("nan")),
        }
        for name in chosen
    ]


def segmentation_preprocessing(spatial_size: int = 128, extra: Sequence[Transform] = ()) -> Compose:
    """Image -> (1, S, S) in [-1, 1]; masks -> ``label`` (3, S, S) in {0, 1} (heart, left lung, right lung).

    Images and masks are read with the project's CXR reader (viewer orientation), so predictions
    line up with every other image of the project. ``extra`` (augmentation) runs on image and label.
    """
    keys = ["image", *STRUCTURES]
    return Compose(
        [
            LoadCXRd(keys),
            ScaleIntensityRanged("image", a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True),
            Resized("image", spatial_size=(spatial_size, spatial_size), mode="bilinear", anti_aliasing=True),
            Resized(list(STRUCTURES), spatial_size=(spatial_size, spatial_size), mode="area"),
            ConcatItemsd(list(STRUCTURES), "label"),
            AsDiscreted("label", threshold=0.5),
            DeleteItemsd(list(STRUCTURES)),
            *extra,
        ]
    )
