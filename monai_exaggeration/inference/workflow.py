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
import pydicom
import torch
from monai.data import MetaTensor
from torch import nn
from tqdm import tqdm

from monai_exaggeration.binning import bin_centre, check_num_bins, posterior_to_bin
from monai_exaggeration.data import collect_inputs, default_input
from monai_exaggeration.dicom import SeriesInfo, write_series
from monai_exaggeration.engines.posteriors import classifier_fingerprint
from monai_exaggeration.engines.series import NORM_MODES, compose_series, generate_series
from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.inference import quicklook
from monai_exaggeration.inference.frames import RESOLUTIONS, full_resolution_frames, select_bins
from monai_exaggeration.metrics import series_validity
from monai_exaggeration.networks.explainer_file import COMPOSITIONS, load_explainer
from monai_exaggeration.transforms import ASPECT_POLICIES, LoadCXR, cxr_preprocessing, to_unit_range
from monai_exaggeration.utils import as_bool, select_device, write_csv_atomic

__all__ = [
    "FRAME_COLUMNS",
    "SOURCE_COLUMNS",
    "ERROR_COLUMNS",
    "STAGES",
    "ExaggerationInference",
    "InferenceSummary",
    "SeriesResult",
    "file_sha256",
    "run_and_exit",
]

logger = logging.getLogger("monai_exaggeration.inference")

#: Columns of ``frames.csv`` (one row per written frame).
FRAME_COLUMNS = [
    "source",
    "source_sop_instance_uid",
    "study_instance_uid",
    "step",
    "target_bin",
    "target_centre",
    "score",
    "generator_frame_score",
    "series_instance_uid",
    "sop_instance_uid",
    "output_file",
    "model_version",
]
#: Columns of ``sources.csv`` (one row per source image that produced a series).
SOURCE_COLUMNS = [
    "source",
    "source_sop_instance_uid",
    "study_instance_uid",
    "finding",
    "source_score",
    "source_bin",
    "num_frames",
    "first_score",
    "last_score",
    "flip_reached",
    "monotone",
    "spearman",
    "series_instance_uid",
    "series_dir",
    "gif",
    "montage",
    "score_plot",
    "seconds",
    "model_version",
]
ERROR_COLUMNS = ["source", "error", "hint"]
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
    frames: np.ndarray  # (K, rows, columns) float32 in [0, 1], exactly the values written
    scores: list[float]  # f of each written frame
    generator_frame_scores: list[float]  # f of the generator's model-size frame
    source_score: float
    source_bin: int

    @property
    def dicom(self) -> dict:
        return self.meta.get("dicom", {})


