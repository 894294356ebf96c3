"""Ignite handlers: a per-image score table (CSV), summary metrics (JSON) and an ROC plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from monai_exaggeration.utils import atomic_write, write_csv_atomic

__all__ = ["CTRReport", "ScoreTableWriter", "binary_metrics"]


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels.astype(int), scores)
    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axes.plot(fpr, tpr, lw=2, label=f"AUC = {metrics['roc_auc']:.3f} (n = {metrics['n']})")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


class ScoreTableWriter:
    """Collect each image's classifier score (and label if any) during an evaluation; write them at the end.

    Files in ``output_dir``: ``scores.csv`` (image, label, score, and DICOM UIDs when known),
    ``metrics.json`` and ``roc.png`` (when labels of both classes are present).
    """

    def __init__(self, output_dir: str, finding: str = "finding", threshold: float = 0.5, name: str = "") -> None:
        self.output_dir = Path(output_dir)
        self.finding = finding
        self.threshold = threshold
        self.name = name
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            pred = item["pred"]
            meta = getattr(item["image"], "meta", {}) if "image" in item else {}
            tags = meta.get("dicom", {})
            row = {
                "image": str(meta.get("filename_or_obj", "")),
                "score": float(torch.as_tensor(pred).reshape(-1)[0]),
                "study_instance_uid": tags.get("StudyInstanceUID", ""),
                "sop_instance_uid": tags.get("SOPInstanceUID", ""),
            }
            if "label" in item:
                row["label"] = int(torch.as_tensor(item["label"]).reshape(-1)[0])
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
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


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, truth).sum() / total)


class CTRReport:
    """After a segmentation evaluation: per-image Dice and CTR (``ctr.csv``), ``metrics.json``, ``ctr.png``.

    Expects decollated outputs with binarised ``pred`` and ``label`` of shape (3, S, S) (heart, left
    lung, right lung) and batch items carrying ``id`` and the ground-truth ``ctr`` (NaN if unknown).
    CTR is measured on the predicted masks and on the label masks with
    :func:`monai_exaggeration.metrics.cardiothoracic_ratio`; the error is reported against the
    dataset's ground truth where it has one.
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        from monai_exaggeration.data.segmentation import STRUCTURES
        from monai_exaggeration.metrics import cardiothoracic_ratio

        for output, item in zip(engine.state.output, engine.state.batch):
            pred = np.asarray(torch.as_tensor(output["pred"]).detach().cpu()) > 0.5
            label = np.asarray(torch.as_tensor(output["label"]).detach().cpu()) > 0.5
            truth = item.get("ctr", float("nan"))
            row = {"id": item.get("id", ""), "ctr_truth": float(torch.as_tensor(truth)),
                   "ctr_predicted": cardiothoracic_ratio(*pred), "ctr_from_label_masks": cardiothoracic_ratio(*label)}
            row.update({f"dice_{name}": _dice(pred[i], label[i]) for i, name in enumerate(STRUCTURES)})
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        table = pd.DataFrame(self.rows)
        known = table.dropna(subset=["ctr_truth", "ctr_predicted"])
        error = (known["ctr_predicted"] - known["ctr_truth"]).abs()
        metrics: dict[str, Any] = {
            "n_images": int(len(table)),
            "n_with_ctr_truth": int(len(known)),
            "ctr_mae": float(error.mean()) if len(known) else float("nan"),
            "ctr_max_error": float(error.max()) if len(known) else float("nan"),
            "ctr_mae_label_masks": float((known["ctr_from_label_masks"] - known["ctr_truth"]).abs().mean()) if len(known) else float("nan"),
            "cardiomegaly_agreement": float(((known["ctr_predicted"] > 0.5) == (known["ctr_truth"] > 0.5)).mean()) if len(known) else float("nan"),
            "ctr_missing": int(table["ctr_predicted"].isna().sum()),
        }
        metrics.update({column: float(table[column].mean()) for column in table.columns if column.startswith("dice_")})
        write_csv_atomic(table, self.output_dir / "ctr.csv")
        atomic_write(self.output_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
        if len(known):
            atomic_write(self.output_dir / "ctr.png", lambda tmp: _ctr_plot(known, metrics, tmp))
        engine.logger.info("CTR report: %s", json.dumps(metrics))


def _ctr_plot(known: pd.DataFrame, metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axis.plot([0.3, 0.85], [0.3, 0.85], ls="--", color="grey", lw=1)
    axis.axhline(0.5, color="black", lw=0.5, ls=":")
    axis.axvline(0.5, color="black", lw=0.5, ls=":")
    axis.scatter(known["ctr_truth"], known["ctr_predicted"], s=12)
    axis.set(xlabel="CTR, ground truth", ylabel="CTR from predicted masks", xlim=(0.3, 0.85), ylim=(0.3, 0.85))
    axis.set_title(f"CTR: MAE {metrics['ctr_mae']:.3f} (n = {metrics['n_with_ctr_truth']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
