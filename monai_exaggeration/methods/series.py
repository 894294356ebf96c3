"""Generate exaggeration series: one query image repeated with target bins 0..N-1.

Normalisation statistics at inference are an explicit choice (``norm``):

* ``"series"`` (default, as the original work): batch norm uses the statistics of the series'
  own frames, i.e. each query is one batch of its N frames, so the frames of a series share
  normalisation and a series never depends on other images. Running statistics are not changed.
  Several queries go through the generator in one forward with *grouped* statistics (each group
  of N consecutive samples normalised by its own mean and variance), which equals one forward per
  query and is faster.
* ``"running"``: eval-mode batch norm with the running statistics gathered during training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Norm",
    "NORM_MODES",
    "compose_series",
    "deformation_series",
    "deforms",
    "generate_series",
    "grouped_batch_statistics",
    "series_batch_statistics",
    "transfer_frame",
]

Norm = Literal["series", "running"]
NORM_MODES: tuple[str, ...] = get_args(Norm)


@contextmanager
def series_batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Batch norms of ``model`` normalise with batch statistics without updating running statistics."""
    modules = list(model.modules())
    training = [module.training for module in modules]
    norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [module.momentum for module in norms]
    try:
        model.eval()
        for module in norms:
            module.train()
            module.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        yield model
    finally:
        for module, flag in zip(modules, training):
            module.training = flag
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum


def _grouped_batch_norm(module: nn.modules.batchnorm._BatchNorm, group: int):
    """A forward for ``module`` that normalises each group of ``group`` consecutive samples by its own
    batch statistics (biased variance, as batch norm in training mode), leaving running statistics alone."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % group:
            raise ValueError(f"a batch of {x.shape[0]} is not a whole number of series of {group} frames")
        series, channels = x.shape[0] // group, x.shape[1]
        # (S*N, C, ...) -> (N, S*C, ...): each series' channels become channels of their own, so the
        # native (fused) batch norm computes the statistics of every series separately.
        grouped = (
            x.reshape(series, group, channels, *x.shape[2:])
            .transpose(0, 1)
            .reshape(group, series * channels, *x.shape[2:])
        )
        weight = None if module.weight is None else module.weight.repeat(series)
        bias = None if module.bias is None else module.bias.repeat(series)
        out = F.batch_norm(grouped, None, None, weight, bias, training=True, momentum=0.0, eps=module.eps)
        return out.reshape(group, series, channels, *x.shape[2:]).transpose(0, 1).reshape(x.shape)

    return forward


@contextmanager
def grouped_batch_statistics(model: nn.Module, group: int) -> Iterator[nn.Module]:
    """Like :func:`series_batch_statistics`, with statistics per group of ``group`` consecutive samples."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for module in norms:
            module.forward = _grouped_batch_norm(module, group)
        yield model
    finally:
        for module in norms:
            del module.forward  # back to the class's forward


@torch.no_grad()
def generate_series(
    generator: nn.Module,
    images: torch.Tensor,
    num_bins: int,
    norm: Norm = "series",
) -> torch.Tensor:
    """Series of ``images`` (B, C, H, W) for the target bins 0..N-1: tensor (B, N, C, H, W).

    Every bin is generated (with ``norm="series"`` the frames of a series are normalised together,
    so a subset of bins would give other frames); callers that show fewer frames select them after.
    """
    if norm not in NORM_MODES:
        raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
    targets = torch.arange(num_bins, device=images.device)
    frames = targets.numel()
    if norm == "running":
        was_training = generator.training
        generator.eval()
        repeated = images.repeat_interleave(frames, dim=0)
        out = generator(repeated, targets.repeat(images.shape[0]))
        generator.train(was_training)
        return out.reshape(images.shape[0], frames, *out.shape[1:])
    if images.shape[0] == 1:
        with series_batch_statistics(generator):
            return generator(images.expand(frames, *images.shape[1:]), targets)[None]
    was_training = generator.training
    generator.eval()
    try:
        with grouped_batch_statistics(generator, frames):
            repeated = images.repeat_interleave(frames, dim=0)
            out = generator(repeated, targets.repeat(images.shape[0]))
    finally:
        generator.train(was_training)
    return out.reshape(images.shape[0], frames, *out.shape[1:])