@dataclass
class InferenceSummary:
    """What a run produced."""

    output_dir: Path
    num_inputs: int = 0
    num_series: int = 0
    num_files: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def exit_code(self) -> int:
        """0 when every input produced its series, 1 when any failed."""
        return 1 if self.failures else 0

    def describe(self) -> str:
        """The final summary printed for the user."""
        out = self.output_dir
        lines = [
            f"{self.num_inputs} input(s): {self.num_series} series written ({self.num_files} DICOM files), "
            f"{len(self.failures)} failed, in {self.seconds:.1f} s.",
            f"  DICOM series : {out / 'dicom'}/<SeriesInstanceUID>/",
            f"  frame log    : {out / 'frames.csv'}",
            f"  source log   : {out / 'sources.csv'}",
            f"  quick-looks  : {out / 'quicklook'}/<name>/series.gif, montage.png, scores.png",
        ]
        if self.failures:
            lines.append(f"  errors       : {out / 'errors.csv'}")
        return "\n".join(lines)


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
    UIDs and any change yields new ones.
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
    ) -> None:
        if generator is None and explainer_weights is None:
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
        self.loader = LoadCXR()
        self.classifier: nn.Module | None = None
        self.timer = _StageTimer(self.device)

    # ------------------------------------------------------------------------------------- set-up

    def prepare(self) -> ExaggerationInference:
        """Load the explainer (architecture from its file), the classifier (idempotent).

        Raises ``FileNotFoundError``/``ValueError`` with a message that says what to do.
        """
        if self.classifier is not None:
            return self
        if self.explainer_weights is not None:
            loaded = load_explainer(self.explainer_weights, network=self.generator)
            self.generator, self.explainer_record = loaded.generator, loaded.record
            self._adopt(loaded.num_bins, loaded.record.get("image_size"), loaded.composition)
        else:
            config = self.generator.config() if hasattr(self.generator, "config") else {}
            self._adopt(config.get("num_bins", self.num_bins), config.get("image_size"), "generated")
        self.generator = self.generator.to(self.device).eval()
        classifier = self._classifier if isinstance(self._classifier, nn.Module) else self._classifier()
        self.classifier = classifier.to(self.device).eval()
        trained_for = self.explainer_record.get("classifier")
        if trained_for and trained_for != (this_one := classifier_fingerprint(self.classifier)):
            logger.warning(
                "the explainer %s was trained against another classifier (fingerprint %s, this one %s): "
                "its series may not move this classifier as intended",
                self.explainer_weights, trained_for, this_one,
            )
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

    @torch.no_grad()
    def explain(self, path: str | os.PathLike) -> SeriesResult:
        """The series of one source file (nothing written). Input problems raise ``CXRInputError``."""
        self.prepare()
        timer = self.timer
        with timer("read"):
            source = self.loader(path)  # (1, rows, columns) in [0, 1]
            model_input = self.preprocessing({"image": source})["image"]  # (1, S, S) in [-1, 1]
        with timer("classifier"):
            source_score = self._score(model_input.as_tensor()[None])[0]
        source_bin = int(posterior_to_bin(torch.tensor(source_score), self.num_bins))
        with timer("generator"):
            series = generate_series(
                self.generator, model_input.as_tensor()[None].to(self.device), self.num_bins, norm=self.norm
            )[0, :, 0].float().cpu()  # (N, S, S)
        with timer("frames"):
            model_frames = compose_series(
                model_input.as_tensor()[None], series[None, :, None], [source_bin], self.composition
            )[0, :, 0]  # the generator's frames as the explainer composes them (N, S, S)
            generated = series[self.bins]
            if self.resolution == "source":
                frames = full_resolution_frames(
                    source[0].numpy(), generated, series[source_bin], model_input, self.preprocessing
                )
            else:
                frames = to_unit_range(model_frames[self.bins]).clamp(0, 1).numpy()
            # Round to the stored grey levels now, so the frames scored below are exactly those written
            # (write_series maps k / levels back to k).
            levels = np.float32(2**self.bits - 1)
            frames = np.rint(np.clip(frames, 0.0, 1.0) * levels) / levels
            if self.resolution == "source":
                as_input = self.as_model_input(frames, source)  # what f sees of the written frames
            else:
                as_input = torch.from_numpy(frames) * 2.0 - 1.0
        with timer("classifier"):
            scores = self._score(as_input[:, None])
            generator_scores = self._score(model_frames[self.bins][:, None])
        centres = bin_centre(torch.tensor(self.bins), self.num_bins).tolist()
        return SeriesResult(
            source=str(path),
            meta=dict(source.meta),
            bins=list(self.bins),
            centres=centres,
            frames=frames,
            scores=scores,
            generator_frame_scores=generator_scores,
            source_score=source_score,
            source_bin=source_bin,
        )

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
        )
        written: list[Path] = []
        try:
            meta = result.meta if self.resolution == "source" else _model_grid_meta(result.meta, self.aspect)
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
            "study_instance_uid": _written_uids(paths[0])[0],
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
                sop_instance_uid=_written_uids(path)[1],
                output_file=str(path),
                model_version=self.model_version,
            )
            for frame, generator_score, path in zip(info.frames, result.generator_frame_scores, paths)
        ]
        validity = series_validity(np.asarray([result.scores]), np.asarray([result.source_score]))
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
        """
        start = time.perf_counter()
        records = collect_inputs(input if input not in (None, "") else default_input())
        created_group = _join_process_group()
        try:
            rank, world = _rank_and_world()
            mine = records[rank::world]
            self.prepare()
            output_dir = Path(output_dir).expanduser().resolve()  # absolute paths in the logs and the summary
            logs = _log_paths(output_dir, rank, world)
            summary = InferenceSummary(output_dir=output_dir, num_inputs=len(mine))
            frame_rows: list[dict] = []
            source_rows: list[dict] = []
            logger.info(
                "%sexplaining %d input(s) with %s on %s: bins %s, %s resolution, %d-bit -> %s",
                f"rank {rank} of {world}: " if world > 1 else "", len(mine), self.model_version, self.device,
                self.bins, self.resolution, self.bits, output_dir,
            )
            progress = tqdm(mine, desc="exaggeration series", unit="image", disable=None)
            for record in progress:
                path = record["image"]
                source_start = time.perf_counter()
                try:
                    result = self.explain(path)
                    frames, source_row, _ = self.write(result, output_dir)
                except Exception as error:  # noqa: BLE001 - one bad input must not stop the others
                    failure = _failure(path, error)
                    logger.error("%s: %s -- %s", path, failure["error"], failure["hint"])
                    summary.failures.append(failure)
                    write_csv_atomic(pd.DataFrame(summary.failures, columns=ERROR_COLUMNS), logs["errors"])
                    continue
                source_row["seconds"] = round(time.perf_counter() - source_start, 3)
                frame_rows.extend(frames)
                source_rows.append(source_row)
                summary.num_series += 1
                summary.num_files += len(frames)
                # Logs are rewritten after every source, so an interrupted run still lists what it wrote.
                write_csv_atomic(pd.DataFrame(frame_rows, columns=FRAME_COLUMNS), logs["frames"])
                write_csv_atomic(pd.DataFrame(source_rows, columns=SOURCE_COLUMNS), logs["sources"])
                progress.set_postfix(score=f"{result.source_score:.2f}->{result.scores[-1]:.2f}")
            if not source_rows:  # still leave empty logs with headers, so scripts can rely on them
                write_csv_atomic(pd.DataFrame(columns=FRAME_COLUMNS), logs["frames"])
                write_csv_atomic(pd.DataFrame(columns=SOURCE_COLUMNS), logs["sources"])
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


def _written_uids(path: Path) -> tuple[str, str]:
    """(StudyInstanceUID, SOPInstanceUID) of a written instance, read back from the file."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
    return str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
    for folder in {Path(p).parent for p in paths}:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def _failure(path: str, error: BaseException) -> dict:
    """One row of ``errors.csv``: what is wrong and what to do."""
    if isinstance(error, CXRInputError):
        return {"source": path, "error": error.problem, "hint": error.hint}
    if isinstance(error, ValueError):
        return {"source": path, "error": str(error), "hint": "check the input image and the inference settings"}
    return {
        "source": path,
        "error": f"{type(error).__name__}: {error}",
        "hint": "unexpected failure; rerun with this file alone and report the log if it persists",
    }


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
    with SendLedger(summary.output_dir / "export_ledger.sqlite") as ledger:
        report = export_files(files, destination, ledger)
    report.write_csv(summary.output_dir / "export_report.csv")
    print(report.describe() + f"; report: {summary.output_dir / 'export_report.csv'}", flush=True)
    return report.exit_code


