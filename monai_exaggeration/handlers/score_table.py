"""A classifier evaluation's report: the per-image score table (CSV), summary metrics (JSON), an ROC plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from monai_exaggeration.binning import DECISION_THRESHOLD
from monai_exaggeration.handlers.writing import writes_files
from monai_exaggeration.utils import atomic_write, write_csv_atomic

__all__ = ["ScoreTableWriter", "binary_metrics"]


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = DECISION_THRESHOLD) -> dict[str, float]:
    """ROC-AUC, accuracy, sensitivity and specificity at ``threshold`` (NaN where undefined)."""
    from sklearn.metrics import roc_auc_score

    labels = labels.astype(int)
    predicted = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    both_classes = positives.any() and negatives.any()
    return {
        "n": int(labels.size),
        "positives": int(positives.sum()),
        "roc_auc": float(roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "accuracy": float((predicted == positives).mean()) if labels.size else float("nan"),
        "sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
        "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan"),
        "threshold": threshold,
    }


def _roc_plot(labels: np.ndarray, scores: np.ndarray, metrics: dict[str, float], path: Path, title: str) -> None:
    from sklearn.metrics import roc_curve

    from monai_exaggeration.plotting import plt, save_figure

    fpr, tpr, _ = roc_curve(labels.astype(int), scores)
    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axes.plot(fpr, tpr, lw=2, label=f"AUC = {metrics['roc_auc']:.3f} (n = {metrics['n']})")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    save_figure(figure, path)


class ScoreTableWriter:
    """Collect each image's classifier score (and label if any) during an evaluation; write them at the end.

    Files in ``output_dir``, written by the main process only (rank 0 under ``torchrun``):
    ``scores.csv`` (image, label, score, and DICOM UIDs when known), ``metrics.json`` and ``roc.png``
    (when labels of both classes are present).

    Args:
        output_dir: the folder of the files.
        finding: the finding's name, a column of ``scores.csv`` and the plot's title.
        threshold: the score threshold of accuracy, sensitivity and specificity.
        name: the evaluation's name in the log line and the plot's title.
        output_transform: maps ``engine.state.output`` to a sequence of per-image dicts with ``pred``
            (the score) and, if known, ``label`` and ``image`` (whose metadata give the file name and
            DICOM UIDs). Default: the output as it is, i.e. MONAI's decollated evaluator output.
    """

    def __init__(
        self,
        output_dir: str,
        finding: str = "finding",
        threshold: float = DECISION_THRESHOLD,
        name: str = "",
        output_transform: Callable[[Any], Sequence[dict]] = lambda output: output,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.finding = finding
        self.threshold = threshold
        self.name = name
        self.output_transform = output_transform
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        for item in self.output_transform(engine.state.output):
            meta = getattr(item["image"], "meta", {}) if "image" in item else {}
            tags = meta.get("dicom", {})
            row = {
                "image": str(meta.get("filename_or_obj", "")),
                "score": float(torch.as_tensor(item["pred"]).reshape(-1)[0]),
                "study_instance_uid": tags.get("StudyInstanceUID", ""),
                "sop_instance_uid": tags.get("SOPInstanceUID", ""),
            }
            if "label" in item:
                row["label"] = int(torch.as_tensor(item["label"]).reshape(-1)[0])
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        if not writes_files(f"{self.name or 'classifier'} score table"):
            return
        table = pd.DataFrame(self.rows)
        table.insert(1, "finding", self.finding)
        if "label" in table:
            table.insert(2, "label", table.pop("label"))
        write_csv_atomic(table, self.output_dir / "scores.csv")
        if "label" not in table:
            return
        labels, scores = table["label"].to_numpy(), table["score"].to_numpy()
        metrics = binary_metrics(labels, scores, self.threshold)
        atomic_write(self.output_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
        if metrics["positives"] and metrics["positives"] < metrics["n"]:
            title = f"{self.finding} classifier" + (f" ({self.name})" if self.name else "")
            _roc_plot(labels, scores, metrics, self.output_dir / "roc.png", title)
        engine.logger.info("%s metrics: %s", self.name or "evaluation", json.dumps(metrics))