def transfer_frame(x: torch.Tensor, generated: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """``clamp(x + generated - reconstruction, -1, 1)``: the generator's change applied to the source.

    ``generated`` = G(x, b_t), ``reconstruction`` = G(x, b_src) (any broadcastable shapes). Where the
    change is zero the source comes back exactly (the ``transfer`` composition).
    """
    return torch.clamp(x + (generated - reconstruction), -1.0, 1.0)


def deforms(generator: nn.Module | None) -> bool:
    """True for a deformation explainer (its output is a displacement field, not an image)."""
    return getattr(getattr(generator, "module", generator), "output", "image") == "deformation"


def deformation_series(
    generator: nn.Module,
    images: torch.Tensor,
    fields: torch.Tensor,
    source_bins: torch.Tensor | Sequence[int],
    alpha: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of a deformation explainer's series and their grid displacements.

    ``images`` (B, C, H, W); ``fields`` (B, N, F, h, w) = G(x, b) for every bin; ``source_bins`` (B,);
    ``alpha`` (B, N) scales each frame's change (None: 1). Returns frames (B, N, C, H, W), each the
    source warped from its own bin's field to the frame's (the source itself at b_src), and the
    displacements (B, N, 2, h, w) in grid pixels.
    """
    generator = getattr(generator, "module", generator)
    batch, count = fields.shape[:2]
    source_bins = torch.as_tensor(source_bins, device=fields.device).long().reshape(-1)
    source_fields = fields[torch.arange(batch, device=fields.device), source_bins]  # (B, F, h, w)
    flat = fields.flatten(0, 1)
    repeated = source_fields.repeat_interleave(count, dim=0)
    frames, ddf = generator.compose(
        images.repeat_interleave(count, dim=0), flat, repeated, None if alpha is None else alpha.reshape(-1)
    )
    frames = frames.reshape(batch, count, *images.shape[1:])
    is_source = torch.arange(count, device=fields.device)[None, :] == source_bins[:, None]
    frames = torch.where(is_source[:, :, None, None, None], images[:, None].expand_as(frames), frames)
    return frames, ddf.reshape(batch, count, *ddf.shape[1:])


def compose_series(
    images: torch.Tensor,
    series: torch.Tensor,
    source_bins: torch.Tensor | Sequence[int],
    composition: str = "generated",
    generator: nn.Module | None = None,
) -> torch.Tensor:
    """Frames of a series as the explainer's ``composition`` defines them.

    ``images`` (B, C, H, W), ``series`` (B, N, C, H, W) = G(x, b) for every bin b = 0..N-1,
    ``source_bins`` (B,). ``generated`` returns ``series``; ``transfer`` returns
    x + G(x, b) - G(x, b_src), whose frame at b_src is x exactly. A deformation explainer
    (``generator`` given, :func:`deforms`) warps x instead (:func:`deformation_series`).
    """
    if deforms(generator):
        return deformation_series(generator, images, series, source_bins)[0]
    if composition == "generated":
        return series
    if composition != "transfer":
        raise ValueError(f"composition must be 'generated' or 'transfer', got {composition!r}")
    source_bins = torch.as_tensor(source_bins, device=series.device).long().reshape(-1)
    reconstruction = series[torch.arange(series.shape[0], device=series.device), source_bins]  # (B, C, H, W)
    frames = transfer_frame(images[:, None], series, reconstruction[:, None])
    is_source = torch.arange(series.shape[1], device=series.device)[None, :] == source_bins[:, None]
    return torch.where(is_source[:, :, None, None, None], images[:, None].expand_as(frames), frames)
