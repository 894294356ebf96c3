"""Validation of the explainer during training: series of a fixed validation set, scored by f."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import Evaluator
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from monai_exaggeration.binning import posterior_to_bin
from monai_exaggeration.engines.series import compose_series, generate_series
from monai_exaggeration.handlers.writing import writes_files
from monai_exaggeration.metrics import series_validity
from monai_exaggeration.utils import atomic_write, json_text

__all__ = ["SeriesEvaluator", "SeriesValidityMetric", "SeriesMontageLogger", "series_montage"]


class SeriesEvaluator(Evaluator):
    """Generate the full series (bins 0..N-1) of each validation image and score every frame with f.

    ``composition`` (``generated`` or ``transfer``, see :func:`~.series.compose_series`) makes the
    frames as the explainer was trained to make them. The series are generated through ``inferer``
    (as MONAI's ``SupervisedEvaluator`` runs its network): ``inferer(images, series_network)``, where
    ``series_network`` maps images (B, C, H, W) to their series (B, N, C, H, W).
    ``engine.state.output``: ``image`` (B, C, H, W), ``series`` (B, N, C, H, W), ``scores`` (B, N)
    and ``source_score`` (B,). Attach :class:`SeriesValidityMetric` instances as metrics.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        generator: nn.Module,
        classifier: nn.Module,
        num_bins: int,
        norm: str = "series",
        composition: str = "generated",
        inferer: Inferer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, val_data_loader=val_data_loader, decollate=False, **kwargs)
        self.generator = generator
        self.classifier = classifier
        self.num_bins = num_bins
        self.norm = norm
        self.composition = composition
        self.inferer = SimpleInferer() if inferer is None else inferer

    def series_network(self, images: torch.Tensor) -> torch.Tensor:
        """G's series of ``images``: (B, C, H, W) -> (B, N, C, H, W), normalised as ``norm`` says."""
        return generate_series(self.generator, images, self.num_bins, norm=self.norm)

    @torch.no_grad()
    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = batchdata["image"]
        image = (image.as_tensor() if hasattr(image, "as_tensor") else image).to(engine.state.device)
        source_score = self.classifier(image).reshape(-1)
        series = self.inferer(image, self.series_network)
        series = compose_series(
            image, series, posterior_to_bin(source_score, self.num_bins), self.composition, generator=self.generator
        )
        scores = self.classifier(series.flatten(0, 1)).reshape(series.shape[:2])
        return {"image": image, "series": series, "scores": scores, "source_score": source_score}


class SeriesValidityMetric(Metric):
    """One field of :func:`~monai_exaggeration.metrics.series_validity` over a whole evaluation run.

    ``field``: ``median_spearman`` (higher is better), ``mae``, ``flip_rate``, ``monotone_rate``.
    """

    required_output_keys = ("scores", "source_score")

    def __init__(self, field: str = "median_spearman", output_transform: Callable = lambda output: output) -> None:
        self.field = field
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._sources: list[np.ndarray] = []

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        scores, source_score = output
        self._scores.append(scores.detach().float().cpu().numpy())
        self._sources.append(source_score.detach().float().cpu().numpy())

    def compute(self) -> float:
        result = series_validity(np.concatenate(self._scores), np.concatenate(self._sources))
        return float(getattr(result, self.field))


def series_montage(series: torch.Tensor, max_rows: int = 4) -> np.ndarray:
    """Grid (rows = queries, columns = bins) of series (B, N, 1, H, W) in [-1, 1] as uint8 (H', W')."""
    frames = series[:max_rows, :, 0].detach().float().cpu().clamp(-1, 1)
    rows, cols, height, width = frames.shape
    grid = frames.permute(0, 2, 1, 3).reshape(rows * height, cols * width)
    return ((grid.numpy() + 1.0) * 127.5).round().astype(np.uint8)


class SeriesMontageLogger:
    """After each evaluation, log a montage of the first validation batch's series.

    Written to TensorBoard (``summary_writer``, tag ``series``, at the trainer's iteration) and, if
    ``output_dir`` is given, to ``output_dir/series_latest.png``, by the main process only.
    ``output_transform`` maps ``engine.state.output`` to the series (B, K, 1, S, S) (default: its ``series``).
    """

    def __init__(
        self, summary_writer: Any = None, output_dir: str | None = None, trainer: Engine | None = None,
        output_transform: Callable[[Any], torch.Tensor] = lambda output: output["series"],
    ) -> None:
        self.summary_writer = summary_writer
        self.output_dir = Path(output_dir) if output_dir else None
        self.trainer = trainer
        self.output_transform = output_transform
        self._first: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self._keep)
        engine.add_event_handler(Events.COMPLETED, self._log)

    def _keep(self, engine: Engine) -> None:
        self._first = self.output_transform(engine.state.output)

    def _log(self, engine: Engine) -> None:
        if self._first is None or not writes_files("series montage"):
            return
        montage = series_montage(self._first)
        step = self.trainer.state.iteration if self.trainer is not None else engine.state.epoch
        if self.summary_writer is not None:
            self.summary_writer.add_image("series", montage[None], step, dataformats="CHW")
            self.summary_writer.flush()
        if self.output_dir is not None:
            import imageio.v3 as iio

            atomic_write(self.output_dir / "series_latest.png", lambda tmp: iio.imwrite(tmp, montage, extension=".png"))


class SeriesValidityReport:
    """After an evaluation run, write ``validity.json`` (all measures, per bin too) and ``compatibility.png``.

    The plot is the papers' compatibility plot, drawn as the evaluation draws it: mean f(x_b) per
    target bin (with ±1 SD and the inter-quartile range) against the bin centres. The main process
    writes them. ``output_transform`` maps ``engine.state.output`` to ``(frame scores (B, K), source
    scores (B,))`` (default: its ``scores`` and ``source_score``).
    """

    def __init__(
        self, output_dir: str,
        output_transform: Callable[[Any], tuple] = lambda output: (output["scores"], output["source_score"]),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric = SeriesValidityMetric()
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.metric.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        self.metric.update(self.output_transform(engine.state.output))

    def _write(self, engine: Engine) -> None:
        import json

        if not writes_files("series validity"):
            return
        scores, sources = np.concatenate(self.metric._scores), np.concatenate(self.metric._sources)
        result = series_validity(scores, sources)
        report = dict(result.as_dict(), validity=result.validity)
        atomic_write(self.output_dir / "validity.json", lambda tmp: tmp.write_text(json_text(report)))
        _compatibility_plot(scores, sources, self.output_dir / "compatibility.png")
        engine.logger.info("series validity: %s", json.dumps({k: v for k, v in report.items() if "per_bin" not in k}))


def _compatibility_plot(scores: np.ndarray, source_scores: np.ndarray, path: Path) -> Path:
    """The evaluation's compatibility plot (:func:`~monai_exaggeration.evaluation.plots.compatibility_plot`).

    Validation frames are the explainer's model-size frames (what the inference writes with
    ``resolution: model``): one curve, labelled "validation frames".
    """
    from monai_exaggeration.evaluation.plots import compatibility_plot
    from monai_exaggeration.evaluation.summary import validity_summary

    summary = validity_summary(scores, source_scores)
    return compatibility_plot({"validation_frames": summary}, path)
