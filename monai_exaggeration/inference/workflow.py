"""The inference workflow: chest X-rays in, DICOM Secondary Capture series + CSV logs + quick-looks out.

For every source image (:meth:`ExaggerationInference.explain`):

1. read it (``read_cxr`` conventions) and preprocess it to the model size (invertible transforms);
2. score it with the black-box classifier f (source score and bin);
3. generate the series of all N bins in one batch (``norm`` as in training validation) and keep the
   selected target bins; the frame of the source's own bin is the reconstruction;
4. build the frames at ``resolution="source"`` (source + the change carried back to the source
   grid, see :mod:`.frames`) or ``"model"`` (the generator's frames), quantised to ``bits``;
5. score the frames exactly as written (f of the quantised frames, preprocessed like any input).

:meth:`ExaggerationInference.run` does this for a file, folder or CSV manifest and writes, under
``output_dir``: ``dicom/<SeriesInstanceUID>/step_XXX.dcm``, ``quicklook/<name>/{series.gif,
montage.png,scores.png}``, ``frames.csv`` (one row per frame), ``sources.csv`` (one row per
source) and ``errors.csv`` (one row per failed input). A failed input leaves none of its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from torch import nn

from monai_exaggeration.binning import centre_values, check_num_bins, posterior_to_bin
from monai_exaggeration.data import collect_inputs, default_input
from monai_exaggeration.data.streaming import LoadFailure, batches, compute_threads, stream_inputs
from monai_exaggeration.dicom import SeriesInfo, series_instance_uid, write_series
from monai_exaggeration.engines.posteriors import classifier_fingerprint
from monai_exaggeration.engines.series import NORM_MODES
from monai_exaggeration.inference import quicklook
from monai_exaggeration.inference.frames import RESOLUTIONS, full_resolution_frames, select_bins
from monai_exaggeration.inference.logs import (
    ERROR_COLUMNS,
    FRAME_COLUMNS,
    RUN_LOGS,
    SOURCE_COLUMNS,
    SeriesWriter,
    earlier_logs,
)
from monai_exaggeration.handlers import Progress
from monai_exaggeration.methods import ProgressiveExaggeration, build_baseline, check_method
from monai_exaggeration.metrics import series_validity
from monai_exaggeration.networks.explainer_file import COMPOSITIONS, load_explainer
from monai_exaggeration.transforms import ASPECT_POLICIES, InputLimits, LoadCXR, cxr_preprocessing, to_unit_range
from monai_exaggeration.utils import as_bool, remove_stale_temporaries, select_device, write_csv_atomic

__all__ = [
    "FRAME_COLUMNS",
    "SOURCE_COLUMNS",
    "ERROR_COLUMNS",
    "STAGES",
    "ExaggerationInference",
    "InferenceSummary",
    "SeriesResult",
    "SourceReader",
    "file_sha256",
    "run_and_exit",
]

logger = logging.getLogger("monai_exaggeration.inference")

#: Timed stages of one source (seconds are summed over sources in :class:`InferenceSummary`).
STAGES = ("read", "classifier", "generator", "frames", "write", "quicklook")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SeriesResult:
    """One source's series in memory (before anything is written)."""

    source: str
    meta: dict
    bins: list[int]
    centres: list[float]
    frames: np.ndarray  # (K, rows, columns) grey levels exactly as written: uint8 (8 bits) or uint16 (16 bits)
    scores: list[float]  # f of each written frame
    generator_frame_scores: list[float]  # f of the generator's model-size frame
    source_score: float
    source_bin: int
    method: str = "progressive_exaggeration"  # the methods.METHOD_NAMES entry that made the series
    details: dict = field(default_factory=dict)  # the method's per-source facts (e.g. Latent Shift's shifts)

    @property
    def dicom(self) -> dict:
        return self.meta.get("dicom", {})

    @property
    def unit_frames(self) -> np.ndarray:
        """The written frames as float32 display values in [0, 1] (K, rows, columns)."""
        return self.frames.astype(np.float32) / np.float32(np.iinfo(self.frames.dtype).max)


