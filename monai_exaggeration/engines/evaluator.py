"""Validation of the explainer during training: series of a fixed validation set, scored by f."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.engines import Evaluator
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from monai_exaggeration.binning import posterior_to_bin
from monai_exaggeration.methods.series import compose_series, generate_series
from monai_exaggeration.metrics import series_validity

__all__ = ["SeriesEvaluator", "SeriesValidityMetric"]


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
