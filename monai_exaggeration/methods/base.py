"""What every counterfactual method hands the inference workflow (see docs/methods.md).

A method turns a batch of preprocessed sources into one image per target bin at model resolution.
The workflow then treats every method alike: frames at source resolution are the source plus the
method's *change* carried to the source grid, ``x + up(generated - reconstruction)``
(:func:`~monai_exaggeration.inference.frames.full_resolution_frames`), so methods are compared on
what they change, not on how sharp their decoder is; scores, DICOM series, CSV logs and quick-looks
are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

__all__ = ["MethodSeries", "SeriesMethod", "frame_notes"]


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
    """A counterfactual method, as :mod:`.registry` builds it (see there for each member)."""

    name: str
    label: str
    title: str
    version_name: str
    num_bins: int | None
    image_size: int | None
    composition: str

    @classmethod
    def build(cls, context: Any) -> SeriesMethod: ...

    def weights_id(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def version_settings(self) -> dict[str, Any]: ...

    def frame_details(self, details: dict, count: int) -> list[str]: ...

    def describe(self) -> dict[str, str]: ...

    def __call__(
        self, inputs: torch.Tensor, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int
    ) -> MethodSeries: ...


def frame_notes(details: dict, count: int) -> list[str]:
    """Per frame, what a reader of the image should know about how it was made (DICOM ImageComments):
    a calibrated strength (and whose change it scales), and that the frame could not reach its bin
    centre where a method says so (``reached``)."""
    reached = list(details.get("reached") or [None] * count)
    strength = list(details.get("alpha") or [None] * count)
    borrowed = list(details.get("change_bin") or [None] * count)
    own = list(details.get("bins") or [None] * count)
    notes = []
    for ok, value, change_bin, bin_ in zip(reached, strength, borrowed, own):
        note = "" if value is None else f"strength {value:g}"
        if note and change_bin is not None and bin_ is not None and change_bin != bin_:
            note += f" of the change of target bin {change_bin}"
        if ok is False:
            note = (note + "; " if note else "") + "target score not reached"
        notes.append(note)
    return notes
