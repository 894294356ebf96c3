"""A segmentation evaluation's report: per-image Dice and cardiothoracic ratio (CSV), metrics (JSON), a plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from monai_exaggeration.findings import CARDIOMEGALY
from monai_exaggeration.handlers.writing import writes_files
from monai_exaggeration.utils import atomic_write, write_csv_atomic

__all__ = ["CTRReport"]


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, truth).sum() / total)


class CTRReport:
    """After a segmentation evaluation: per-image Dice and CTR (``ctr.csv``), ``metrics.json``, ``ctr.png``.

    CTR is measured on the predicted masks and on the label masks with
    :func:`monai_exaggeration.metrics.cardiothoracic_ratio`; the error is reported against the
    dataset's ground truth where it has one. The files are written by the main process only (rank 0
    under ``torchrun``).

    Args:
        output_dir: the folder of the files.
        output_transform: maps ``engine.state.output`` to a sequence of per-image dicts with binarised
            ``pred`` and ``label`` of shape (3, S, S) (heart, left lung, right lung). Default: the
            output as it is, i.e. MONAI's decollated evaluator output.
        batch_transform: maps ``engine.state.batch`` to a sequence of per-image dicts carrying ``id``
            and the ground-truth ``ctr`` (NaN if unknown), in the order of the outputs. Default: the
            batch as it is (decollated).
    """

    def __init__(
        self,
        output_dir: str,
        output_transform: Callable[[Any], Sequence[dict]] = lambda output: output,
        batch_transform: Callable[[Any], Sequence[dict]] = lambda batch: batch,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.batch_transform = batch_transform
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        from monai_exaggeration.data.segmentation import STRUCTURES
        from monai_exaggeration.metrics import cardiothoracic_ratio

        outputs, items = self.output_transform(engine.state.output), self.batch_transform(engine.state.batch)
        for output, item in zip(outputs, items):
            pred = np.asarray(torch.as_tensor(output["pred"]).detach().cpu()) > 0.5
            label = np.asarray(torch.as_tensor(output["label"]).detach().cpu()) > 0.5
            truth = item.get("ctr", float("nan"))
            row = {
                "id": item.get("id", ""),
                "ctr_truth": float(torch.as_tensor(truth)),
                "ctr_predicted": cardiothoracic_ratio(*pred),
                "ctr_from_label_masks": cardiothoracic_ratio(*label),
            }
            row.update({f"dice_{name}": _dice(pred[i], label[i]) for i, name in enumerate(STRUCTURES)})
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        if not writes_files("CTR report"):
            return
        table = pd.DataFrame(self.rows)
        known = table.dropna(subset=["ctr_truth", "ctr_predicted"])
        error = (known["ctr_predicted"] - known["ctr_truth"]).abs()
        metrics: dict[str, Any] = {
            "n_images": int(len(table)),
            "n_with_ctr_truth": int(len(known)),
            "ctr_mae": float(error.mean()) if len(known) else float("nan"),
            "ctr_max_error": float(error.max()) if len(known) else float("nan"),
            "ctr_mae_label_masks": float((known["ctr_from_label_masks"] - known["ctr_truth"]).abs().mean())
            if len(known)
            else float("nan"),
            f"{CARDIOMEGALY.name}_agreement": float(
                ((known["ctr_predicted"] > 0.5) == (known["ctr_truth"] > 0.5)).mean()
            )
            if len(known)
            else float("nan"),
            "ctr_missing": int(table["ctr_predicted"].isna().sum()),
        }
        metrics.update({column: float(table[column].mean()) for column in table.columns if column.startswith("dice_")})
        write_csv_atomic(table, self.output_dir / "ctr.csv")
        atomic_write(self.output_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
        if len(known):
            _ctr_plot(known, metrics, self.output_dir / "ctr.png")
        engine.logger.info("CTR report: %s", json.dumps(metrics))


def _ctr_plot(known: pd.DataFrame, metrics: dict[str, Any], path: Path) -> None:
    from monai_exaggeration.plotting import plt, save_figure

    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axis.plot([0.3, 0.85], [0.3, 0.85], ls="--", color="grey", lw=1)
    axis.axhline(0.5, color="black", lw=0.5, ls=":")
    axis.axvline(0.5, color="black", lw=0.5, ls=":")
    axis.scatter(known["ctr_truth"], known["ctr_predicted"], s=12)
    axis.set(xlabel="CTR, ground truth", ylabel="CTR from predicted masks", xlim=(0.3, 0.85), ylim=(0.3, 0.85))
    axis.set_title(f"CTR: MAE {metrics['ctr_mae']:.3f} (n = {metrics['n_with_ctr_truth']})", fontsize=10)
    save_figure(figure, path)
