"""What every counterfactual method hands the inference workflow (see docs/methods.md).

A method turns a batch of preprocessed sources into one image per target bin at model resolution.
The workflow then treats every method alike: frames at source resolution are the source plus the
method's *change* carried to the source grid, ``x + up(generated - reconstruction)``
(:func:`~monai_exaggeration.inference.frames.full_resolution_frames`), so methods are compared on
what they change, not on how sharp their decoder is; scores, DICOM series, CSV logs and quick-looks
are the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["MethodSeries", "SeriesMethod"]


@dataclass
class MethodSeries:
    """One batch of series at model resolution, in the model range [-1, 1].

    ``generated`` (B, K, S, S): the method's image for each of the K target bins; ``reconstruction``
    (B, S, S): the method's image of the unchanged source (the change is ``generated -
    reconstruction``); ``frames`` (B, K, S, S): the frames as shown at model resolution.
    ``details``: per-source facts for the logs (e.g. Latent Shift's λ per frame, the explainer's
    strength α and whether each frame reached its bin centre).
    ``displacement`` (B, K, 2, S, S), model pixels, and ``intensity`` (B, K, S, S), model range: set by
    a deformation explainer, whose frames at source resolution are the source *warped* by the
    displacement carried to the source grid, plus the intensity term (None when it has none).
    """

    generated: torch.Tensor
    reconstruction: torch.Tensor
    frames: torch.Tensor
    details: list[dict[str, Any]] = field(default_factory=list)
    displacement: torch.Tensor | None = None
    intensity: torch.Tensor | None = None
    #: ``remake(rows, steps, alpha)`` -> the frames (rows[i], steps[i]) made again with strengths ``alpha``
    #: (each (m,)): a :class:`MethodSeries`-like dict of ``generated`` or ``displacement``/``intensity``,
    #: each (m, ...); lets the inference refine a calibrated frame on the frame it writes. None: not scalable.
    remake: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor | None]] | None = field(
        default=None, repr=False
    )


class SeriesMethod(Protocol):
    """A counterfactual method: ``name`` (config value), ``label`` (DICOM SeriesDescription and
    reports), ``weights_id`` (what enters ``model_version``) and a call producing :class:`MethodSeries`."""

    name: str
    label: str

    def weights_id(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def __call__(
        self, inputs: torch.Tensor, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int
    ) -> MethodSeries: ...