@dataclass
class InferenceSummary:
    """What a run produced."""

    output_dir: Path
    num_inputs: int = 0
    num_series: int = 0
    num_files: int = 0
    failures: list[dict] = field(default_factory=list)
    series_dirs: list[str] = field(default_factory=list)
    quicklook_dirs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def exit_code(self) -> int:
        """0 when every input produced its series, 1 when some failed, 2 when all of them failed."""
        if not self.failures:
            return 0
        return 2 if self.num_series == 0 else 1

    def describe(self) -> str:
        """The final summary printed for the user: the paths that exist, or that nothing was written."""
        out = self.output_dir
        lines = [
            f"{self.num_inputs} input(s): {self.num_series} series written ({self.num_files} DICOM files), "
            f"{len(self.failures)} failed, in {self.seconds:.1f} s."
        ]
        if self.num_series:
            lines.append(f"  DICOM series : {_one_or_many(self.series_dirs, out / 'dicom')}")
            lines.append(f"  frame log    : {out / 'frames.csv'}")
            lines.append(f"  source log   : {out / 'sources.csv'}")
            if self.quicklook_dirs:
                lines.append(
                    f"  quick-looks  : {_one_or_many(self.quicklook_dirs, out / 'quicklook')} "
                    "(series.gif, montage.png, scores.png)"
                )
        else:
            lines.append("  nothing was written.")
        if self.failures:
            lines.append(f"  errors       : {out / 'errors.csv'}")
        return "\n".join(lines)


def _one_or_many(folders: Sequence[str], parent: Path) -> str:
    """The folder itself when there is one, else how many there are under ``parent``."""
    return f"{folders[0]}/" if len(folders) == 1 else f"{len(folders)} folders under {parent}/"


