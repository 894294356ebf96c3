"""Faithfulness checks: does a series show what the black box really uses?

Three checks, run for any series method through the inference workflow (so the frames checked are
the frames a user gets):

* **Shortcut test** (after the shortcut experiments of FastDiME, ECCV 2024, and DeCoDEx, MIDL
  2024). The classifier was trained on a copy of the data with a planted marker
  (:mod:`.shortcut`). On images *without* the marker, the change from the first frame to the last,
  ``|x_last - x_first|``, should concentrate in the marker's box: measured as the box's share of the
  change divided by its share of the image (``box_ratio``, 1 = no preference), and whether the
  box-sized window with the largest change overlaps the box (``hit``).
* **Model randomisation** (Adebayo et al., NeurIPS 2018). The classifier's parameterised layers are
  re-initialised cascading from the output; at each level the series are made again and their
  change maps compared with those of the real classifier (SSIM of the maps scaled to [0, 1], and
  Spearman rank correlation). An explanation of the black box should stop resembling itself.
* **Label flip consistency.** Toward "absent" on positives, toward "present" on negatives: the
  classifier must follow (the far frame's score crosses the decision threshold), and where the
  source leaves room on both sides, the change toward "present" and the change toward "absent"
  should mirror each other in place (a negative Pearson correlation of the signed maps).

:class:`FaithfulnessChecks` runs them on a few images and returns a metrics section, per-series
rows and a montage; the evaluation (``--faithfulness true``) puts them into its report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from monai_exaggeration.binning import DECISION_THRESHOLD
from monai_exaggeration.data import stratified_head
from monai_exaggeration.evaluation.shortcut import MarkerBox, read_markers
from monai_exaggeration.inference import ExaggerationInference, Explained, SeriesEngine, SeriesResult, SourceDataset

__all__ = [
    "DEFAULT_LEVELS",
    "FaithfulnessChecks",
    "box_measures",
    "flip_measures",
    "map_similarity",
    "randomisable_layers",
    "randomised",
]

logger = logging.getLogger(__name__)

#: Model-randomisation levels: the share of the parameterised layers re-initialised, counted from the output.
DEFAULT_LEVELS = (0.0, 0.34, 0.67, 1.0)


def _change(result: SeriesResult) -> np.ndarray:
    """``|x_last - x_first|`` of a series, in display units [0, 1]."""
    frames = result.unit_frames
    return np.abs(frames[-1] - frames[0])


def box_measures(change: np.ndarray, box: MarkerBox) -> dict:
    """Where a change map puts its mass relative to a box: ``box_share`` (share of the change inside),
    ``area_share`` (the box's share of the image), ``box_ratio`` (their ratio) and ``hit`` (the
    box-sized window of largest mean change overlaps the box by at least half its area)."""
    mask = box.mask(change.shape)
    total = float(change.sum())
    area = float(mask.mean())
    share = float(change[mask].sum()) / total if total > 0 else 0.0
    r0, c0, r1, c1 = box.pixels(change.shape)
    height, width = r1 - r0, c1 - c0
    windows = uniform_filter(change.astype(np.float64), size=(height, width), mode="constant")
    row, column = np.unravel_index(int(np.argmax(windows)), windows.shape)
    top, left = row - height // 2, column - width // 2  # the window centred on the maximum
    overlap_rows = max(0, min(top + height, r1) - max(top, r0))
    overlap_columns = max(0, min(left + width, c1) - max(left, c0))
    hit = total > 0 and overlap_rows * overlap_columns >= 0.5 * height * width
    return {"box_share": share, "area_share": area, "box_ratio": share / area, "hit": bool(hit)}


def map_similarity(reference: np.ndarray, other: np.ndarray) -> dict:
    """SSIM of two change maps, each scaled by its own maximum to [0, 1], and the Spearman rank
    correlation of their pixels (0 where a map is constant: nothing in common to rank)."""
    scaled = [m / m.max() if m.max() > 0 else np.zeros_like(m) for m in (reference, other)]
    ssim = float(structural_similarity(scaled[0], scaled[1], data_range=1.0))
    if np.ptp(reference) == 0 or np.ptp(other) == 0:
        rank = 0.0
    else:
        rank = float(spearmanr(reference.ravel(), other.ravel()).statistic)
    return {"ssim": ssim, "spearman": rank}


def flip_measures(result: SeriesResult, positive: bool, threshold: float = DECISION_THRESHOLD) -> dict:
    """Label flip of one series: whether the classifier follows toward the other class, and (where the
    source is at least two bins from both ends) the Pearson correlation of the signed changes toward
    "present" (last frame − source) and toward "absent" (first frame − source)."""
    scores = result.scores
    follows = scores[0] < threshold if positive else scores[-1] >= threshold
    frames = result.unit_frames
    position = list(result.bins).index(result.source_bin) if result.source_bin in result.bins else None
    mirror = float("nan")
    if position is not None and 2 <= position <= len(frames) - 3:
        source = frames[position]
        up, down = (frames[-1] - source).ravel(), (frames[0] - source).ravel()
        if np.ptp(up) > 0 and np.ptp(down) > 0:
            mirror = float(np.corrcoef(up, down)[0, 1])
    return {"follows": bool(follows), "mirror_correlation": mirror}


def randomisable_layers(classifier: nn.Module) -> list[nn.Module]:
    """The classifier's modules with parameters of their own and a ``reset_parameters``, output first."""
    layers = [
        module
        for module in classifier.modules()
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))
    ]
    return layers[::-1]


