"""The training log in iterations of the whole run: ``iteration 40/1391: d_loss 0.5123 ...``.

MONAI's ``StatsHandler`` counts epochs and iterations per epoch (``Epoch: 2/5000, Iter: 5/20``), and
ignite's engine announces every run as ``Engine run resuming from iteration 0, epoch 0 until 5000
epochs``; for a trainer that stops at ``max_iterations`` both say the wrong thing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["TrainingLog"]

#: ignite's per-run and per-epoch lines, which count epochs (dropped from the engine's logger).
_EPOCH_LINES = re.compile(r"^(Engine run (resuming from|starting with)|Epoch\[\d+\] Complete\.)")
#: a validation's own start/end lines, which the validation line replaces.
_VALIDATION_LINES = re.compile(r"^(Engine run finished\.|Got new best metric of)")


class _DropEpochLines(logging.Filter):
    def __init__(self, validation: bool) -> None:
        super().__init__()
        self.validation = validation

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (_EPOCH_LINES.match(message) or (self.validation and _VALIDATION_LINES.match(message)))


def _total(engine: Engine) -> int | None:
    """The run's last iteration: the engine's ``max_iterations``, else its epochs x epoch length."""
    total = getattr(engine, "max_iterations", None)
    if total is None and engine.state.max_epochs and engine.state.epoch_length:
        total = engine.state.max_epochs * engine.state.epoch_length
    return None if total is None else int(total)


def _position(engine: Engine) -> str:
    total = _total(engine)
    return f"{engine.state.iteration}/{total}" if total else str(engine.state.iteration)


def _numbers(values: dict) -> str:
    shown = []
    for key in sorted(values):
        try:
            shown.append(f"{key} {float(values[key]):.4f}")
        except (TypeError, ValueError):
            continue  # tensors with more than one value, strings: not a log figure
    return ", ".join(shown)


class TrainingLog:
    """Console log of a training run in the run's iterations (``max_iterations``), in place of MONAI's
    ``StatsHandler``; attached to the trainer or, with ``trainer``, to its validation evaluator.

    On the trainer: at each iteration ``iteration_log`` selects, a line
    ``iteration 40/1391: d_loss 0.5123, g_loss 3.2100, ...`` (the scalar entries of the transformed
    output). On a validation evaluator: after each validation a line
    ``validation at iteration 100/1391: val_validity 0.6082 (best so far), val_mae 0.3918, ...``.
    Either way ignite's lines that count epochs (``Engine run resuming from iteration 0, epoch 0 until
    5000 epochs``, ``Epoch[1] Complete``) are dropped from the engine's log (and, on an evaluator, its
    ``Engine run finished`` and ``Got new best metric`` lines, which the validation line says); where a
    run starts is said by :func:`~monai_exaggeration.engines.attach_resume`.

    Args:
        iteration_log: on a trainer, whether (``bool``) or when (a filter ``(engine, iteration) -> bool``,
            e.g. :func:`~monai_exaggeration.handlers.log_filter`) to log an iteration.
        trainer: for a validation evaluator: the trainer whose iteration a validation line names.
        name: the logger (default ``monai_exaggeration.training``).
        output_transform: maps ``engine.state.output`` to a dict of scalars (MONAI's convention; default:
            the output as it is).
    """

    def __init__(
        self,
        iteration_log: bool | Callable[[Engine, int], bool] = True,
        trainer: Engine | None = None,
        name: str = "monai_exaggeration.training",
        output_transform: Callable[[Any], Any] = lambda output: output,
    ) -> None:
        self.iteration_log = iteration_log
        self.trainer = trainer
        self.logger = logging.getLogger(name)
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        if not any(isinstance(item, _DropEpochLines) for item in engine.logger.filters):
            engine.logger.addFilter(_DropEpochLines(validation=self.trainer is not None))
        if self.trainer is not None:
            engine.add_event_handler(Events.COMPLETED, self._validation)
        elif callable(self.iteration_log):
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self.iteration_log), self._iteration)
        elif self.iteration_log:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _iteration(self, engine: Engine) -> None:
        output = self.output_transform(engine.state.output)
        values = output if isinstance(output, dict) else {"loss": output}
        self.logger.info("iteration %s: %s", _position(engine), _numbers(values))

    def _validation(self, engine: Engine) -> None:
        metrics = dict(engine.state.metrics)
        key = getattr(engine.state, "key_metric_name", None)
        text = _numbers(metrics)
        if key in metrics:
            value = float(metrics[key])
            best = getattr(engine.state, "best_metric", None)
            if best is not None and best != -1 and abs(float(best) - value) <= 1e-12:
                text = text.replace(f"{key} {value:.4f}", f"{key} {value:.4f} (best so far)", 1)
        self.logger.info("validation at iteration %s: %s", _position(self.trainer), text)
