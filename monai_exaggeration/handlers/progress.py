"""Progress of long loops (a bar on a terminal, log lines otherwise) and of a whole training run."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ignite.engine import Engine, Events

__all__ = ["Progress", "TrainingProgress"]

logger = logging.getLogger("monai_exaggeration.handlers")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress of a long loop: a tqdm bar when ``stream`` is a terminal, else log lines.

    Without a terminal (a log file, ``nohup``, CI) a line ``DESC: 512/3550 images (14 %), 35.1 images/s,
    about 1 min 27 s left`` is logged every ``every`` items (if given) or every ``seconds`` seconds,
    whichever comes first, and once at ``close()`` if any line was logged. ``terminal`` forces either.

    Args:
        total: the number of items of the whole loop.
        desc: the name shown before the counts.
        unit: the items' unit (``it``, ``images``, ...).
        initial: items already done (a resumed loop).
        every: log a line every this many items (no terminal), besides every ``seconds``.
        seconds: log a line at least this often (no terminal).
        stream: where the bar goes; default ``sys.stderr``.
        terminal: force a bar (True) or log lines (False); default: a bar when ``stream`` is a terminal.
        log: the logger of the lines; default ``monai_exaggeration.handlers``.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        every: int | None = None,
        seconds: float = 30.0,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        if terminal is None:
            terminal = bool(getattr(stream, "isatty", lambda: False)())
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self.initial = int(initial)
        self.every, self.seconds = every, float(seconds)
        self.log = log or logger
        self.start = self.last_time = time.perf_counter()
        self.last_n = self.n
        self.lines = 0
        self.bar = None
        if terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        due_items = self.every is not None and self.n - self.last_n >= self.every
        if due_items or now - self.last_time >= self.seconds:
            self._log_line(now, postfix)

    def _log_line(self, now: float, postfix: dict[str, Any] | None = None) -> None:
        done, elapsed = self.n - self.initial, now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.2f} s/{self.unit}"
        left = f", about {_duration((self.total - self.n) / rate)} left" if rate > 0 and self.n < self.total else ""
        extra = "".join(
            f", {key} {value:.4g}" if isinstance(value, float) else f", {key} {value}"
            for key, value in (postfix or {}).items()
        )
        self.log.info("%s: %d/%d %s%s, %s%s%s", self.desc, self.n, self.total, self.unit, share, speed, left, extra)
        self.last_time, self.last_n = now, self.n
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and self.n != self.last_n:
            self._log_line(time.perf_counter())


class TrainingProgress:
    """Progress over the whole training run, iterations 0..``max_iterations`` (resumed runs start where
    their checkpoint left off), not per epoch: a tqdm bar on a terminal (with ``d_loss``/``g_loss``),
    otherwise a log line every ``seconds`` seconds with the speed and the time left.

    Args:
        max_iterations: the run's last iteration; default the engine's ``max_iterations`` (the
            explainer's trainer defines it), so the stop is set in one place.
        seconds: without a terminal, log a line every this many seconds.
        stream: where the bar goes; default ``sys.stderr``.
        terminal: force a bar (True) or log lines (False); default: a bar when ``stream`` is a terminal.
        keys: the entries of the (transformed) output shown with the progress.
        output_transform: maps ``engine.state.output`` to a dict holding ``keys`` (MONAI's convention;
            default: the output as it is).
    """

    def __init__(
        self,
        max_iterations: int | None = None,
        seconds: float = 30.0,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        keys: tuple[str, ...] = ("d_loss", "g_loss"),
        output_transform: Callable[[Any], Any] = lambda output: output,
    ) -> None:
        self.max_iterations = None if max_iterations is None else int(max_iterations)
        self.seconds, self.stream, self.terminal, self.keys = seconds, stream, terminal, tuple(keys)
        self.output_transform = output_transform
        self.progress: Progress | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def total(self, engine: Engine) -> int:
        """The run's last iteration: ``max_iterations``, else the engine's, else the engine's epochs x epoch length."""
        total = self.max_iterations if self.max_iterations is not None else getattr(engine, "max_iterations", None)
        if total is None:
            state = engine.state
            total = (state.max_epochs or 0) * (state.epoch_length or 0)
        return int(total)

    def _update(self, engine: Engine) -> None:
        if self.progress is None:  # created at the first iteration: a resumed run's iteration is known by then
            self.progress = Progress(
                max(self.total(engine), engine.state.iteration),
                "training",
                unit="it",
                initial=engine.state.iteration - 1,
                seconds=self.seconds,
                stream=self.stream,
                terminal=self.terminal,
            )
        output = self.output_transform(engine.state.output)
        output = output if isinstance(output, dict) else {}
        self.progress.update(1, **{key: float(output[key]) for key in self.keys if key in output})

    def _close(self, engine: Engine) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
