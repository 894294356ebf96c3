"""Calibrated series: scale each frame's change until the classifier scores the frame at its bin centre.

A generator's raw series is often compressed (frames labelled 0.05 … 0.95 scoring 0.09 … 0.90).
Latent Shift hits its labels because it searches its shift λ per frame; the explainer can borrow
that: frame k is made with its change scaled by a strength α_k (the displacement of the
deformation explainer, the residual G(x, b_k) − G(x, b_src) of the image explainer), and α_k is
searched so that f(frame_k(α_k)) is the bin centre c_k.

:func:`calibrate_strengths` searches every frame of a batch at once: each round builds and scores
the frames that are not yet on target in one batch. The score along α is taken to move from the
source's score at α = 0 towards the target; the search brackets the target between 0, the raw
frame (α = 1) and ``upper``, then narrows the bracket by false position with the Illinois
correction (bisection where that stalls). A target beyond what α = ``upper`` reaches is not reached:
that frame keeps α = ``upper`` (the closest it can get) and is marked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Calibration", "calibrate_strengths"]

ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Calibration:
    """The result for M frames: strengths ``alpha`` (M,), the frames' ``scores`` (M,) at those strengths,
    ``reached`` (M,) bool (score within ``tolerance`` of its target) and the number of scoring rounds."""

    alpha: torch.Tensor
    scores: torch.Tensor
    reached: torch.Tensor
    rounds: int


class _Search:
    """The state of one calibration: per frame the bracket [low, high] (gap(low) < 0 <= gap(high)) and the
    strength whose score came closest to the target so far."""

    def __init__(self, targets: torch.Tensor, source_scores: torch.Tensor, start: torch.Tensor, raw: torch.Tensor):
        self.targets = targets
        self.direction = torch.sign(targets - source_scores)
        self.direction[self.direction == 0] = 1.0
        self.low_a, self.low_s = torch.zeros_like(start), source_scores.clone()
        self.high_a, self.high_s = start.clone(), raw.clone()
        self.best_a, self.best_s = start.clone(), raw.clone()
        self.side = torch.zeros(targets.numel(), dtype=torch.long)  # Illinois: which end stayed last time
        self.rounds = 0

    def gap(self, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Signed distance past the target, in the direction of travel (>= 0: at or beyond it)."""
        return self.direction[rows] * (values - self.targets[rows])

    def keep_best(self, rows: torch.Tensor, alpha: torch.Tensor, values: torch.Tensor) -> None:
        closer = (values - self.targets[rows]).abs() < (self.best_s[rows] - self.targets[rows]).abs()
        self.best_a[rows] = torch.where(closer, alpha, self.best_a[rows])
        self.best_s[rows] = torch.where(closer, values, self.best_s[rows])

    def bracket(self, score: ScoreFunction, start: torch.Tensor, upper: float) -> torch.Tensor:
        """Frames whose first guess stops short are scored at ``upper``; returns which frames are bracketed."""
        everything = torch.arange(self.targets.numel())
        short = (self.gap(self.high_s, everything) < 0) & (start < upper)
        self.low_a[short], self.low_s[short] = start[short], self.high_s[short]
        if short.any():
            rows = everything[short]
            bound = torch.full((rows.numel(),), float(upper), dtype=torch.float64)
            far = score(rows, bound.float()).double()
            self.rounds += 1
            self.high_a[rows], self.high_s[rows] = bound, far
            self.keep_best(rows, bound, far)
        return self.gap(self.high_s, everything) >= 0

    def narrow(self, score: ScoreFunction, rows: torch.Tensor) -> None:
        """One round of false position (Illinois weights, clamped away from the bracket's ends) for ``rows``."""
        low_g, high_g = self.gap(self.low_s[rows], rows), self.gap(self.high_s[rows], rows)
        span = self.high_a[rows] - self.low_a[rows]
        weight_low = torch.where(self.side[rows] == -1, 0.5, 1.0)  # halve the stale end's gap
        weight_high = torch.where(self.side[rows] == 1, 0.5, 1.0)
        denominator = high_g * weight_high - low_g * weight_low
        fraction = torch.where(denominator.abs() > 1e-12, -low_g * weight_low / denominator, torch.full_like(span, 0.5))
        alpha = self.low_a[rows] + fraction.clamp(0.05, 0.95) * span
        values = score(rows, alpha.float()).double()
        self.rounds += 1
        past = self.gap(values, rows) >= 0
        self.high_a[rows] = torch.where(past, alpha, self.high_a[rows])
        self.high_s[rows] = torch.where(past, values, self.high_s[rows])
        self.low_a[rows] = torch.where(past, self.low_a[rows], alpha)
        self.low_s[rows] = torch.where(past, self.low_s[rows], values)
        self.side[rows] = torch.where(past, -torch.ones_like(self.side[rows]), torch.ones_like(self.side[rows]))
        self.keep_best(rows, alpha, values)


def calibrate_strengths(
    score: ScoreFunction,
    targets: torch.Tensor,
    source_scores: torch.Tensor,
    raw_scores: torch.Tensor | None = None,
    upper: float = 2.0,
    tolerance: float = 0.02,
    max_rounds: int = 12,
    start: torch.Tensor | None = None,
) -> Calibration:
    """Strengths α in [0, ``upper``] that bring each frame's score to its target.

    Args:
        score: ``score(index, alpha)`` -> the scores (m,) of frames ``index`` (m,) made with strengths
            ``alpha`` (m,); called once per round with every frame still searched.
        targets: (M,) the bin centres.
        source_scores: (M,) f of each frame's source (the score at α = 0).
        raw_scores: (M,) the scores at the first guess if already known (else computed in the first round).
        upper: the largest strength tried.
        tolerance: a frame within this distance of its target is done (and ``reached``).
        max_rounds: rounds of narrowing after the bracket is found.
        start: (M,) the first guess (default 1: the raw frame), e.g. a search made on a cheaper proxy.
    """
    if upper < 1.0:
        raise ValueError(f"the calibration bound must be >= 1 (1 is the raw frame), got {upper}")
    targets, source_scores = targets.double(), source_scores.double()
    count = targets.numel()
    everything = torch.arange(count)
    start = torch.ones(count, dtype=torch.float64) if start is None else start.double().clamp(0.0, upper)
    fresh = raw_scores is None
    raw = score(everything, start.float()).double() if fresh else raw_scores.double()
    search = _Search(targets, source_scores, start, raw)
    search.rounds += int(fresh)
    bracketed = search.bracket(score, start, upper)
    at_source = bracketed & (search.gap(search.low_s, everything) >= 0)  # a source already at its target
    search.best_a[at_source], search.best_s[at_source] = 0.0, source_scores[at_source]
    done = ((search.best_s - targets).abs() <= tolerance / 2) | ~bracketed
    for _ in range(max_rounds):
        rows = everything[~done]
        if rows.numel() == 0:
            break
        search.narrow(score, rows)
        done[rows] = (search.best_s[rows] - targets[rows]).abs() <= tolerance / 2
    reached = (search.best_s - targets).abs() <= tolerance
    return Calibration(search.best_a.float(), search.best_s.float(), reached, search.rounds)
