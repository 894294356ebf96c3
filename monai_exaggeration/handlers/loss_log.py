"""The training loss log's schedule: which iterations MONAI's ``StatsHandler`` and
``TensorBoardStatsHandler`` log."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine

__all__ = ["log_filter", "log_interval_for"]


def log_interval_for(log_interval: int, max_iterations: int | None = None) -> int:
    """The loss log's interval: ``log_interval``, but at least 10 lines in a run of ``max_iterations``."""
    interval = max(1, int(log_interval))
    if max_iterations:
        interval = min(interval, max(1, int(max_iterations) // 10))
    return interval


def log_filter(log_interval: int, max_iterations: int | None = None) -> Callable[[Engine, int], bool]:
    """``iteration_log`` filter of MONAI's ``StatsHandler``/``TensorBoardStatsHandler``: every
    :func:`log_interval_for` iterations and at the run's last iteration (``max_iterations``, or where a
    trainer with ``final_iteration`` stops, e.g. at its time budget).

    ``max_iterations`` defaults to the engine's own ``max_iterations`` (the explainer's trainer defines
    it), read when the filter is called, so the stop is set in one place.
    """

    def should_log(engine: Engine, event: int) -> bool:
        if getattr(engine, "final_iteration", False):
            return True
        last = max_iterations if max_iterations is not None else getattr(engine, "max_iterations", None)
        return event % log_interval_for(log_interval, last) == 0 or (last is not None and event >= last)

    return should_log