@contextlib.contextmanager
def randomised(classifier: nn.Module, share: float, seed: int = 0) -> Iterator[int]:
    """Re-initialise the top ``share`` of :func:`randomisable_layers` in place (cascading from the
    output), yield how many were reset, and put the trained weights back afterwards."""
    layers = randomisable_layers(classifier)
    count = int(round(share * len(layers)))
    if share > 0:
        count = max(count, 1)
    saved = {key: value.clone() for key, value in classifier.state_dict().items()}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for layer in layers[:count]:
                layer.reset_parameters()
        yield count
    finally:
        classifier.load_state_dict(saved)


@dataclass
class _Series:
    record: dict
    result: SeriesResult


def _series(runner: ExaggerationInference, records: Sequence[dict]) -> list[_Series]:
    """The runner's series of ``records`` (unreadable sources and failed series are skipped with a warning)."""
    out: list[_Series] = []

    def keep(explained: Explained) -> None:
        if explained.ok:
            out.append(_Series(explained.record, explained.outcome))
        else:
            outcome = explained.outcome
            logger.warning("faithfulness: skipped %s (%s)", explained.path, getattr(outcome, "error", outcome))

    SeriesEngine(runner.inferer, SourceDataset(records, runner.reading), sinks=[keep]).run()
    return out


def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v == v]  # NaN dropped
    return float(np.median(values)) if values else None


