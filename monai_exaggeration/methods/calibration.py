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
    targets = targets.double()
    source_scores = source_scores.double()
    count = targets.numel()
    everything = torch.arange(count)
    start = torch.ones(count, dtype=torch.float64) if start is None else start.double().clamp(0.0, upper)
    rounds = 0
    if raw_scores is None:
        raw_scores = score(everything, start.float()).double()
        rounds += 1
    raw_scores = raw_scores.double()
    direction = torch.sign(targets - source_scores)
    direction[direction == 0] = 1.0

    def gap(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Signed distance past the target, in the direction of travel (>= 0: at or beyond it)."""
        return direction[rows] * (values - targets[rows])

    # bracket [low, high]: gap(low) < 0 <= gap(high)
    low_a, low_s = torch.zeros(count, dtype=torch.float64), source_scores.clone()
    high_a, high_s = start.clone(), raw_scores.clone()
    best_a, best_s = start.clone(), raw_scores.clone()
    short = (gap(raw_scores, everything) < 0) & (start < upper)  # the first guess stops short: try the bound
    low_a[short], low_s[short] = start[short], raw_scores[short]
    if short.any():
        rows = everything[short]
        far = score(rows, torch.full((rows.numel(),), float(upper))).double()
        rounds += 1
        high_a[rows], high_s[rows] = float(upper), far
        closer = (far - targets[rows]).abs() < (best_s[rows] - targets[rows]).abs()
        best_a[rows] = torch.where(closer, torch.full_like(far, float(upper)), best_a[rows])
        best_s[rows] = torch.where(closer, far, best_s[rows])
    bracketed = gap(high_s, everything) >= 0
    if bracketed.any():  # a source already at or past its target: the bracket starts at 0
        at_source = bracketed & (gap(low_s, everything) >= 0)
        best_a[at_source], best_s[at_source] = 0.0, source_scores[at_source]
    done = ((best_s - targets).abs() <= tolerance / 2) | ~bracketed
    side = torch.zeros(count, dtype=torch.long)  # Illinois: which end stayed twice in a row
    for _ in range(max_rounds):
        rows = everything[~done]
        if rows.numel() == 0:
            break
        low_g, high_g = gap(low_s[rows], rows), gap(high_s[rows], rows)
        span = high_a[rows] - low_a[rows]
        weight_low = torch.where(side[rows] == -1, 0.5, 1.0)  # halve the stale end's gap
        weight_high = torch.where(side[rows] == 1, 0.5, 1.0)
        denominator = high_g * weight_high - low_g * weight_low
        fraction = torch.where(denominator.abs() > 1e-12, -low_g * weight_low / denominator, torch.full_like(span, 0.5))
        fraction = fraction.clamp(0.05, 0.95)
        alpha = low_a[rows] + fraction * span
        values = score(rows, alpha.float()).double()
        rounds += 1
        past = gap(values, rows) >= 0
        high_a[rows] = torch.where(past, alpha, high_a[rows])
        high_s[rows] = torch.where(past, values, high_s[rows])
        low_a[rows] = torch.where(past, low_a[rows], alpha)
        low_s[rows] = torch.where(past, low_s[rows], values)
        side[rows] = torch.where(past, torch.ones_like(side[rows]) * -1, torch.ones_like(side[rows]))
        closer = (values - targets[rows]).abs() < (best_s[rows] - targets[rows]).abs()
        best_a[rows] = torch.where(closer, alpha, best_a[rows])
        best_s[rows] = torch.where(closer, values, best_s[rows])
        done[rows] = (best_s[rows] - targets[rows]).abs() <= tolerance / 2
    reached = (best_s - targets).abs() <= tolerance
    return Calibration(best_a.float(), best_s.float(), reached, rounds)
