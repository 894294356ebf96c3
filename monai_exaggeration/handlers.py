"""Ignite handlers: a per-image score table (CSV), summary metrics (JSON) and an ROC plot; progress
of long loops (a bar on a terminal, log lines otherwise) and the training loss log's schedule."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from monai_exaggeration.utils import atomic_write, write_csv_atomic

__all__ = ["CTRReport", "Progress", "ScoreTableWriter", "TrainingProgress", "binary_metrics", "log_filter"]

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress of a long loop: a tqdm bar when ``stream`` is a terminal, else log lines.

    Without a terminal (a log file, ``nohup``, CI) a line ``DESC: 512/3550 images (14 %), 35.1 images/s,
    about 1 min 27 s left`` is logged every ``every`` items (if given) or every ``seconds`` seconds,
    whichever comes first, and once at ``close()`` if any line was logged. ``terminal`` forces either.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        every: int | None = None,
        seconds: float = 30.0,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        if terminal is None:
            terminal = bool(getattr(stream, "isatty", lambda: False)())
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self.initial = int(initial)
        self.every, self.seconds = every, float(seconds)
        self.log = log or logger
        self.start = self.last_time = time.perf_counter()
        self.last_n = self.n
        self.lines = 0
        self.bar = None
        if terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        due_items = self.every is not None and self.n - self.last_n >= self.every
        if due_items or now - self.last_time >= self.seconds:
            self._log_line(now, postfix)

    def _log_line(self, now: float, postfix: dict[str, Any] | None = None) -> None:
        done, elapsed = self.n - self.initial, now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.2f} s/{self.unit}"
        left = f", about {_duration((self.total - self.n) / rate)} left" if rate > 0 and self.n < self.total else ""
        extra = "".join(
            f", {key} {value:.4g}" if isinstance(value, float) else f", {key} {value}" for key, value in (postfix or {}).items()
        )
        self.log.info("%s: %d/%d %s%s, %s%s%s", self.desc, self.n, self.total, self.unit, share, speed, left, extra)
        self.last_time, self.last_n = now, self.n
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and self.n != self.last_n:
            self._log_line(time.perf_counter())


class TrainingProgress:
    """Progress over the whole training run, iterations 0..``max_iterations`` (resumed runs start where
    their checkpoint left off), not per epoch: a tqdm bar on a terminal (with ``d_loss``/``g_loss``),
    otherwise a log line every ``seconds`` seconds with the speed and the time left."""

    def __init__(self, max_iterations: int, seconds: float = 30.0, stream: IO[str] | None = None,
                 terminal: bool | None = None, keys: tuple[str, ...] = ("d_loss", "g_loss")) -> None:
        self.max_iterations = int(max_iterations)
        self.seconds, self.stream, self.terminal, self.keys = seconds, stream, terminal, keys
        self.progress: Progress | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _update(self, engine: Engine) -> None:
        if self.progress is None:  # created at the first iteration: a resumed run's iteration is known by then
            self.progress = Progress(
                max(self.max_iterations, engine.state.iteration), "training", unit="it",
                initial=engine.state.iteration - 1, seconds=self.seconds, stream=self.stream, terminal=self.terminal,
            )
        output = engine.state.output if isinstance(engine.state.output, dict) else {}
        self.progress.update(1, **{key: float(output[key]) for key in self.keys if key in output})

    def _close(self, engine: Engine) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def log_interval_for(log_interval: int, max_iterations: int | None = None) -> int:
    """The loss log's interval: ``log_interval``, but at least 10 lines in a run of ``max_iterations``."""
    interval = max(1, int(log_interval))
    if max_iterations:
        interval = min(interval, max(1, int(max_iterations) // 10))
    return interval


def log_filter(log_interval: int, max_iterations: int | None = None) -> Callable[[Engine, int], bool]:
    """``iteration_log`` filter of MONAI's ``StatsHandler``/``TensorBoardStatsHandler``: every
    :func:`log_interval_for` iterations and at the run's last iteration (``max_iterations``, or where a
    trainer with ``final_iteration`` stops, e.g. at its time budget)."""
    interval = log_interval_for(log_interval, max_iterations)

    def should_log(engine: Engine, event: int) -> bool:
        if getattr(engine, "final_iteration", False):
            return True
        return event % interval == 0 or (max_iterations is not None and event >= max_iterations)

    return should_log


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