def _rate(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class FaithfulnessChecks:
    """The three checks on ``num_images`` images (module docstring).

    ``dataset_dir``: the labelled folder of the evaluation; the shortcut test runs when it holds a
    ``markers.csv`` (a copy made by ``scripts/make_shortcut_dataset.py``) and is reported as not
    run otherwise. ``levels``: the model-randomisation levels (shares of the layers, 0 = the real
    classifier first). ``montage_images``: how many shortcut-test series the montage draws.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike | None = None,
        num_images: int = 24,
        levels: Sequence[float] = DEFAULT_LEVELS,
        montage_images: int = 6,
        seed: int = 0,
    ) -> None:
        if int(num_images) < 2:
            raise ValueError(f"the faithfulness checks need at least 2 images, got num_images={num_images}")
        levels = [float(level) for level in levels]
        if not levels or levels[0] != 0.0 or any(not 0 <= level <= 1 for level in levels):
            raise ValueError(f"levels must start with 0 (the real classifier) and lie in [0, 1], got {levels}")
        self.markers = read_markers(dataset_dir) if dataset_dir is not None else None
        self.num_images = int(num_images)
        self.levels = levels
        self.montage_images = int(montage_images)
        self.seed = int(seed)

    def run(self, runner: ExaggerationInference, records: Sequence[dict], label: str, folder: Path) -> dict:
        """Run every check with ``runner`` on ``records`` (labelled with ``label``); returns
        ``{"metrics": ..., "rows": [...], "plots": {...}}`` (the montage is written into ``folder``)."""
        start = time.perf_counter()
        chosen = stratified_head(records, self.num_images, label)
        metrics: dict = {"n_images": len(chosen)}
        rows: list[dict] = []
        plots: dict[str, Path] = {}
        shortcut_records = self._unmarked(records, label)
        if shortcut_records:
            series = _series(runner, shortcut_records)
            measured = []
            for item in series:
                _marked, box = self.markers[_key(item.record)]
                values = box_measures(_change(item.result), box)
                measured.append(values)
                rows.append({"check": "shortcut", "image": item.record["image"], **values})
            metrics["shortcut"] = {
                "n_series": len(measured),
                "hit_rate": _rate([m["hit"] for m in measured]),
                "median_box_ratio": _median([m["box_ratio"] for m in measured]),
                "mean_box_share": _rate([m["box_share"] for m in measured]),
                "area_share": measured[0]["area_share"] if measured else None,
            }
            if series and self.montage_images:
                from monai_exaggeration.evaluation.plots import shortcut_montage

                picked = series[: self.montage_images]
                boxes = [self.markers[_key(item.record)][1] for item in picked]
                plots["shortcut"] = shortcut_montage(
                    [item.result for item in picked], boxes, folder / "faithfulness_shortcut.png"
                )
        else:
            metrics["shortcut"] = {"n_series": 0, "note": "not run: the dataset has no markers.csv (a shortcut copy)"}
        reference = _series(runner, chosen)
        metrics["label_flip"], flip_rows = self._label_flip(reference, label)
        rows += flip_rows
        metrics["randomisation"], random_rows = self._randomisation(runner, chosen, reference)
        rows += random_rows
        metrics["seconds"] = time.perf_counter() - start
        logger.info("faithfulness checks: %.0f s", metrics["seconds"])
        return {"metrics": metrics, "rows": rows, "plots": plots}

    def _unmarked(self, records: Sequence[dict], label: str) -> list[dict]:
        if not self.markers:
            return []
        unmarked = [r for r in records if _key(r) in self.markers and not self.markers[_key(r)][0]]
        return stratified_head(unmarked, self.num_images, label) if unmarked else []

    def _label_flip(self, series: list[_Series], label: str) -> tuple[dict, list[dict]]:
        rows = []
        for item in series:
            values = flip_measures(item.result, bool(item.record[label]))
            rows.append({"check": "label_flip", "image": item.record["image"], "label": item.record[label], **values})
        mirrors = [r["mirror_correlation"] for r in rows if r["mirror_correlation"] == r["mirror_correlation"]]
        metrics = {
            "n_series": len(rows),
            "follow_rate": _rate([r["follows"] for r in rows]),
            "n_mirror": len(mirrors),
            "median_mirror_correlation": _median(mirrors),
            "mirror_rate": _rate([m < 0 for m in mirrors]),
        }
        return metrics, rows

    def _randomisation(
        self, runner: ExaggerationInference, records: list[dict], reference: list[_Series]
    ) -> tuple[dict, list[dict]]:
        maps = {item.record["image"]: _change(item.result) for item in reference}
        levels, rows = [], []
        for level in self.levels[1:]:
            with randomised(runner.classifier, level, self.seed) as count:
                series = _series(runner, [item.record for item in reference])
            values = [
                map_similarity(maps[item.record["image"]], _change(item.result))
                for item in series
                if item.record["image"] in maps
            ]
            for item, value in zip(series, values):
                rows.append({"check": "randomisation", "image": item.record["image"], "level": level, **value})
            levels.append(
                {
                    "share": level,
                    "layers": count,
                    "n_series": len(values),
                    "median_ssim": _median([v["ssim"] for v in values]),
                    "median_spearman": _median([v["spearman"] for v in values]),
                }
            )
            logger.info("faithfulness: randomisation %.2f (%d layers) done", level, count)
        full = levels[-1] if levels else {}
        return {
            "levels": levels,
            "full_ssim": full.get("median_ssim"),
            "full_spearman": full.get("median_spearman"),
        }, rows


def _key(record: dict) -> str:
    return str(Path(record["image"]).resolve())