# ----------------------------------------------------------------------------------------- torchrun sharding

#: The run's CSV logs: key -> (file name, columns).
_RUN_LOGS = {
    "frames": ("frames.csv", FRAME_COLUMNS),
    "sources": ("sources.csv", SOURCE_COLUMNS),
    "errors": ("errors.csv", ERROR_COLUMNS),
}


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
        return {key: output_dir / name for key, (name, _) in _RUN_LOGS.items()}
    return {
        key: output_dir / f"{Path(name).stem}.rank{rank}-of-{world}.partial.csv" for key, (name, _) in _RUN_LOGS.items()
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
    missing = [str(paths[key]) for paths in partials for key in _RUN_LOGS if not paths[key].is_file()]
    if missing:
        raise FileNotFoundError(
            f"partial logs of some ranks are missing ({', '.join(missing)}): with several nodes, "
            "output_dir must be a folder that all nodes share"
        )
    for key, (name, columns) in _RUN_LOGS.items():
        table = pd.concat(
            [pd.read_csv(paths[key], dtype=str, keep_default_na=False) for paths in partials], ignore_index=True
        ).reindex(columns=columns)
        position = np.asarray([order.get(source, len(order)) for source in table["source"]], dtype=np.int64)
        table = table.iloc[np.argsort(position, kind="stable")]
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
        seconds=time.perf_counter() - start,
        stage_seconds={stage: sum(shard.stage_seconds.get(stage, 0.0) for shard in shards) for stage in STAGES},
    )
    logger.info("merged the logs of %d ranks: %d series, %d failed", world, merged.num_series, len(failures))
    return merged
