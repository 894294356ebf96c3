"""Stream inputs through a MONAI ``DataLoader``: worker processes read and preprocess, the caller computes.

:func:`stream_inputs` yields ``(index, record, item)`` in input order, one input at a time, with at
most ``num_workers * prefetch`` inputs read ahead, so memory stays flat however many inputs there
are. A file that cannot be read never stops the stream: its ``item`` is a :class:`LoadFailure` with
the same message the one-by-one path gives (``errors.csv``). The caller groups items into model
batches (:func:`batches`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import DataLoader, Dataset

from monai_exaggeration.errors import CXRInputError

__all__ = [
    "ERROR_COLUMNS",
    "LoadFailure",
    "batches",
    "compute_threads",
    "default_workers",
    "failure_row",
    "reader_options",
    "stream_inputs",
]


@dataclass
class LoadFailure:
    """Why one input could not be read: ``error`` is what went wrong, ``hint`` what to do."""

    error: str
    hint: str
    exception: str = ""

    @classmethod
    def from_exception(cls, error: BaseException) -> LoadFailure:
        if isinstance(error, CXRInputError):
            return cls(error.problem, error.hint, "CXRInputError")
        if isinstance(error, ValueError):
            return cls(str(error), "check the input image and the settings", type(error).__name__)
        return cls(
            f"{type(error).__name__}: {error}",
            "unexpected failure; rerun with this file alone and report the log if it persists",
            type(error).__name__,
        )


#: Columns of every ``errors.csv`` (inference, classify, evaluation): one row per input that failed.
ERROR_COLUMNS = ["source", "error", "hint"]


def failure_row(path: str, error: BaseException | LoadFailure) -> dict:
    """One row of ``errors.csv``: the input, what is wrong and what to do."""
    failure = error if isinstance(error, LoadFailure) else LoadFailure.from_exception(error)
    return {"source": str(path), "error": failure.error, "hint": failure.hint}


class _Guarded:
    """``load(record["image"])``, or the :class:`LoadFailure` of the exception it raised (picklable)."""

    def __init__(self, load: Callable[[str], Any]) -> None:
        self.load = load

    def __call__(self, record: dict) -> Any:
        try:
            return self.load(record["image"])
        except Exception as error:  # noqa: BLE001 - one bad file must not stop the stream
            return LoadFailure.from_exception(error)


def default_workers() -> int:
    """Reader processes: one per CPU beyond two, at most 4. On 1 or 2 CPUs none: the models need both
    cores, and a reader process there made a compute-bound inference run 15 % slower (measured)."""
    return max(0, min(4, _cpus() - 2))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def compute_threads(num_workers: int | None, device: torch.device | str = "cpu") -> Iterator[int]:
    """While reader processes run, CPU compute uses the cores they leave, plus one: readers are single
    threaded and mostly wait on a full prefetch queue, so taking a whole core from the compute for
    them halves a compute-bound run on 2 cores (measured); more readers than that would make
    OpenMP threads spin against each other."""
    workers = default_workers() if num_workers is None else max(0, int(num_workers))
    before = torch.get_num_threads()
    if workers and torch.device(device).type == "cpu":
        torch.set_num_threads(max(1, min(before, _cpus() - workers + 1)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a reader is one process on one core: no OpenMP oversubscription


def _as_is(items: list) -> Any:
    return items[0]


def reader_options(num_workers: int | None, prefetch: int = 2) -> dict[str, Any]:
    """``DataLoader`` options for ``num_workers`` reader processes (None: :func:`default_workers`; 0 reads
    in this process), each one thread, ``prefetch`` items ahead; inputs stay in order."""
    workers = default_workers() if num_workers is None else max(0, int(num_workers))
    options: dict[str, Any] = {"shuffle": False, "num_workers": workers}
    if workers:
        options.update(prefetch_factor=max(1, int(prefetch)), worker_init_fn=_one_thread, persistent_workers=False)
    return options


def stream_inputs(
    records: Sequence[dict], load: Callable[[str], Any], num_workers: int | None = None, prefetch: int = 2
) -> Iterator[tuple[int, dict, Any]]:
    """``(index, record, load(record["image"]) or LoadFailure)`` for every record, in order.

    ``load`` runs in ``num_workers`` worker processes (default :func:`default_workers`; 0 reads in
    this process); it must be picklable (a module-level function or object).
    """
    dataset = Dataset(list(records), transform=_Guarded(load))
    loader = DataLoader(dataset, batch_size=1, collate_fn=_as_is, **reader_options(num_workers, prefetch))
    for index, item in enumerate(loader):
        yield index, records[index], item


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` items (the last may be shorter)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group
