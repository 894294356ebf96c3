"""Generate exaggeration series: one query image repeated with target bins 0..N-1.

Normalisation statistics at inference are an explicit choice (``norm``):

* ``"series"`` (default, as the original work): batch norm uses the statistics of the series'
  own frames, i.e. each query is one batch of its N frames, so the frames of a series share
  normalisation and a series never depends on other images. Running statistics are not changed.
* ``"running"``: eval-mode batch norm with the running statistics gathered during training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["NORM_MODES", "generate_series", "series_batch_statistics"]

NORM_MODES = ("series", "running")


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


@torch.no_grad()
def generate_series(
    generator: nn.Module,
    images: torch.Tensor,
    num_bins: int,
    bins: Sequence[int] | None = None,
    norm: str = "series",
) -> torch.Tensor:
    """Series of ``images`` (B, C, H, W) for ``bins`` (default 0..N-1): tensor (B, K, C, H, W)."""
    if norm not in NORM_MODES:
        raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
    targets = torch.as_tensor(list(range(num_bins)) if bins is None else list(bins), device=images.device)
    frames = targets.numel()
    if norm == "running":
        was_training = generator.training
        generator.eval()
        repeated = images.repeat_interleave(frames, dim=0)
        out = generator(repeated, targets.repeat(images.shape[0]))
        generator.train(was_training)
        return out.reshape(images.shape[0], frames, *images.shape[1:])
    with series_batch_statistics(generator):
        series = [generator(image[None].expand(frames, *image.shape), targets) for image in images]
    return torch.stack(series)