class _StageTimer:
    """Wall-clock seconds per stage (synchronising CUDA so GPU work is charged to its stage)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - start


class ExaggerationInference:
    """Explain chest X-rays with a trained explainer: see the module docstring.

    The explainer comes from ``explainer_weights``, a file that records its architecture, number of
    bins, model size and composition (:func:`~monai_exaggeration.networks.load_explainer`), so
    ``generator``, ``num_bins`` and ``image_size`` are normally left None. A ``generator`` given
    with ``explainer_weights`` receives the file's weights (for files written before 0.6, which
    record no architecture); a ``generator`` without ``explainer_weights`` is used as it is (in
    memory, ``image_size`` from its config or the argument). ``classifier`` is the black box (a module or
    a zero-argument callable returning one, so that loading errors surface in :meth:`prepare`).
    ``first_bin``/``last_bin``/``num_frames`` choose the target bins (:func:`~.frames.select_bins`).
    ``model_version`` enters every output UID; by default it is derived from the weights and every
    setting that changes the pixels, so a re-run with the same models and settings yields identical
    UIDs and any change yields new ones. ``input_limits`` overrides :meth:`InputLimits.for_sources`
    (``min_size``, ``max_aspect``, ``max_megapixels``, ``max_file_mb``); ``burned_in_annotation_free``
    declares non-DICOM inputs free of text, so their frames say BurnedInAnnotation NO (else it is left out).

    ``method`` chooses how the series is made (:mod:`monai_exaggeration.methods`, docs/methods.md): the
    explainer (``progressive_exaggeration``, default) or a baseline, ``latent_shift`` (needs
    ``autoencoder_weights``) or ``gradient_ascent``, with ``method_options`` for the baseline's search.
    A baseline needs no explainer: ``num_bins`` defaults to 10 and the model size comes from the
    autoencoder or the classifier.
    """

    def __init__(
        self,
        generator: nn.Module | None,
        classifier: nn.Module | Callable[[], nn.Module],
        num_bins: int | None = None,
        finding: str = "cardiomegaly",
        explainer_weights: str | os.PathLike | None = None,
        image_size: int | None = None,
        aspect: str = "pad",
        norm: str = "series",
        first_bin: int = 0,
        last_bin: int | None = None,
        num_frames: int | None = None,
        resolution: str = "source",
        bits: int = 8,
        quicklook: bool = True,
        gif_frame_ms: int = 400,
        series_number: int = 900,
        model_version: str | None = None,
        device: str | torch.device | None = None,
        composition: str | None = None,
        input_limits: dict | None = None,
        burned_in_annotation_free: bool = False,
        batch_size: int | None = None,
        num_workers: int | None = None,
        method: str = "progressive_exaggeration",
        method_options: dict | None = None,
        autoencoder_weights: str | os.PathLike | None = None,
    ) -> None:
        self.method_name = method
        self.method_options = check_method(method, method_options)
        self.autoencoder_weights = None if autoencoder_weights is None else Path(autoencoder_weights)
        self.series_method: Any = None
        if method != "progressive_exaggeration":
            generator, explainer_weights = None, None  # a baseline makes its own series
            num_bins = 10 if num_bins is None else num_bins
        elif generator is None and explainer_weights is None:
            raise ValueError("the inference needs explainer_weights (an explainer file) or an in-memory generator")
        self._bin_selection = (first_bin, last_bin, num_frames)
        self.num_bins: int | None = None
        self.bins: list[int] | None = None
        if num_bins is not None:  # checked now, so that bad settings fail before anything is loaded
            self.num_bins = check_num_bins(num_bins)
            self.bins = select_bins(num_bins, *self._bin_selection)
        if aspect not in ASPECT_POLICIES:
            raise ValueError(f"aspect must be one of {ASPECT_POLICIES}, got {aspect!r}")
        if norm not in NORM_MODES:
            raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        if bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {bits!r}")
        if composition is not None and composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
        self.generator = generator
        self._classifier = classifier
        self.finding = finding
        self.explainer_weights = None if explainer_weights is None else Path(explainer_weights)
        self.explainer_record: dict[str, Any] = {}
        self.image_size = None if image_size is None else int(image_size)
        self.composition = composition
        self.aspect = aspect
        self.norm = norm
        self.resolution = resolution
        self.bits = bits
        self.quicklook = as_bool(quicklook, "quicklook")
        self.gif_frame_ms = gif_frame_ms
        self.series_number = series_number
        self.model_version = model_version
        self.device = select_device(device)
        self.preprocessing = None
        try:
            limits = InputLimits.for_sources(**dict(input_limits or {}))
        except TypeError:
            raise ValueError(
                f"input_limits accepts min_size, max_aspect, max_megapixels and max_file_mb, got {dict(input_limits)}"
            ) from None
        self.loader = LoadCXR(limits)
        self.burned_in_annotation_free = as_bool(burned_in_annotation_free, "burned_in_annotation_free")
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be a positive number of sources (or null: automatic), got {batch_size!r}")
        self.batch_size = None if batch_size is None else int(batch_size)
        self.num_workers = num_workers
        self.classifier: nn.Module | None = None
        self.timer = _StageTimer(self.device)

    # ------------------------------------------------------------------------------------- set-up

    def prepare(self) -> ExaggerationInference:
        """Load the explainer (architecture from its file), the classifier (idempotent).

        Raises ``FileNotFoundError``/``ValueError`` with a message that says what to do.
        """
        if self.classifier is not None:
            return self
        if self.method_name != "progressive_exaggeration":
            return self._prepare_baseline()
        if self.explainer_weights is not None:
            loaded = load_explainer(self.explainer_weights, network=self.generator)
            self.generator, self.explainer_record = loaded.generator, loaded.record
            self._adopt(loaded.num_bins, loaded.record.get("image_size"), loaded.composition)
        else:
            config = self.generator.config() if hasattr(self.generator, "config") else {}
            self._adopt(config.get("num_bins", self.num_bins), config.get("image_size"), "generated")
        self.generator = self.generator.to(self.device).eval()
        self.classifier = self._build_classifier()
        trained_for = self.explainer_record.get("classifier")
        if trained_for and trained_for != (this_one := classifier_fingerprint(self.classifier)):
            logger.warning(
                "the explainer %s was trained against another classifier (fingerprint %s, this one %s): "
                "its series may not move this classifier as intended",
                self.explainer_weights, trained_for, this_one,
            )
        weights = file_sha256(self.explainer_weights)[:12] if self.explainer_weights else ""
        self.series_method = ProgressiveExaggeration(self.generator, self.composition, self.norm, weights)
        if self.model_version is None:
            self.model_version = self._default_model_version()
        return self

    def _build_classifier(self) -> nn.Module:
        """The black box (built now if it was given as a factory) on the device, in eval mode."""
        classifier = self._classifier if isinstance(self._classifier, nn.Module) else self._classifier()
        return classifier.to(self.device).eval()

    def _prepare_baseline(self) -> ExaggerationInference:
        classifier = self._build_classifier()
        for parameter in classifier.parameters():  # gradients flow through the black box, never into it
            parameter.requires_grad_(False)
        weights = ""
        if self.method_name == "latent_shift" and self.autoencoder_weights and self.autoencoder_weights.is_file():
            weights = file_sha256(self.autoencoder_weights)[:12]
        method = build_baseline(self.method_name, classifier, self.method_options, self.autoencoder_weights, self.device, weights)
        size = getattr(getattr(method, "autoencoder", None), "image_size", None) or getattr(classifier, "input_size", None)
        self._adopt(self.num_bins, size, "transfer")
        self.series_method, self.classifier = method, classifier
        if self.model_version is None:
            self.model_version = self._default_model_version()
        return self

    def _adopt(self, num_bins: int | None, image_size: int | None, composition: str) -> None:
        """Take the number of bins, the model size and the composition of the explainer itself;
        explicit settings that contradict it are an error."""
        for name, trained, asked in (("num_bins", num_bins, self.num_bins), ("image_size", image_size, self.image_size)):
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
        self.preprocessing = cxr_preprocessing("image", self.image_size, self.aspect, load=False)

    def _default_model_version(self) -> str:
        if self.method_name != "progressive_exaggeration":
            settings = {"num_bins": self.num_bins, "bins": self.bins, "image_size": self.image_size, "aspect": self.aspect,
                        "resolution": self.resolution, "bits": self.bits, "classifier": _state_sha256(self.classifier)[:12],
                        **self.series_method.settings()}
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
            return f"{self.method_name} {self.series_method.weights_id()} cfg {digest}"
        if self.explainer_weights:
            weights = file_sha256(self.explainer_weights)[:12]
        else:  # an in-memory generator: its weights themselves must enter the UIDs
            weights = "unsaved-" + _state_sha256(self.generator)[:12]
        settings = {
            "num_bins": self.num_bins,
            "bins": self.bins,
            "image_size": self.image_size,
            "aspect": self.aspect,
            "norm": self.norm,
            "composition": self.composition,
            "resolution": self.resolution,
            "bits": self.bits,
            "classifier": _state_sha256(self.classifier)[:12],
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        return f"explainer {weights} cfg {digest}"

    # ------------------------------------------------------------------------------------- one source

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
        return SourceReader(self)(path)

    def explain(self, path: str | os.PathLike) -> SeriesResult:
        """The series of one source file (nothing written). Input problems raise ``CXRInputError``."""
        with self.timer("read"):
            source, model_input = self.load(path)
        result = self.explain_loaded([(str(path), source, model_input)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

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
                    written.append(
                        self._written_frames(source, model_input, made.generated[index], made.reconstruction[index], model_frames[index])
                    )
                except Exception as error:  # noqa: BLE001 - one source's failure must not stop the others
                    written.append(error)
        ok = [index for index, item in enumerate(written) if not isinstance(item, Exception)]
        with timer("classifier"):
            frame_scores = self._score(torch.cat([written[i][1] for i in ok])[:, None]) if ok else []
            generator_scores = self._score(model_frames[ok].reshape(-1, 1, *inputs.shape[2:])) if ok else []
        centres = centre_values(self.num_bins, self.bins).tolist()
        results: list[SeriesResult | Exception] = list(written)
        count = len(self.bins)
        for position, index in enumerate(ok):
            path, source, _ = items[index]
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
                details=made.details[index] if made.details else {},
            )
        return results

    def _written_frames(
        self, source: MetaTensor, model_input: MetaTensor, generated: torch.Tensor, reconstruction: torch.Tensor,
        model_frames: torch.Tensor,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """The frames as written (grey levels, K x rows x columns) and as the classifier sees them (K, S, S).

        ``generated`` (K, S, S) and ``reconstruction`` (S, S) are the method's images (their difference is
        the change carried to the source grid); ``model_frames`` (K, S, S) the frames at model resolution.

        One frame at a time, so that memory stays bounded at source resolution: only the quantised
        frames (1 or 2 bytes per pixel) are kept, plus one float frame being built. Each frame is
        rounded to the stored grey levels before it is scored, so the scores are those of the files.
        """
        levels = 2**self.bits - 1
        dtype = np.uint8 if self.bits == 8 else np.uint16
        shape = tuple(source.shape[1:]) if self.resolution == "source" else tuple(model_frames.shape[1:])
        stored = np.empty((len(self.bins), *shape), dtype=dtype)
        as_input = torch.empty((len(self.bins), self.image_size, self.image_size), dtype=torch.float32)
        for index in range(len(self.bins)):
            if self.resolution == "source":
                frame = full_resolution_frames(
                    source[0].numpy(), generated[index][None], reconstruction, model_input, self.preprocessing
                )[0]
            else:
                frame = to_unit_range(model_frames[index]).clamp(0, 1).numpy().astype(np.float32)
            frame *= levels
            np.rint(frame, out=frame)
            stored[index] = frame
            frame /= levels  # exactly k / levels: the written value
            if self.resolution == "source":
                as_input[index] = self.as_model_input(frame[None], source)[0]  # what f sees of the written frame
            else:
                as_input[index] = torch.from_numpy(frame) * 2.0 - 1.0
            del frame
        return stored, as_input

    def as_model_input(self, frames: np.ndarray, source: MetaTensor) -> torch.Tensor:
        """Source-grid frames (K, rows, columns) in [0, 1] preprocessed as model inputs: (K, S, S) in [-1, 1].

        ``source`` is the loaded source (its metadata carries the grid).
        """
        stack = MetaTensor(torch.from_numpy(frames), meta=dict(source.meta))  # meta carries the affine
        return self.preprocessing({"image": stack})["image"].as_tensor()

    # ------------------------------------------------------------------------------------- writing

    def write(self, result: SeriesResult, output_dir: str | os.PathLike) -> tuple[list[dict], dict, list[Path]]:
        """Write one series (DICOM + quick-looks); return its frame rows, its source row and the files.

        On any error every file written here is removed again before the error propagates.
        """
        self.prepare()
        output_dir = Path(output_dir)
        info = SeriesInfo.from_scores(
            self.finding,
            self.model_version,
            result.scores,
            target_bins=result.bins,
            num_bins=self.num_bins,
            series_number=self.series_number,
            method=self.series_method.label,
        )
        written: list[Path] = []
        try:
            meta = result.meta if self.resolution == "source" else _model_grid_meta(result.meta, self.aspect)
            if self.burned_in_annotation_free and not result.dicom.get("SOPInstanceUID"):
                meta = dict(meta, burned_in_annotation="NO")
            with self.timer("write"):
                paths = write_series(list(result.frames), result.source, meta, info, output_dir / "dicom", bits=self.bits)
            written.extend(paths)
            series_uid = paths[0].parent.name
            looks = {"gif": "", "montage": "", "score_plot": ""}
            if self.quicklook:
                with self.timer("quicklook"):
                    folder = output_dir / "quicklook" / _quicklook_name(result.source, series_uid)
                    title = f"{self.finding}: {Path(result.source).name} (source score {result.source_score:.2f})"
                    looks["gif"] = str(
                        quicklook.write_gif(folder / "series.gif", result.frames, result.scores, result.centres,
                                            frame_ms=self.gif_frame_ms)
                    )
                    written.append(Path(looks["gif"]))
                    looks["montage"] = str(
                        quicklook.write_montage(folder / "montage.png", result.frames, result.scores, result.centres, title)
                    )
                    written.append(Path(looks["montage"]))
                    looks["score_plot"] = str(
                        quicklook.write_score_plot(
                            folder / "scores.png", result.scores, result.centres, result.source_score,
                            self.finding, result.generator_frame_scores,
                        )
                    )
                    written.append(Path(looks["score_plot"]))
        except BaseException:
            _remove(written)
            raise
        tags = result.dicom
        common = {
            "source": result.source,
            "source_sop_instance_uid": tags.get("SOPInstanceUID", ""),
            "study_instance_uid": paths.study_instance_uid,
        }
        frame_rows = [
            dict(
                common,
                step=frame.step,
                target_bin=frame.target_bin,
                target_centre=round(frame.target_centre, 6),
                score=frame.score,
                generator_frame_score=generator_score,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_instance_uid,
                output_file=str(path),
                model_version=self.model_version,
                method=result.method,
                method_detail=detail,
            )
            for frame, generator_score, path, sop_instance_uid, detail in zip(
                info.frames, result.generator_frame_scores, paths, paths.sop_instance_uids,
                _frame_details(result.details, len(paths)),
            )
        ]
        validity = series_validity(
            np.asarray([result.scores]), np.asarray([result.source_score]), bins=result.bins, num_bins=self.num_bins
        )
        source_row = dict(
            common,
            finding=self.finding,
            source_score=result.source_score,
            source_bin=result.source_bin,
            num_frames=len(paths),
            first_score=result.scores[0],
            last_score=result.scores[-1],
            flip_reached=bool(validity.flip_rate),
            monotone=bool(validity.monotone_rate),
            spearman=validity.median_spearman,
            series_instance_uid=series_uid,
            series_dir=str(paths[0].parent),
            **looks,
            model_version=self.model_version,
            method=result.method,
        )
        return frame_rows, source_row, written

    # ------------------------------------------------------------------------------------- many sources

    def run(self, input: str | os.PathLike | None, output_dir: str | os.PathLike) -> InferenceSummary:
        """Explain every image of ``input`` (file, folder or CSV manifest; default: RG1_UNCR.dcm).

        Raises ``FileNotFoundError`` when the input does not exist or holds no candidate files;
        per-file problems are recorded, logged and written to ``errors.csv`` instead.

        Under ``torchrun`` (``WORLD_SIZE`` > 1) the inputs are sharded: rank r explains inputs r,
        r + W, r + 2W, ... of the sorted list, writes its own series and its own partial logs
        (``frames.rank<r>-of-<W>.partial.csv``, ...), and once every rank is done rank 0 merges them
        into ``frames.csv``, ``sources.csv`` and ``errors.csv`` (in input order), removes the
        partials and returns the summary of the whole run; the other ranks return their shard's.
        ``output_dir`` must then be a folder that every rank (every node) can write and read.

        Re-runs into the same ``output_dir``: ``frames.csv`` and ``sources.csv`` list every series in
        the folder (earlier runs' rows whose series folder still exists, then this run's, which replace
        earlier rows of the same series); ``errors.csv`` describes this run only. Temporaries left by a
        killed run are removed first. Two inputs of one run that would write the same series (same SOP
        Instance UID and pixels) are reported in ``errors.csv``, never written twice.
        """
        start = time.perf_counter()
        started_at = time.time()
        records = collect_inputs(input if input not in (None, "") else default_input())
        created_group = _join_process_group()
        try:
            rank, world = _rank_and_world()
            mine = records[rank::world]
            self.prepare()
            output_dir = Path(output_dir).expanduser().resolve()  # absolute paths in the logs and the summary
            logs = _log_paths(output_dir, rank, world)
            for stale in remove_stale_temporaries(output_dir, before=started_at):
                logger.info("removed %s, left by an interrupted run", stale)
            if rank == 0:
                (output_dir / "errors.csv").unlink(missing_ok=True)  # errors.csv describes this run only
            earlier = earlier_logs(output_dir) if world == 1 else None
            summary = InferenceSummary(output_dir=output_dir, num_inputs=len(mine))
            batch_size = self.sources_per_batch()
            logger.info(
                "%sexplaining %d input(s) with %s on %s: bins %s, %s resolution, %d-bit, %d source(s) per batch -> %s",
                f"rank {rank} of {world}: " if world > 1 else "", len(mine), self.model_version, self.device,
                self.bins, self.resolution, self.bits, batch_size, output_dir,
            )
            progress = Progress(len(mine), "exaggeration series", unit="image", log=logger)

            def done(source_row: dict | None) -> None:
                if source_row is not None:
                    summary.num_series += 1
                    summary.num_files += int(source_row["num_frames"])
                    summary.series_dirs.append(source_row["series_dir"])
                    if source_row["gif"]:
                        summary.quicklook_dirs.append(str(Path(source_row["gif"]).parent))
                progress.update(1)

            writer = SeriesWriter(
                write=lambda result: self.write(result, output_dir)[:2],
                series_uid=lambda result: series_instance_uid(result.source, result.meta, self.model_version),
                logs=logs, earlier=earlier, on_done=done, max_pending=2 * batch_size,
            )
            try:
                stream = stream_inputs(mine, SourceReader(self), num_workers=self.num_workers)
                with compute_threads(self.num_workers, self.device):
                    for group in batches(stream, batch_size):
                        started = time.perf_counter()
                        loaded = [(record["image"], *item) for _, record, item in group if not isinstance(item, LoadFailure)]
                        results = iter(self.explain_loaded(loaded) if loaded else [])
                        for _, record, item in group:
                            writer.submit(record["image"], item if isinstance(item, LoadFailure) else next(results), started)
            finally:
                writer.close()
                progress.close()
            summary.failures = writer.failures
            if world > 1 and not summary.failures:  # every rank leaves a partial error log for the merge
                write_csv_atomic(pd.DataFrame(columns=ERROR_COLUMNS), logs["errors"])
            summary.seconds = time.perf_counter() - start
            summary.stage_seconds = {stage: self.timer.seconds.get(stage, 0.0) for stage in STAGES}
            logger.info("time per stage (s): %s", {k: round(v, 2) for k, v in summary.stage_seconds.items()})
            if world > 1:
                summary = _merge_shards(summary, records, output_dir, start)
            return summary
        finally:
            if created_group:
                _leave_process_group()


# ----------------------------------------------------------------------------------------- helpers


class SourceReader:
    """One file -> ``(source, model input)`` with a runner's reader and preprocessing (picklable: runs in reader processes)."""

    def __init__(self, runner: ExaggerationInference) -> None:
        self.loader, self.preprocessing = runner.loader, runner.preprocessing

    def __call__(self, path: str) -> tuple[MetaTensor, MetaTensor]:
        source = self.loader(path)
        return source, self.preprocessing({"image": source})["image"]


