"""Progressive exaggeration (Singla et al., ICLR 2020) as a :class:`~.base.SeriesMethod`: one forward of
the conditional generator per series, G(x, b) for every bin b (docs/method.md).

Two kinds of explainer file are run here: an image generator (the frame is the source plus the
generator's change, ``composition``) and a deformation generator (the frame is the source warped
from its own bin's field to the target bin's, :mod:`monai_exaggeration.networks.deformation`).
With ``calibrate`` (the default) each frame's change is scaled by a strength α found so that the
classifier scores the frame at its bin centre (:mod:`.calibration`); the generator still runs once per
series, the search only re-scores scaled frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_exaggeration.binning import bin_centre
from monai_exaggeration.methods.base import MethodSeries
from monai_exaggeration.methods.calibration import calibrate_strengths
from monai_exaggeration.methods.registry import MethodContext, register_method
from monai_exaggeration.methods.series import compose_series, deforms, generate_series
from monai_exaggeration.networks.classifier import classifier_fingerprint
from monai_exaggeration.networks.deformation import jacobian_determinant, upsample_displacement
from monai_exaggeration.networks.explainer_file import load_explainer
from monai_exaggeration.utils import file_sha256, for_inference, state_sha256

__all__ = ["ProgressiveExaggeration"]

logger = logging.getLogger("monai_exaggeration.inference")


@register_method
class ProgressiveExaggeration:
    """The trained explainer's generator. ``composition`` and ``norm`` as in the explainer file and
    :func:`~monai_exaggeration.methods.series.generate_series`; ``weights`` identifies the file.

    Args:
        generator: an image generator or a deformation generator (``output = "deformation"``).
        composition: how an image generator's frame is made (``generated`` or ``transfer``).
        norm: batch statistics of a series (``series``) or the running ones (``running``).
        weights: identifies the explainer file (enters ``model_version``).
        classifier: the black box; needed when ``calibrate`` is on.
        calibrate: scale each frame's change so that it scores at its bin centre.
        strength_bound: the largest strength α tried.
        tolerance: a calibrated frame within this distance of its bin centre counts as reached.
    """

    name = "progressive_exaggeration"
    label = "Exaggeration"
    title = "Progressive exaggeration"
    version_name = "explainer"
    uses_explainer = True

    def __init__(
        self,
        generator: nn.Module,
        composition: str = "generated",
        norm: str = "series",
        weights: str = "",
        classifier: nn.Module | None = None,
        calibrate: bool = False,
        strength_bound: float = 2.0,
        tolerance: float = 0.02,
    ) -> None:
        if calibrate and classifier is None:
            raise ValueError("a calibrated series needs the classifier")
        if strength_bound < 1.0 or not 0.0 < tolerance < 0.5:
            raise ValueError(
                f"strength_bound must be >= 1 and tolerance in (0, 0.5), got {strength_bound} and {tolerance} -- "
                "e.g. method_options {'strength_bound': 2.0, 'tolerance': 0.02}"
            )
        self.generator, self.composition, self.norm, self.weights = generator, composition, norm, weights
        self.classifier, self.calibrate = classifier, bool(calibrate)
        self.strength_bound, self.tolerance = float(strength_bound), float(tolerance)
        config = generator.config() if hasattr(generator, "config") else {}
        #: the explainer file's record (architecture, bins, model size, composition, classifier), or the
        #: in-memory generator's configuration
        self.record: dict[str, Any] = {"num_bins": config.get("num_bins"), "image_size": config.get("image_size")}
        self.explainer_weights: Path | None = None

    @classmethod
    def option_names(cls) -> list[str]:
        """The explainer's ``method_options``: the calibration's ``strength_bound`` and ``tolerance``
        (its other settings are inference keys)."""
        return ["strength_bound", "tolerance"]

    @classmethod
    def build(cls, context: MethodContext) -> ProgressiveExaggeration:
        """The explainer of ``context.explainer_weights`` (architecture from the file's record), or the
        in-memory ``context.generator``; on the device, channels-last, in eval mode."""
        if context.explainer_weights is None and context.generator is None:
            raise ValueError("the inference needs explainer_weights (an explainer file) or an in-memory generator")
        if context.explainer_weights is not None:
            loaded = load_explainer(context.explainer_weights, network=context.generator)
            generator, record, composition = loaded.generator, loaded.record, loaded.composition
            weights = file_sha256(context.explainer_weights)[:12]
        else:
            generator, record, composition = context.generator, None, "generated"
            weights = "unsaved-" + state_sha256(generator)[:12]  # an in-memory generator: its weights enter the UIDs
        generator = for_inference(generator, context.device)
        method = cls(
            generator,
            context.composition or composition,
            context.norm,
            weights,
            classifier=context.classifier,
            calibrate=context.calibrate,
            **context.options,
        )
        if record is not None:
            method.record = dict(record)
            method.explainer_weights = Path(context.explainer_weights)
        trained_for = method.record.get("classifier")
        if trained_for and trained_for != (this_one := classifier_fingerprint(context.classifier)):
            logger.warning(
                "the explainer %s was trained against another classifier (fingerprint %s, this one %s): "
                "its series may not move this classifier as intended",
                method.explainer_weights,
                trained_for,
                this_one,
            )
        return method

    @property
    def num_bins(self) -> int | None:
        return self.record.get("num_bins")

    @property
    def image_size(self) -> int | None:
        return self.record.get("image_size")

    @property
    def output(self) -> str:
        return "deformation" if self.deforms else "image"

    def version_settings(self) -> dict[str, Any]:
        """What enters ``model_version`` beside the common settings (a raw series keeps the version it had
        before calibration existed)."""
        settings = {"norm": self.norm, "composition": self.composition}
        if self.calibrate:
            settings |= {key: value for key, value in self.settings().items() if key not in settings}
        return settings

    def frame_details(self, details: dict, count: int) -> list[str]:
        """The ``method_detail`` column: the calibrated strength α (and whose change it scales, ``limit``
        where the target was not reached); empty for a raw series."""
        if "alpha" not in details:
            return [""] * count
        borrowed = details.get("change_bin") or [None] * count
        own = details.get("bins") or [None] * count
        return [
            f"alpha={v:g}"
            + (f" of bin {b}'s change" if b is not None and o is not None and b != o else "")
            + ("" if ok else " (limit)")
            for v, ok, b, o in zip(details["alpha"], details["reached"], borrowed, own)
        ]

    def describe(self) -> dict[str, str]:
        """Facts for reports."""
        facts = {"explainer weights": str(self.explainer_weights) if self.explainer_weights else "in memory"}
        if self.explainer_weights is not None and self.explainer_weights.is_file():
            facts["explainer sha256"] = self.weights
        return facts

    @property
    def deforms(self) -> bool:
        return deforms(self.generator)

    def weights_id(self) -> str:
        return self.weights

    def settings(self) -> dict[str, Any]:
        settings = {
            "composition": self.composition,
            "norm": self.norm,
            "output": "deformation" if self.deforms else "image",
        }
        if self.calibrate:
            settings |= {"calibrate": True, "strength_bound": self.strength_bound, "tolerance": self.tolerance}
        return settings

    @torch.no_grad()
    def __call__(
        self, inputs: torch.Tensor, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int
    ) -> MethodSeries:
        device = next(iter(self.generator.parameters()), torch.zeros(())).device
        series = generate_series(self.generator, inputs.to(device), num_bins, norm=self.norm).float()  # (B, N, C, h, w)
        if self.deforms:
            return self._deformation(inputs.to(device), series, source_scores, source_bins, bins, num_bins)
        series = series.cpu()
        rows = torch.arange(series.shape[0])
        reconstruction = series[rows, torch.as_tensor(source_bins).long(), 0]  # (B, S, S)
        generated = series[:, bins, 0]  # (B, K, S, S)
        details: list[dict[str, Any]] = [{} for _ in source_bins]
        raw_change = generated - reconstruction[:, None]  # (B, K, S, S): what a strength scales
        chosen = raw_change
        if self.calibrate:
            images = inputs.cpu()[:, 0]
            alpha, change_steps, details = self._search(
                lambda index, a: torch.clamp(
                    images[index // len(bins)] + a.view(-1, 1, 1) * raw_change.flatten(0, 1)[index], -1, 1
                ),
                source_scores,
                source_bins,
                bins,
                num_bins,
            )
            chosen = raw_change[torch.arange(len(source_bins))[:, None], change_steps]  # (B, K, S, S)
            generated = reconstruction[:, None] + alpha[:, :, None, None] * chosen
            series = series.clone()
            series[:, bins, 0] = generated
        frames = compose_series(inputs.cpu(), series, source_bins, self.composition)[:, :, 0]

        def remake(rows: torch.Tensor, steps: torch.Tensor, alpha: torch.Tensor) -> dict[str, torch.Tensor | None]:
            return {"generated": reconstruction[rows] + alpha.view(-1, 1, 1) * chosen[rows, steps]}

        return MethodSeries(
            generated=generated, reconstruction=reconstruction, frames=frames[:, bins], details=details, remake=remake
        )

    def _deformation(
        self,
        inputs: torch.Tensor,
        fields: torch.Tensor,
        source_scores: list[float],
        source_bins: list[int],
        bins: list[int],
        num_bins: int,
    ) -> MethodSeries:
        """Frames, displacements (model pixels) and intensity terms of a deformation explainer's series."""
        generator = getattr(self.generator, "module", self.generator)
        batch, count = inputs.shape[0], len(bins)
        sources = torch.as_tensor(source_bins, device=fields.device).long()
        target_fields = fields[:, bins].flatten(0, 1)  # (B*K, F, h, w)
        source_fields = fields[torch.arange(batch, device=fields.device), sources].repeat_interleave(count, dim=0)
        images = inputs.repeat_interleave(count, dim=0)  # (B*K, 1, S, S)

        def frames_at(index: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
            frame, _ = generator.compose(images[index], target_fields[index], source_fields[index], alpha.to(images))
            return frame[:, 0]

        details: list[dict[str, Any]] = [{} for _ in source_bins]
        alpha = torch.ones(batch, count)
        if self.calibrate:
            alpha, change_steps, details = self._search(frames_at, source_scores, source_bins, bins, num_bins)
            chosen = (torch.arange(batch)[:, None] * count + change_steps).flatten().to(fields.device)
            target_fields = target_fields[chosen]  # a frame that borrows a further frame's change takes its field
        is_source = torch.as_tensor([[b == s for b in bins] for s in source_bins])
        alpha = torch.where(is_source, torch.zeros_like(alpha), alpha)
        flat_alpha = alpha.flatten().to(images)
        ddf = generator.displacement(target_fields, source_fields, flat_alpha)
        intensity = generator.intensity_change(target_fields, source_fields, flat_alpha)
        size = inputs.shape[-2:]
        frames = generator.apply(images, ddf, intensity)[:, 0].reshape(batch, count, *size)
        frames = torch.where(
            is_source.to(frames.device)[:, :, None, None], inputs[:, None, 0].expand_as(frames), frames
        )
        displacement = upsample_displacement(ddf, size).reshape(batch, count, 2, *size)
        folds = (jacobian_determinant(displacement.flatten(0, 1)) <= 0).reshape(batch, count, -1)
        moved = ~is_source.to(folds.device)
        for row in range(batch):  # share of the moved frames' pixels where the mapping folds
            details[row] = dict(
                details[row], folding=float(folds[row][moved[row]].float().mean()) if moved[row].any() else 0.0
            )
        if intensity is not None:
            intensity = F.interpolate(intensity, size=size, mode="bilinear", align_corners=False).reshape(
                batch, count, *size
            )

        def remake(rows: torch.Tensor, steps: torch.Tensor, alpha: torch.Tensor) -> dict[str, torch.Tensor | None]:
            index = (rows * count + steps).to(fields.device)
            strength = alpha.to(images)
            ddf = generator.displacement(target_fields[index], source_fields[index], strength)
            change = generator.intensity_change(target_fields[index], source_fields[index], strength)
            if change is not None:
                change = F.interpolate(change, size=size, mode="bilinear", align_corners=False)[:, 0].cpu()
            return {"displacement": upsample_displacement(ddf, size).cpu(), "intensity": change}

        return MethodSeries(
            generated=frames.cpu(),
            reconstruction=inputs[:, 0].cpu(),
            frames=frames.cpu(),
            details=details,
            displacement=displacement.cpu(),
            intensity=None if intensity is None else intensity.cpu(),
            remake=remake,
        )

    def _search(self, frames_at, source_scores: list[float], source_bins: list[int], bins: list[int], num_bins: int):
        """Strengths (B, K) and per-source details (``alpha``, ``reached``, ``change_bin``) of the calibrated series.

        ``frames_at(index, alpha)`` makes, for the flattened (B*K) series, the frames with the changes
        ``index`` scaled by ``alpha``; the frame of the source's own bin is the source (α = 0, reached by
        definition). A frame whose own change cannot reach its bin centre within the bound borrows the
        change of the nearest frame further from the source that does reach past it (``change_bin``), so
        the series keeps moving monotonically towards its far end."""
        batch, count = len(source_bins), len(bins)
        is_source = torch.as_tensor([[b == s for b in bins] for s in source_bins]).flatten()
        searched = torch.nonzero(~is_source).flatten()
        targets = bin_centre(torch.as_tensor(bins), num_bins).repeat(batch)
        sources = torch.as_tensor(source_scores, dtype=torch.float32).repeat_interleave(count)
        device = next(iter(self.classifier.parameters()), torch.zeros(())).device
        alpha = torch.zeros(batch * count)
        reached = torch.ones(batch * count, dtype=torch.bool)
        scores = sources.clone()
        change = torch.arange(batch * count)  # whose change each frame scales
        if searched.numel():
            self._calibrate(frames_at, searched, searched, targets, sources, alpha, reached, scores, device)
            donors = self._donors(reached, scores, targets, sources, batch, count)
            if donors:
                frames_, own = torch.tensor(list(donors)), torch.tensor(list(donors.values()))
                trial_alpha, trial_reached = alpha.clone(), reached.clone()
                trial_scores = scores.clone()
                guess = (
                    alpha[own]
                    * (targets[frames_] - sources[frames_])
                    / (scores[own] - sources[frames_]).where(
                        (scores[own] - sources[frames_]).abs() > 1e-6, torch.ones(())
                    )
                )
                self._calibrate(
                    frames_at,
                    frames_,
                    own,
                    targets,
                    sources,
                    trial_alpha,
                    trial_reached,
                    trial_scores,
                    device,
                    start=guess.clamp(0.0, self.strength_bound),
                )
                better = (trial_scores[frames_] - targets[frames_]).abs() < (scores[frames_] - targets[frames_]).abs()
                take = frames_[better]
                alpha[take], reached[take], scores[take] = trial_alpha[take], trial_reached[take], trial_scores[take]
                change[take] = own[better]
            self._keep_monotone(alpha, reached, scores, change, targets, sources, batch, count)
        alpha, reached = alpha.reshape(batch, count), reached.reshape(batch, count)
        change_steps = (change % count).reshape(batch, count)
        details = [
            {
                "alpha": [round(float(a), 4) for a in alpha[i]],
                "reached": [bool(r) for r in reached[i]],
                "change_bin": [int(bins[int(k)]) for k in change_steps[i]],
                "bins": [int(b) for b in bins],
            }
            for i in range(batch)
        ]
        return alpha, change_steps, details

    def _calibrate(self, frames_at, frames_, changes, targets, sources, alpha, reached, scores, device, start=None):
        """Search strengths of ``frames_`` (flat indices) scaling the changes ``changes``; results written into
        ``alpha``, ``reached`` and ``scores`` at ``frames_``."""

        def score(index: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            frames = frames_at(changes[index], a)
            return self.classifier(frames[:, None].to(device)).reshape(-1).float().cpu()

        found = calibrate_strengths(
            score, targets[frames_], sources[frames_], upper=self.strength_bound, tolerance=self.tolerance, start=start
        )
        alpha[frames_], reached[frames_], scores[frames_] = found.alpha, found.reached, found.scores

    @staticmethod
    def _keep_monotone(alpha, reached, scores, change, targets, sources, batch: int, count: int) -> None:
        """Walking out from the source on each side, a frame that ends less far than the frame before it
        (only a frame that missed its target can) repeats that frame's change and strength, so the
        series never turns back; it stays marked as not reached. In place, flat (B*K) tensors."""
        for row in range(batch):
            base = row * count
            for direction in (1, -1):
                best = None  # flat index of the furthest frame so far on this side
                steps = range(count) if direction == 1 else range(count - 1, -1, -1)
                for step in steps:
                    frame = base + step
                    if (targets[frame] - sources[frame]) * direction <= 0:
                        continue  # the source's own bin, or the other side
                    if best is not None and (scores[frame] - scores[best]) * direction < 0:
                        alpha[frame], change[frame], scores[frame] = alpha[best], change[best], scores[best]
                        reached[frame] = False
                    else:
                        best = frame

    @staticmethod
    def _donors(reached, scores, targets, sources, batch: int, count: int) -> dict[int, int]:
        """For each frame that missed its target: the nearest frame further from the source (same series, same
        direction) whose score is at or past that target, as {frame: donor} in flat indices."""
        donors = {}
        for frame in torch.nonzero(~reached).flatten().tolist():
            row, step = divmod(frame, count)
            up = bool(targets[frame] > sources[frame])
            further = range(step + 1, count) if up else range(step - 1, -1, -1)
            for other in further:
                donor = row * count + other
                past = scores[donor] >= targets[frame] if up else scores[donor] <= targets[frame]
                if past:
                    donors[frame] = donor
                    break
        return donors
