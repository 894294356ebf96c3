"""The validation series' montage: a grid of the first validation images' series, to TensorBoard and a PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_exaggeration.handlers.writing import writes_files
from monai_exaggeration.utils import atomic_write

__all__ = ["SeriesMontageLogger", "series_montage"]


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
        self,
        summary_writer: Any = None,
        output_dir: str | None = None,
        trainer: Engine | None = None,
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