def _frame_details(details: dict, count: int) -> list[str]:
    """One text per frame for the ``method_detail`` column: Latent Shift's shift λ (``limit`` where the
    target was not reached), gradient ascent's Adam steps; empty for the explainer."""
    if "shifts" in details:
        return [f"shift={v:g}" + ("" if ok else " (limit)") for v, ok in zip(details["shifts"], details["reached"])]
    if "steps" in details:
        return [f"steps={v}" for v in details["steps"]]
    return [""] * count


def _state_sha256(module: nn.Module) -> str:
    """Hex SHA-256 of a module's state (parameters and buffers, in state-dict order)."""
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in module.state_dict().values())).hexdigest()


def _model_grid_meta(meta: dict, aspect: str) -> dict:
    """``meta`` for a model-size frame: ``source_shape`` becomes the source region the frame shows.

    write_series scales PixelSpacing by ``source_shape / frame shape``; a model-size frame shows the
    padded square (``pad``: side = longer side) or the centred square (``crop``: shorter side), so
    its pixels stay square; ``stretch`` shows the whole image (rows and columns scaled apart).
    """
    shape = meta.get("source_shape")
    if aspect == "stretch" or not shape or len(shape) != 2:
        return meta
    side = max(int(v) for v in shape) if aspect == "pad" else min(int(v) for v in shape)
    return dict(meta, source_shape=[side, side])


