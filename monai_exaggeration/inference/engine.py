"""The one batch loop: a MONAI ``Evaluator`` that turns batches of sources into typed series results.

Every caller that explains a set of sources runs :class:`SeriesEngine`: the inference (its
:class:`~.evaluator.InferenceEvaluator` hands each result to the writers), the evaluation (its
measures are a sink) and the faithfulness checks (a sink that keeps the series). The DICOM node
explains one source at a time through :meth:`~.inferer.SeriesInferer.explain`, which runs the same
batch step.

Each iteration takes a batch of :func:`~.dataset.source_loader` and explains its readable sources
together (:meth:`~.inferer.SeriesInferer.explain_batch`); ``engine.state.output`` is the batch's
list of :class:`Explained`, in input order. A *sink* is any callable taking one :class:`Explained`;
the engine calls its sinks for every source after each iteration (on ``ITERATION_COMPLETED``), so
ignite/MONAI handlers attached to the engine see the same results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ignite.engine import Events
from monai.engines import Evaluator

from monai_exaggeration.data.streaming import LoadFailure, compute_threads
from monai_exaggeration.inference.dataset import SourceDataset, source_loader
from monai_exaggeration.inference.inferer import SeriesInferer
from monai_exaggeration.inference.results import SeriesResult

__all__ = ["Explained", "SeriesEngine", "SeriesSink"]


@dataclass
class Explained:
    """One source after the batch step: its record, what the reader loaded, and the outcome.

    ``outcome`` is the :class:`~.results.SeriesResult`, the exception that source raised, or the
    reader's ``LoadFailure``; ``seconds`` is the source's share of the batch's time; ``started``
    is when its batch step began (``time.perf_counter``)."""

    record: dict
    item: Any
    outcome: SeriesResult | Exception | LoadFailure
    seconds: float
    started: float

    @property
    def ok(self) -> bool:
        """Whether the source's series was made."""
        return isinstance(self.outcome, SeriesResult)

    @property
    def path(self) -> str:
        return str(self.record["image"])


#: What the engine feeds every result to.
SeriesSink = Callable[[Explained], Any]


class SeriesEngine(Evaluator):
    """Explain every source of ``dataset`` with ``inferer`` and feed each result to ``sinks`` (module docstring).

    Args:
        inferer: the :class:`~.inferer.SeriesInferer` (prepared here); its ``sources_per_batch()`` and
            ``num_workers`` set the data loader's.
        dataset: a :class:`~.dataset.SourceDataset`; it is bound to the inferer's preprocessing.
        sinks: callables given each :class:`Explained`, in input order.
        val_handlers: extra ignite/MONAI handlers attached to this engine.
        device: the device of the engine state (the inferer's own device is used for the models).
    """

    def __init__(
        self,
        inferer: SeriesInferer,
        dataset: SourceDataset,
        sinks: Sequence[SeriesSink] = (),
        val_handlers: Sequence | None = None,
        device: Any = None,
    ) -> None:
        self.inferer = inferer.prepare()
        self.dataset = dataset
        self.dataset.use(self.inferer.reading)
        self.batch_size = self.inferer.sources_per_batch()
        self.sinks = list(sinks)
        super().__init__(
            device=device or self.inferer.device,
            val_data_loader=source_loader(self.dataset, self.batch_size, self.inferer.num_workers),
            decollate=False,
            val_handlers=val_handlers,
        )
        self.logger.setLevel(logging.WARNING)  # ignite's "Epoch[1] Complete": the callers' progress lines say more
        self.add_event_handler(Events.ITERATION_COMPLETED, self._feed_sinks)

    def _iteration(self, engine: Any, batch: list[tuple[dict, Any]]) -> list[Explained]:
        started = time.perf_counter()
        return [Explained(*step, started) for step in self.inferer.explain_batch(batch)]

    def _feed_sinks(self, engine: Any) -> None:
        for explained in engine.state.output:
            for sink in self.sinks:
                sink(explained)

    def run(self) -> None:  # type: ignore[override]
        """Explain every source (nothing to do for an empty dataset), with the inferer's thread settings."""
        with compute_threads(self.inferer.num_workers, self.inferer.device):
            if len(self.dataset):
                super().run()
