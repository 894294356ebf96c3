"""Making series: the black box, the method (explainer or baseline) and the frames exactly as written.

:class:`SeriesInferer` is the inference's inferer. Given loaded sources (``(path, source, model
input)``, see :class:`~.dataset.SourcePreprocessing`) it

1. scores them with the black-box classifier f (source score and bin);
2. generates the series of all N bins in one batch with the method (``norm`` as in training
   validation) and keeps the selected target bins; the frame of the source's own bin is the
   reconstruction;
3. builds the frames at ``resolution="source"`` (source + the change carried back to the source grid,
   see :mod:`.frames`) or ``"model"`` (the generator's frames), quantised to ``bits``;
4. scores the frames exactly as written (f of the quantised frames, preprocessed like any input).

Nothing is written here: the writers (:mod:`.writers`) turn a :class:`~.results.SeriesResult` into files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from monai_exaggeration.binning import DEFAULT_NUM_BINS, centre_values, check_num_bins, posterior_to_bin
from monai_exaggeration.findings import DEFAULT_FINDING
from monai_exaggeration.inference.dataset import SourcePreprocessing
from monai_exaggeration.inference.frames import (
    RESOLUTIONS,
    Resolution,
    full_resolution_frames,
    select_bins,
    warped_frame,
)
from monai_exaggeration.inference.results import SeriesResult, StageTimer
from monai_exaggeration.methods import DEFAULT_METHOD, MethodContext, check_method, method_class
from monai_exaggeration.methods.base import MethodSeries, frame_notes
from monai_exaggeration.methods.calibration import calibrate_strengths
from monai_exaggeration.methods.series import NORM_MODES, Norm
from monai_exaggeration.networks.explainer_file import COMPOSITIONS
from monai_exaggeration.transforms import to_unit_range
from monai_exaggeration.transforms.cxr import model_scale
from monai_exaggeration.utils import as_bool, file_sha256, for_inference, select_device, state_sha256

__all__ = [
    "MethodSettings",
    "SeriesInferer",
    "SeriesSettings",
    "file_sha256",
]  # file_sha256: from utils, kept here for callers of 0.9

logger = logging.getLogger("monai_exaggeration.inference")


@dataclass
class MethodSettings:
    """How a series is made: the ``method`` (:mod:`monai_exaggeration.methods`, docs/methods.md) and what it
    loads. The explainer comes from ``explainer_weights``, a file that records its architecture, number
    of bins, model size and composition; a ``generator`` given with it receives the file's weights
    (files of 0.5 and earlier record no architecture); a ``generator`` alone is used as it is (in memory).
    Latent Shift needs ``autoencoder_weights``. ``options`` are the method's ``method_options``;
    ``norm``, ``composition`` and ``calibrate`` are the explainer's (docs/inference.md)."""

    method: str = DEFAULT_METHOD
    options: dict | None = None
    explainer_weights: str | os.PathLike | None = None
    generator: nn.Module | None = None
    autoencoder_weights: str | os.PathLike | None = None
    norm: Norm = "series"
    composition: str | None = None
    calibrate: bool = True


@dataclass
class SeriesSettings:
    """Which frames a series has and how they are written: the target bins (``num_bins`` bins, of which
    ``first_bin``..``last_bin`` or ``num_frames`` of them, :func:`~.frames.select_bins`), the ``resolution``
    and ``bits`` of the written frames, and the model size (``image_size``; None: the explainer file's)."""

    num_bins: int | None = None
    first_bin: int = 0
    last_bin: int | None = None
    num_frames: int | None = None
    resolution: Resolution = "source"
    bits: int = 8
    image_size: int | None = None