def _quicklook_name(source: str, series_uid: str) -> str:
    """``<file stem>-<8 hex of the series UID>``, filesystem-safe (stems repeat across folders)."""
    stem = Path(source).name
    for suffix in (".nii.gz", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{stem[:60]}-{hashlib.sha256(series_uid.encode()).hexdigest()[:8]}"


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
    for folder in {Path(p).parent for p in paths}:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def run_and_exit(
    runner: ExaggerationInference | Callable[[], ExaggerationInference],
    input: Any,
    output_dir: str | os.PathLike,
    export_destination: Any = None,
) -> InferenceSummary:
    """Bundle entry point: run, optionally export, print the summary, and exit non-zero on problems.

    ``runner`` (and ``export_destination``) may be zero-argument factories (``"_mode_": "callable"``
    in the config), so that bad settings are reported here as a message rather than as a
    config-instantiation traceback. ``export_destination`` (a
    :class:`~monai_exaggeration.export.Destination`, or a factory returning one or None) sends every
    written series to that PACS afterwards (ledger and report in ``output_dir``).
    Exit status 2 when the input, the weights or the settings are unusable (nothing is written),
    1 when some inputs failed or did not reach the PACS (the others are written), else the summary
    is returned.

    Under ``torchrun`` every rank explains its shard of the inputs (see
    :meth:`ExaggerationInference.run`; on GPUs rank r uses ``cuda:<LOCAL_RANK>``); rank 0 prints the
    summary of the whole run and does the export, each rank exits with the status of what it did.
    """
    from monai_exaggeration.export import DestinationError

    created_group = _join_process_group()  # before the models are loaded: it selects this rank's GPU
    try:
        try:
            if not isinstance(runner, ExaggerationInference):
                runner = runner()
            destination = export_destination() if callable(export_destination) else export_destination
            runner.prepare()
            summary = runner.run(input, output_dir)
        except (FileNotFoundError, ValueError, DestinationError) as error:
            logger.error("%s", error)
            raise SystemExit(2) from None
        rank, world = _rank_and_world()
        if rank == 0:
            print(summary.describe(), flush=True)
        else:
            logger.info("rank %d of %d: %d series written, %d failed; rank 0 prints the run's summary",
                        rank, world, summary.num_series, len(summary.failures))
        status = summary.exit_code
        if rank == 0 and destination is not None and summary.num_files:
            status = max(status, _export(summary, destination))
        if status:
            raise SystemExit(status)
        return summary
    finally:
        if created_group:
            _leave_process_group()


def _export(summary: InferenceSummary, destination: Any) -> int:
    """Send the run's series to ``destination``; 0 when all arrived, else 1."""
    from monai_exaggeration.export import SendLedger, collect_dicom_files, export_files

    files = collect_dicom_files([summary.output_dir / "frames.csv"])
    try:
        ledger = SendLedger(summary.output_dir / "export_ledger.sqlite")
    except ValueError as error:  # a damaged send ledger: say so, never resend blindly
        logger.error("%s", error)
        return 2
    with ledger:
        report = export_files(files, destination, ledger)
    report.write_csv(summary.output_dir / "export_report.csv")
    print(report.describe() + f"; report: {summary.output_dir / 'export_report.csv'}", flush=True)
    return report.exit_code


# ----------------------------------------------------------------------------------------- torchrun sharding

def _join_process_group() -> bool:
    """Under ``torchrun`` with several processes, join the process group; True when this call created it.

    Gloo even on GPU machines: the ranks only exchange small Python objects (their shard summaries).
    """
    from monai_exaggeration import distributed

    if distributed.is_distributed() or not distributed.launched_by_torchrun() or distributed.get_world_size() < 2:
        return False
    return distributed.init_distributed(backend="gloo")


def _leave_process_group() -> None:
    """Leave the process group without a barrier (this may be an error path other ranks never reach)."""
    from monai_exaggeration import distributed

    distributed.cleanup_distributed(wait=False)


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one."""
    from monai_exaggeration import distributed

    if not distributed.is_distributed():
        return 0, 1
    return distributed.get_rank(), distributed.get_world_size()


def _log_paths(output_dir: Path, rank: int, world: int) -> dict[str, Path]:
    """Where a rank writes its logs: the final names in a single process, else ``<stem>.rank<r>-of-<W>.partial.csv``."""
    if world == 1:
        return {key: output_dir / name for key, (name, _) in RUN_LOGS.items()}
    return {
        key: output_dir / f"{Path(name).stem}.rank{rank}-of-{world}.partial.csv" for key, (name, _) in RUN_LOGS.items()
    }


def _input_order(records: Sequence[dict]) -> dict[str, int]:
    """Position of each source (first occurrence) in the run's input list."""
    order: dict[str, int] = {}
    for index, record in enumerate(records):
        order.setdefault(str(record["image"]), index)
    return order


def _merge_logs(output_dir: Path, world: int, order: dict[str, int]) -> None:
    """Concatenate every rank's partial logs in input order, write the run's logs atomically, remove the partials.

    The partial files are read as text and written back unchanged (no float or boolean reformatting).
    ``errors.csv`` is written only when some input failed, as in a single-process run.
    """
    partials = [_log_paths(output_dir, rank, world) for rank in range(world)]
    missing = [str(paths[key]) for paths in partials for key in RUN_LOGS if not paths[key].is_file()]
    if missing:
        raise FileNotFoundError(
            f"partial logs of some ranks are missing ({', '.join(missing)}): with several nodes, "
            "output_dir must be a folder that all nodes share"
        )
    earlier = earlier_logs(output_dir)  # earlier runs' rows, as in a single-process run
    for key, (name, columns) in RUN_LOGS.items():
        table = pd.concat(
            [pd.read_csv(paths[key], dtype=str, keep_default_na=False) for paths in partials], ignore_index=True
        ).reindex(columns=columns)
        position = np.asarray([order.get(source, len(order)) for source in table["source"]], dtype=np.int64)
        table = table.iloc[np.argsort(position, kind="stable")]
        if key in earlier and len(earlier[key]):
            kept = earlier[key][~earlier[key]["series_instance_uid"].isin(set(table["series_instance_uid"]))]
            table = pd.concat([kept, table], ignore_index=True)
        if key != "errors" or len(table):
            write_csv_atomic(table, output_dir / name)
    for paths in partials:
        for path in paths.values():
            path.unlink(missing_ok=True)


def _merge_shards(
    summary: InferenceSummary, records: Sequence[dict], output_dir: Path, start: float
) -> InferenceSummary:
    """Wait for every rank; rank 0 merges the partial logs and returns the whole run's summary.

    Other ranks return their own ``summary`` once the merged logs exist. If the merge fails, rank 0
    raises its error and the other ranks a ``RuntimeError`` (none of them waits forever).
    """
    from monai_exaggeration import distributed

    rank, world = _rank_and_world()
    shards = distributed.gather_objects(summary)  # after this every rank has finished its shard
    order = _input_order(records)
    distributed.on_main_process(lambda: _merge_logs(output_dir, world, order), what="merging the shards' logs")
    if rank != 0:
        return summary
    failures = sorted(
        (failure for shard in shards for failure in shard.failures),
        key=lambda failure: order.get(str(failure["source"]), len(order)),
    )
    merged = InferenceSummary(
        output_dir=output_dir,
        num_inputs=sum(shard.num_inputs for shard in shards),
        num_series=sum(shard.num_series for shard in shards),
        num_files=sum(shard.num_files for shard in shards),
        failures=failures,
        series_dirs=[folder for shard in shards for folder in shard.series_dirs],
        quicklook_dirs=[folder for shard in shards for folder in shard.quicklook_dirs],
        seconds=time.perf_counter() - start,
        stage_seconds={stage: sum(shard.stage_seconds.get(stage, 0.0) for shard in shards) for stage in STAGES},
    )
    logger.info("merged the logs of %d ranks: %d series, %d failed", world, merged.num_series, len(failures))
    return merged
