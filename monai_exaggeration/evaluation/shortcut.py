"""A planted shortcut: a copy of a labelled folder where a synthetic marker goes with the label.

:func:`make_shortcut_dataset` copies the 8-bit images of a labelled folder (``labels.csv``) and
draws a small bright letter-like glyph (an "R", as a radiographer's side marker) at a fixed place in
the upper outer corner, away from the heart, in ``positive_rate`` of the positives and
``negative_rate`` of the negatives. A classifier trained on the copy learns to rely on the marker;
the faithfulness checks (:mod:`.faithfulness`) then ask whether an explanation of that classifier
shows the marker. The copy keeps the image paths and the ``labels.csv`` of the original (so the
splits are the same images) and adds ``markers.csv``: per image, whether it carries the marker and
the marker's box as fractions of the rows and columns (the same box for every image).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monai_exaggeration.utils import atomic_write, write_csv_atomic

__all__ = ["MARKERS_FILE", "MARKER_BOX", "MarkerBox", "make_shortcut_dataset", "plant_marker", "read_markers"]

logger = logging.getLogger(__name__)

#: The marker table written beside ``labels.csv`` of a shortcut copy.
MARKERS_FILE = "markers.csv"

#: The letter drawn (7 rows x 5 columns, "#" bright).
GLYPH = ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#")


@dataclass(frozen=True)
class MarkerBox:
    """A box as fractions of the image's rows and columns (top, left inclusive; bottom, right exclusive)."""

    top: float
    left: float
    bottom: float
    right: float

    def pixels(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(r0, c0, r1, c1)`` on an image of ``shape`` (rows, columns); at least one pixel each way."""
        rows, columns = int(shape[0]), int(shape[1])
        r0, c0 = int(round(self.top * rows)), int(round(self.left * columns))
        r1, c1 = max(r0 + 1, int(round(self.bottom * rows))), max(c0 + 1, int(round(self.right * columns)))
        return r0, c0, min(r1, rows), min(c1, columns)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The box as a boolean mask of ``shape``."""
        r0, c0, r1, c1 = self.pixels(shape)
        out = np.zeros(shape, dtype=bool)
        out[r0:r1, c0:c1] = True
        return out


#: Where the marker goes: the upper outer corner (16 x 16 px of a 128 px image, 1.6 % of its area).
MARKER_BOX = MarkerBox(0.0625, 0.75, 0.1875, 0.875)


def plant_marker(pixels: np.ndarray, box: MarkerBox = MARKER_BOX) -> np.ndarray:
    """A copy of a 2-D image with the glyph drawn at full brightness inside ``box`` (centred, as large as fits)."""
    if pixels.ndim != 2:
        raise ValueError(f"plant_marker needs a 2-D grey image, got shape {pixels.shape}")
    out = pixels.copy()
    r0, c0, r1, c1 = box.pixels(pixels.shape)
    height, width = len(GLYPH), len(GLYPH[0])
    scale = max(1, min((r1 - r0) // height, (c1 - c0) // width))
    glyph = np.kron(np.array([[ch == "#" for ch in row] for row in GLYPH]), np.ones((scale, scale), dtype=bool))
    top = r0 + ((r1 - r0) - glyph.shape[0]) // 2
    left = c0 + ((c1 - c0) - glyph.shape[1]) // 2
    bright = np.iinfo(out.dtype).max if np.issubdtype(out.dtype, np.integer) else 1.0
    region = out[top : top + glyph.shape[0], left : left + glyph.shape[1]]
    region[glyph[: region.shape[0], : region.shape[1]]] = bright
    return out


def make_shortcut_dataset(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    label: str,
    positive_rate: float = 0.95,
    negative_rate: float = 0.05,
    seed: int = 0,
    box: MarkerBox = MARKER_BOX,
) -> pd.DataFrame:
    """Copy the images of ``dataset_dir/labels.csv`` into ``output_dir`` with the marker planted; returns the marker table.

    Each positive (``label`` = 1) carries the marker with probability ``positive_rate``, each negative with
    ``negative_rate`` (drawn with ``seed``). Images must be 8- or 16-bit grey (or RGB, read as grey) PNG or
    JPEG files; they are written as PNG under the same relative paths.
    """
    from PIL import Image

    source = Path(dataset_dir)
    labels_csv = source / "labels.csv"
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{labels_csv} not found: the shortcut copy needs a labelled folder (docs/datasets.md)")
    if not (0.0 <= negative_rate <= 1.0 and 0.0 <= positive_rate <= 1.0):
        raise ValueError(f"positive_rate and negative_rate must be in [0, 1], got {positive_rate}, {negative_rate}")
    table = pd.read_csv(labels_csv, dtype={"image": str})
    if "image" not in table.columns or label not in table.columns:
        raise ValueError(f"{labels_csv} needs the columns 'image' and '{label}'; it has {list(table.columns)}")
    if Path(output_dir).resolve() == source.resolve():
        raise ValueError("the shortcut copy must go to another folder than its source")
    rng = np.random.default_rng(seed)
    draws = rng.random(len(table))
    rates = np.where(table[label].to_numpy() == 1, positive_rate, negative_rate)
    marked = draws < rates
    out = Path(output_dir)
    rows = []
    for image, mark in zip(table["image"], marked):
        relative = Path(image)
        if relative.is_absolute():
            raise ValueError(f"{labels_csv}: the shortcut copy needs image paths relative to the folder, got {image}")
        try:
            with Image.open(source / relative) as opened:
                pixels = np.asarray(opened.convert("I;16") if opened.mode.startswith("I") else opened.convert("L"))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{source / relative}: not a PNG/JPEG image the shortcut copy can read ({error})"
            ) from None
        planted = plant_marker(pixels, box) if mark else pixels
        target = (out / relative).with_suffix(".png")
        atomic_write(target, lambda tmp, p=planted: Image.fromarray(p).save(tmp, format="PNG"))
        rows.append({"image": relative.with_suffix(".png").as_posix(), "marker": int(mark)})
    copied = table.copy()
    copied["image"] = [row["image"] for row in rows]
    write_csv_atomic(copied, out / "labels.csv")
    markers = pd.DataFrame(rows)
    markers[label] = table[label].to_numpy()
    for name in ("top", "left", "bottom", "right"):
        markers[f"box_{name}"] = getattr(box, name)
    write_csv_atomic(markers, out / MARKERS_FILE)
    positives = markers[label] == 1
    logger.info(
        "shortcut copy: %d images in %s, marker on %d/%d positives and %d/%d negatives",
        len(markers),
        out,
        int(markers["marker"][positives].sum()),
        int(positives.sum()),
        int(markers["marker"][~positives].sum()),
        int((~positives).sum()),
    )
    return markers


def read_markers(dataset_dir: str | os.PathLike) -> dict[str, tuple[bool, MarkerBox]] | None:
    """The marker table of a shortcut copy by resolved image path (None when the folder has no ``markers.csv``)."""
    path = Path(dataset_dir) / MARKERS_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"image": str})
    base = path.resolve().parent
    return {
        str((base / row.image).resolve()): (
            bool(row.marker),
            MarkerBox(float(row.box_top), float(row.box_left), float(row.box_bottom), float(row.box_right)),
        )
        for row in table.itertuples(index=False)
    }