class SeriesInferer:
    """Make the series of loaded sources with a trained explainer or a baseline (module docstring).

    Args:
        classifier: the black box (a module, or a zero-argument callable returning one, so that loading
            errors surface in :meth:`prepare`).
        method: how the series is made (:class:`MethodSettings`).
        series: which frames, at which resolution (:class:`SeriesSettings`).
        preprocessing: the reader of source files (:class:`~.dataset.SourcePreprocessing`, or a factory of
            one; the model size is bound to it when the models are loaded).
        device: where the models run (None: CUDA when available).
        model_version: enters every output UID; by default derived from the weights and every setting
            that changes the pixels, so a re-run with the same models and settings yields identical UIDs.
        batch_size: sources per forward (None: automatic, :meth:`sources_per_batch`).
        num_workers: reader processes that decode ahead (None: automatic,
            :func:`~monai_exaggeration.data.streaming.default_workers`).

    :meth:`from_settings` builds it from the flat keys of inference.json.
    """

    def __init__(
        self,
        classifier: nn.Module | Callable[[], nn.Module],
        method: MethodSettings | None = None,
        series: SeriesSettings | None = None,
        preprocessing: SourcePreprocessing | Callable[[], SourcePreprocessing] | None = None,
        device: str | torch.device | None = None,
        model_version: str | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        method = method or MethodSettings()
        series = series or SeriesSettings()
        self.method_name = method.method
        self.calibrate = as_bool(method.calibrate, "calibrate")
        self.output = "image"  # or "deformation", from the explainer file (set in prepare)
        self.method_options = check_method(method.method, method.options)
        self.autoencoder_weights = None if method.autoencoder_weights is None else Path(method.autoencoder_weights)
        self.series_method: Any = None
        generator, explainer_weights, num_bins = method.generator, method.explainer_weights, series.num_bins
        if not getattr(method_class(method.method), "uses_explainer", False):
            generator, explainer_weights = None, None  # a baseline makes its own series
            num_bins = DEFAULT_NUM_BINS if num_bins is None else num_bins
        elif generator is None and explainer_weights is None:
            raise ValueError("the inference needs explainer_weights (an explainer file) or an in-memory generator")
        self._bin_selection = (series.first_bin, series.last_bin, series.num_frames)
        self.num_bins: int | None = None
        self.bins: list[int] | None = None
        if num_bins is not None:  # checked now, so that bad settings fail before anything is loaded
            self.num_bins = check_num_bins(num_bins)
            self.bins = select_bins(num_bins, *self._bin_selection)
        if preprocessing is None:
            preprocessing = SourcePreprocessing()
        self.reading = preprocessing if isinstance(preprocessing, SourcePreprocessing) else preprocessing()
        self._check(method, series)
        self.generator = generator
        self._classifier = classifier
        self.explainer_weights = None if explainer_weights is None else Path(explainer_weights)
        self.explainer_record: dict[str, Any] = {}
        self.image_size = None if series.image_size is None else int(series.image_size)
        self.composition = method.composition
        self.aspect = self.reading.aspect
        self.norm, self.resolution, self.bits = method.norm, series.resolution, series.bits
        self.model_version = model_version
        self.device = select_device(device)
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(
                f"batch_size must be a positive number of sources (or null: automatic), got {batch_size!r}"
            )
        self.batch_size = None if batch_size is None else int(batch_size)
        self.num_workers = num_workers
        self.classifier: nn.Module | None = None
        self.timer = StageTimer(self.device)

    @staticmethod
    def _check(method: MethodSettings, series: SeriesSettings) -> None:
        if method.norm not in NORM_MODES:
            raise ValueError(f"norm must be one of {NORM_MODES}, got {method.norm!r}")
        if series.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {series.resolution!r}")
        if series.bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {series.bits!r}")
        if method.composition is not None and method.composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {method.composition!r}")

    @classmethod
    def from_settings(
        cls,
        generator: nn.Module | None,
        classifier: nn.Module | Callable[[], nn.Module],
        *,
        aspect: str = "pad",
        input_limits: dict | None = None,
        method_options: dict | None = None,
        **settings: Any,
    ) -> SeriesInferer:
        """A series inferer from the flat keys of inference.json (``method``, ``method_options``,
        ``explainer_weights``, ``num_bins``, ``first_bin``, ``resolution``, ``aspect``, ``input_limits``, ...)."""
        groups = {"method": MethodSettings, "series": SeriesSettings}
        parts: dict[str, dict[str, Any]] = {name: {} for name in groups}
        for key, value in settings.items():
            for name, kind in groups.items():
                if key in kind.__dataclass_fields__:
                    parts[name][key] = value
                    break
        plain = {key: value for key, value in settings.items() if not any(key in parts[name] for name in parts)}
        if plain.get("preprocessing") is None:
            plain["preprocessing"] = SourcePreprocessing(aspect, input_limits)
        return cls(
            classifier,
            MethodSettings(**parts["method"], options=method_options, generator=generator),
            SeriesSettings(**parts["series"]),
            **plain,
        )

    def prepare(self) -> SeriesInferer:
        """Load the classifier and the method (the explainer's architecture from its file); idempotent.

        Raises ``FileNotFoundError``/``ValueError`` with a message that says what to do.
        """
        if self.classifier is not None:
            return self
        classifier = self._build_classifier()
        context = MethodContext(
            classifier=classifier,
            device=self.device,
            options=self.method_options,
            explainer_weights=self.explainer_weights,
            generator=self.generator,
            autoencoder_weights=self.autoencoder_weights,
            norm=self.norm,
            composition=self.composition,
            calibrate=self.calibrate,
        )
        method = method_class(self.method_name).build(context)
        self._adopt(method.num_bins, method.image_size, method.composition)
        self.series_method, self.classifier = method, classifier
        self.generator = getattr(method, "generator", None)
        self.explainer_record = dict(getattr(method, "record", {}) or {}) if self.explainer_weights else {}
        self.output = getattr(method, "output", "image")
        if self.model_version is None:
            self.model_version = self._default_model_version()
        return self

    @property
    def finding(self) -> str:
        """The finding the explainer file records (the default finding for a method without a file)."""
        record = getattr(self.series_method, "record", None) or {}
        return str(record.get("finding") or DEFAULT_FINDING)

    def _build_classifier(self) -> nn.Module:
        """The black box (built now if it was given as a factory) on the device, in eval mode, frozen:
        gradients flow through it (the baselines' searches), never into it."""
        classifier = self._classifier if isinstance(self._classifier, nn.Module) else self._classifier()
        classifier = for_inference(classifier, self.device)
        for parameter in classifier.parameters():
            parameter.requires_grad_(False)
        return classifier

    def _adopt(self, num_bins: int | None, image_size: int | None, composition: str) -> None:
        """Take the number of bins, the model size and the composition of the explainer itself;
        explicit settings that contradict it are an error."""
        for name, trained, asked in (
            ("num_bins", num_bins, self.num_bins),
            ("image_size", image_size, self.image_size),
        ):
            if trained is not None and asked is not None and int(trained) != int(asked):
                raise ValueError(
                    f"the explainer was trained with {name} = {trained} but the settings ask for {asked}: "
                    f"leave {name} unset (null), it is read from the explainer file"
                )
        if num_bins is None and self.num_bins is None:
            raise ValueError("num_bins is unknown: the generator does not record it, so set num_bins")
        self.num_bins = check_num_bins(int(num_bins if num_bins is not None else self.num_bins))
        self.bins = select_bins(self.num_bins, *self._bin_selection)
        size = image_size if image_size is not None else self.image_size
        if size is None:
            raise ValueError("image_size is unknown: the generator does not record it, so set image_size")
        self.image_size = int(size)
        self.composition = self.composition or composition
        self.reading.bind(self.image_size)

    def _default_model_version(self) -> str:
        """``<method> <weights> cfg <digest>``: the method, its weights and every setting that changes the pixels."""
        method = self.series_method
        settings = {
            "num_bins": self.num_bins,
            "bins": self.bins,
            "image_size": self.image_size,
            "aspect": self.aspect,
            "resolution": self.resolution,
            "bits": self.bits,
            "classifier": state_sha256(self.classifier)[:12],
            **method.version_settings(),
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        return f"{method.version_name} {method.weights_id()} cfg {digest}"

    def _score(self, images: torch.Tensor) -> list[float]:
        with torch.no_grad():
            return [float(s) for s in self.classifier(images.to(self.device)).reshape(-1).cpu()]

    def sources_per_batch(self) -> int:
        """Sources per generator/classifier forward: ``batch_size``, or automatic.

        Automatic: on a GPU as many as a quarter of its free memory holds (about 64 MB per frame of
        the generator's activations, at most 32 sources); on a CPU 1: a source's 10 frames already
        fill the cores, and more are slower there (measured on 2 cores: 0.28 s per source alone,
        0.44 s in batches of 4).
        """
        if self.batch_size is not None:
            return self.batch_size
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            per_source = len(self.bins or range(self.num_bins or 10)) * 64 * 2**20
            return int(max(1, min(32, free // 4 // per_source)))
        return 1

    def load(self, path: str | os.PathLike) -> tuple[MetaTensor, MetaTensor]:
        """``(source (1, rows, columns) in [0, 1], model input (1, S, S) in [-1, 1])`` of one file."""
        self.prepare()
        return self.reading(path)

    def explain(self, path: str | os.PathLike) -> SeriesResult:
        """The series of one source file (nothing written). Input problems raise ``CXRInputError``."""
        with self.timer("read"):
            item = self.load(path)
        _, _, result, _ = self.explain_batch([({"image": str(path)}, item)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def explain_batch(self, group: Sequence[tuple[dict, Any]]) -> list[tuple[dict, Any, Any, float]]:
        """The one batch step of every caller (the inference's evaluator, the evaluation, the DICOM node):
        ``group`` is a batch of :func:`~.dataset.source_loader` (``(record, (source, model input))`` or
        ``(record, LoadFailure)``); the readable sources are explained together (:meth:`explain_loaded`).

        Returns, in input order, ``(record, item, outcome, seconds)``: the outcome is the
        :class:`SeriesResult`, the exception that source raised, or the ``LoadFailure``; ``seconds`` is the
        source's share of the batch's time."""
        from monai_exaggeration.data.streaming import LoadFailure

        start = time.perf_counter()
        loaded = [(str(record["image"]), *item) for record, item in group if not isinstance(item, LoadFailure)]
        results = iter(self.explain_loaded(loaded) if loaded else [])
        share = (time.perf_counter() - start) / max(1, len(loaded))
        return [
            (record, item, item if isinstance(item, LoadFailure) else next(results), share) for record, item in group
        ]

    @torch.no_grad()
    def explain_loaded(self, items: Sequence[tuple[str, MetaTensor, MetaTensor]]) -> list[SeriesResult | Exception]:
        """The series of several loaded sources ``(path, source, model input)``, with one classifier
        forward for their scores, one generator forward for all their series (each normalised with its
        own frames' statistics, as one source alone), and one classifier forward for all their frames.

        Returns one :class:`SeriesResult` per source, or the exception that source raised.
        """
        self.prepare()
        timer = self.timer
        inputs = torch.stack([model_input.as_tensor() for _, _, model_input in items])  # (B, 1, S, S)
        with timer("classifier"):
            source_scores = self._score(inputs)
        source_bins = [int(posterior_to_bin(torch.tensor(score), self.num_bins)) for score in source_scores]
        with timer("generator"):
            made = self.series_method(inputs, source_scores, source_bins, list(self.bins), self.num_bins)
        with timer("frames"):
            model_frames = made.frames  # (B, K, S, S)
            written: list[tuple[np.ndarray, torch.Tensor] | Exception] = []
            for index, (_, source, model_input) in enumerate(items):
                try:
                    written.append(self._written_frames(source, model_input, made, index))
                except Exception as error:  # noqa: BLE001 - one source's failure must not stop the others
                    written.append(error)
        ok = [index for index, item in enumerate(written) if not isinstance(item, Exception)]
        with timer("classifier"):
            frame_scores = self._score(torch.cat([written[i][1] for i in ok])[:, None]) if ok else []
            generator_scores = self._score(model_frames[ok].reshape(-1, 1, *inputs.shape[2:])) if ok else []
        if ok and self.resolution == "source" and getattr(self.series_method, "calibrate", False) and made.remake:
            with timer("frames"):
                self._refine_written(items, ok, made, written, frame_scores, source_scores, source_bins)
        centres = centre_values(self.num_bins, self.bins).tolist()
        results: list[SeriesResult | Exception] = list(written)
        count = len(self.bins)
        for position, index in enumerate(ok):
            path, source, _ = items[index]
            details = made.details[index] if made.details else {}
            results[index] = SeriesResult(
                source=str(path),
                meta=dict(source.meta),
                bins=list(self.bins),
                centres=centres,
                frames=written[index][0],
                scores=frame_scores[position * count : (position + 1) * count],
                generator_frame_scores=generator_scores[position * count : (position + 1) * count],
                source_score=source_scores[index],
                source_bin=source_bins[index],
                method=self.method_name,
                details=details,
                detail_texts=self.series_method.frame_details(details, count),
                frame_notes=frame_notes(details, count),
            )
        return results

    def _written_frames(
        self, source: MetaTensor, model_input: MetaTensor, made: MethodSeries, index: int
    ) -> tuple[np.ndarray, torch.Tensor]:
        """The frames as written (grey levels, K x rows x columns) and as the classifier sees them (K, S, S).

        ``made`` is the method's batch, ``index`` this source's place in it: its ``generated`` (K, S, S) and
        ``reconstruction`` (S, S) images (their difference is the change carried to the source grid), or,
        from a deformation explainer, its ``displacement`` and ``intensity`` (the source is warped at its
        own resolution); ``frames`` (K, S, S) are the frames at model resolution.

        One frame at a time, so that memory stays bounded at source resolution: only the quantised
        frames (1 or 2 bytes per pixel) are kept, plus one float frame being built. Each frame is
        rounded to the stored grey levels before it is scored, so the scores are those of the files.
        """
        model_frames = made.frames[index]
        levels = 2**self.bits - 1
        dtype = np.uint8 if self.bits == 8 else np.uint16
        scale = model_scale(tuple(source.shape[1:]), self.image_size, self.aspect)
        shape = tuple(source.shape[1:]) if self.resolution == "source" else tuple(model_frames.shape[1:])
        stored = np.empty((len(self.bins), *shape), dtype=dtype)
        as_input = torch.empty((len(self.bins), self.image_size, self.image_size), dtype=torch.float32)
        for step in range(len(self.bins)):
            if self.resolution == "source":
                maps = {
                    "generated": made.generated[index, step],
                    "displacement": None if made.displacement is None else made.displacement[index, step],
                    "intensity": None if made.intensity is None else made.intensity[index, step],
                }
                frame = self._source_frame(source, model_input, maps, made.reconstruction[index], scale)
            else:
                frame = to_unit_range(model_frames[step]).clamp(0, 1).numpy().astype(np.float32)
            stored[step], as_input[step] = self._quantised(frame, source, levels)
            del frame
        return stored, as_input

    def _source_frame(
        self,
        source: MetaTensor,
        model_input: MetaTensor,
        maps: dict,
        reconstruction: torch.Tensor,
        scale: tuple[float, float],
    ) -> np.ndarray:
        """One frame on the source grid (float32 in [0, 1]): the source warped by ``maps["displacement"]``
        (deformation explainer), else the source plus the change ``maps["generated"] - reconstruction``."""
        if maps.get("displacement") is not None:
            return warped_frame(source[0].numpy(), maps["displacement"], maps.get("intensity"), self.aspect)
        return full_resolution_frames(
            source[0].numpy(), maps["generated"][None], reconstruction, model_input, self.preprocessing
        )[0]

    def _quantised(self, frame: np.ndarray, source: MetaTensor, levels: int) -> tuple[np.ndarray, torch.Tensor]:
        """``frame`` (float, [0, 1]) rounded to the stored grey levels (in place), and the model input f sees
        of exactly those values."""
        frame *= levels
        np.rint(frame, out=frame)
        stored = frame.astype(np.uint8 if levels == 255 else np.uint16)
        frame /= levels  # exactly k / levels: the written value
        if self.resolution == "source":
            return stored, self.as_model_input(frame[None], source)[0]  # what f sees of the written frame
        return stored, torch.from_numpy(frame) * 2.0 - 1.0

    def _refine_written(
        self,
        items: Sequence[tuple[str, MetaTensor, MetaTensor]],
        ok: list[int],
        made: MethodSeries,
        written: list,
        frame_scores: list[float],
        source_scores: list[float],
        source_bins: list[int],
    ) -> None:
        """Calibrated frames whose *written* score (source resolution, quantised) misses its bin centre are
        searched again on the written frame, starting from the strength found at model resolution.

        Updates ``written``, ``frame_scores`` and the method's details (``alpha``, ``reached``) in place."""
        method = self.series_method
        count, levels = len(self.bins), 2**self.bits - 1
        centres = centre_values(self.num_bins, self.bins).tolist()
        todo = [
            (position, index, step)
            for position, index in enumerate(ok)
            for step, target_bin in enumerate(self.bins)
            if target_bin != source_bins[index]
            and abs(frame_scores[position * count + step] - centres[step]) > method.tolerance / 2
        ]
        if not todo:
            return
        rows = torch.tensor([index for _, index, _ in todo])
        steps = torch.tensor([step for _, _, step in todo])
        scales = {
            index: model_scale(tuple(items[index][1].shape[1:]), self.image_size, self.aspect) for _, index, _ in todo
        }

        def build(subset: torch.Tensor, alpha: torch.Tensor) -> list[tuple[np.ndarray, torch.Tensor]]:
            maps = made.remake(rows[subset], steps[subset], alpha)
            out = []
            for place, which in enumerate(subset.tolist()):
                _, index, _ = todo[which]
                _, source, model_input = items[index]
                one = {key: None if value is None else value[place] for key, value in maps.items()}
                frame = self._source_frame(source, model_input, one, made.reconstruction[index], scales[index])
                out.append(self._quantised(frame, source, levels))
            return out

        def score(subset: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
            return torch.tensor(self._score(torch.stack([inp for _, inp in build(subset, alpha)])[:, None]))

        found = calibrate_strengths(
            score,
            torch.tensor([centres[step] for _, _, step in todo]),
            torch.tensor([source_scores[index] for _, index, _ in todo]),
            raw_scores=torch.tensor([frame_scores[position * count + step] for position, _, step in todo]),
            upper=method.strength_bound,
            tolerance=method.tolerance,
            start=torch.tensor([made.details[index]["alpha"][step] for _, index, step in todo]),
        )
        rebuilt = build(torch.arange(len(todo)), found.alpha)
        for which, (position, index, step) in enumerate(todo):
            written[index][0][step], written[index][1][step] = rebuilt[which]
            frame_scores[position * count + step] = float(found.scores[which])
            made.details[index]["alpha"][step] = round(float(found.alpha[which]), 4)
            made.details[index]["reached"][step] = bool(found.reached[which])

    def as_model_input(self, frames: np.ndarray, source: MetaTensor) -> torch.Tensor:
        """Source-grid frames (K, rows, columns) in [0, 1] preprocessed as model inputs: (K, S, S) in [-1, 1].

        ``source`` is the loaded source (its metadata carries the grid).
        """
        stack = MetaTensor(torch.from_numpy(frames), meta=dict(source.meta))  # meta carries the affine
        return self.reading.model_input(stack).as_tensor()

    @property
    def loader(self):
        """The reader of source files (input limits checked from the header)."""
        return self.reading.loader

    @property
    def preprocessing(self):
        """The invertible transform from a loaded source to the model input (None until the models are loaded)."""
        return self.reading.transform
