"""The inference's outputs: the writers a series goes through, its log rows, and the optional PACS export.

A series (:class:`~.results.SeriesResult`) goes through the run's ``writers`` in order, each adding
its files to an :class:`OutputRecord`; ``inference.json`` lists them (``writers``), so they can be
swapped or extended from the config:

* :class:`DicomSeriesWriter` (required, first): the DICOM Secondary Capture series under
  ``dicom/<SeriesInstanceUID>/``;
* :class:`CaptionedCopyWriter`: the burned-in captioned copy under ``dicom/<its SeriesInstanceUID>/``
  (``enabled``; inference.json's ``burned_in_copy``), the same copy as the DICOM node's ``outputs.burned_in``;
* :class:`QuickLookWriter`: ``quicklook/<name>/{series.gif, montage.png, scores.png}`` (``enabled``).

:func:`log_rows` turns the record into its ``frames.csv`` rows and its ``sources.csv`` row (written by
the ordered background writer of :mod:`.logs`); :class:`PacsExport` sends a finished run's series to
a PACS. If a writer fails, every file written for that series is removed again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from monai_exaggeration.dicom import SeriesInfo, write_series
from monai_exaggeration.dicom.secondary_capture import DEFAULT_SERIES_NUMBER, WrittenSeries
from monai_exaggeration.inference import quicklook
from monai_exaggeration.inference.results import InferenceSummary, SeriesResult
from monai_exaggeration.metrics import series_validity
from monai_exaggeration.utils import as_bool, remove_files

__all__ = [
    "CaptionedCopyWriter",
    "DicomSeriesWriter",
    "OutputRecord",
    "PacsExport",
    "QuickLookWriter",
    "SeriesOutput",
    "log_rows",
    "write_outputs",
]

logger = logging.getLogger("monai_exaggeration.inference")


@dataclass
class OutputRecord:
    """What the writers made of one series: the DICOM series, the quick-looks, every file (for clean-up).

    ``products`` holds what any other writer made, under the writer's own key (the captioned copy's
    files are ``products["captioned_copy"]``): a new writer adds its outputs there, without a new field.
    """

    result: SeriesResult
    output_dir: Path
    finding: str
    info: SeriesInfo | None = None  # the series' description, set by the DICOM writer
    series: WrittenSeries | None = None
    looks: dict[str, str] = field(default_factory=lambda: {"gif": "", "montage": "", "score_plot": ""})
    files: list[Path] = field(default_factory=list)
    products: dict[str, list[Path]] = field(default_factory=dict)


class SeriesOutput(Protocol):
    """A writer: adds its files for one series to ``record`` (``inferer`` is the :class:`~.inferer.SeriesInferer`)."""

    def __call__(self, record: OutputRecord, inferer: Any) -> None: ...


class DicomSeriesWriter:
    """The series as DICOM Secondary Capture files (:func:`~monai_exaggeration.dicom.write_series`).

    ``finding`` and ``series_number`` go into the series' descriptions; ``burned_in_annotation_free``
    declares non-DICOM inputs free of text, so their frames say BurnedInAnnotation NO (else it is left out).
    """

    def __init__(self, series_number: int = DEFAULT_SERIES_NUMBER, burned_in_annotation_free: bool = False) -> None:
        self.series_number = int(series_number)
        self.burned_in_annotation_free = as_bool(burned_in_annotation_free, "burned_in_annotation_free")

    def __call__(self, record: OutputRecord, inferer: Any) -> None:
        result = record.result
        meta = result.meta if inferer.resolution == "source" else _model_grid_meta(result.meta, inferer.aspect)
        if self.burned_in_annotation_free and not result.dicom.get("SOPInstanceUID"):
            meta = dict(meta, burned_in_annotation="NO")
        record.info = SeriesInfo.from_scores(
            record.finding,
            inferer.model_version,
            result.scores,
            target_bins=result.bins,
            num_bins=inferer.num_bins,
            series_number=self.series_number,
            method=inferer.series_method.label,
            notes=result.frame_notes or None,
        )
        with inferer.timer("write"):
            record.series = write_series(
                list(result.frames), result.source, meta, record.info, record.output_dir / "dicom", bits=inferer.bits
            )
        record.files.extend(record.series)


def _needs_series(record: OutputRecord, writer: str) -> None:
    """Refuse a writer that runs before the DICOM series exists (a config listing it first)."""
    if record.series is None:
        raise ValueError(f"the {writer} writer needs the DICOM series: list DicomSeriesWriter before it in writers")


class CaptionedCopyWriter:
    """The series again with its captions burned into the pixels, for viewers that show no presentation
    state (OHIF v3, OHIF issue 4106); nothing when not ``enabled``.

    Written by :func:`~monai_exaggeration.dicom.presentation.write_burned_in_series` from the series'
    ``frames.csv`` rows (:func:`log_rows`), as the DICOM node's ``outputs.burned_in`` does: a separate
    series under ``dicom/<its SeriesInstanceUID>/step_XXX.dcm``, one file per frame, SeriesNumber
    = the SC series' + 3, BurnedInAnnotation YES, UIDs derived from the SC series' (the same input
    gives the same UIDs), the frame's caption in ImageComments and the scores in the SeriesDescription.
    Its files join the record's, so they are removed with the series when a later writer fails.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = as_bool(enabled, "burned_in_copy")

    def __call__(self, record: OutputRecord, inferer: Any) -> None:
        if not self.enabled:
            return
        _needs_series(record, "captioned-copy")
        import pandas as pd

        from monai_exaggeration.dicom.presentation import series_rows, write_burned_in_series

        frame_rows, _ = log_rows(record, inferer.model_version, inferer.num_bins)
        with inferer.timer("write"):
            paths = write_burned_in_series(
                series_rows(pd.DataFrame(frame_rows)), record.output_dir / "dicom", record.finding
            )
        record.products["captioned_copy"] = list(paths)
        record.files.extend(paths)


class QuickLookWriter:
    """``series.gif`` (``gif_frame_ms`` per frame), ``montage.png`` and ``scores.png`` of the series; nothing when not ``enabled``."""

    def __init__(self, enabled: bool = True, gif_frame_ms: int = 400) -> None:
        self.enabled = as_bool(enabled, "quicklook")
        self.gif_frame_ms = int(gif_frame_ms)

    def __call__(self, record: OutputRecord, inferer: Any) -> None:
        if not self.enabled:
            return
        _needs_series(record, "quick-look")
        result, finding = record.result, record.finding
        folder = record.output_dir / "quicklook" / _quicklook_name(result.source, record.series.series_instance_uid)
        title = f"{finding}: {Path(result.source).name} (source score {result.source_score:.2f})"
        with inferer.timer("quicklook"):
            self._keep(
                record,
                "gif",
                quicklook.write_gif(
                    folder / "series.gif", result.frames, result.scores, result.centres, frame_ms=self.gif_frame_ms
                ),
            )
            self._keep(
                record,
                "montage",
                quicklook.write_montage(folder / "montage.png", result.frames, result.scores, result.centres, title),
            )
            self._keep(
                record,
                "score_plot",
                quicklook.write_score_plot(
                    folder / "scores.png",
                    result.scores,
                    result.centres,
                    result.source_score,
                    finding,
                    result.generator_frame_scores,
                ),
            )

    @staticmethod
    def _keep(record: OutputRecord, key: str, path: Path) -> None:
        """Record a file as soon as it exists, so that a later failure removes it too."""
        record.looks[key] = str(path)
        record.files.append(Path(path))


def write_outputs(
    result: SeriesResult, output_dir: Path, writers: Sequence[SeriesOutput], inferer: Any, finding: str
) -> OutputRecord:
    """Run ``writers`` on one series; on any error remove every file they wrote before re-raising."""
    record = OutputRecord(result=result, output_dir=Path(output_dir), finding=finding)
    try:
        for writer in writers:
            writer(record, inferer)
        if record.series is None:
            raise ValueError("no writer wrote the DICOM series: writers must include a DicomSeriesWriter")
    except BaseException:
        remove_files(record.files)
        raise
    return record


def log_rows(record: OutputRecord, model_version: str, num_bins: int) -> tuple[list[dict], dict]:
    """The series' ``frames.csv`` rows (one per written frame) and its ``sources.csv`` row."""
    result, series = record.result, record.series
    common = {
        "source": result.source,
        "source_sop_instance_uid": result.dicom.get("SOPInstanceUID", ""),
        "study_instance_uid": series.study_instance_uid,
    }
    shared = {
        "series_instance_uid": series.series_instance_uid,
        "model_version": model_version,
        "method": result.method,
    }
    reached, strength = frame_strengths(result.details, len(series))
    frame_rows = [
        dict(
            common,
            step=frame.step,
            target_bin=frame.target_bin,
            target_centre=round(frame.target_centre, 6),
            score=frame.score,
            generator_frame_score=generator_score,
            reached=ok,
            strength=value,
            sop_instance_uid=sop_instance_uid,
            output_file=str(path),
            method_detail=detail,
            **shared,
        )
        for frame, generator_score, ok, value, path, sop_instance_uid, detail in zip(
            record.info.frames,
            result.generator_frame_scores,
            reached,
            strength,
            series,
            series.sop_instance_uids,
            result.detail_texts or [""] * len(series),
        )
    ]
    validity = series_validity(
        np.asarray([result.scores]), np.asarray([result.source_score]), bins=result.bins, num_bins=num_bins
    )
    source_row = dict(
        common,
        finding=record.finding,
        source_score=result.source_score,
        source_bin=result.source_bin,
        num_frames=len(series),
        first_score=result.scores[0],
        last_score=result.scores[-1],
        flip_reached=bool(validity.flip_rate),
        monotone=bool(validity.monotone_rate),
        spearman=validity.median_spearman,
        series_dir=str(series[0].parent),
        **record.looks,
        **shared,
    )
    return frame_rows, source_row


class PacsExport:
    """Send a finished run's series to ``destination`` (a :class:`~monai_exaggeration.export.Destination`),
    with a send ledger and a report in the output folder (docs/pacs_export.md)."""

    def __init__(self, destination: Any) -> None:
        self.destination = destination

    def __call__(self, summary: InferenceSummary) -> int:
        """0 when every file arrived, 1 when some did not, 2 when the send ledger is damaged."""
        from monai_exaggeration.export import SendLedger, collect_dicom_files, export_files

        files = collect_dicom_files([summary.output_dir / "frames.csv"])
        try:
            ledger = SendLedger(summary.output_dir / "export_ledger.sqlite")
        except ValueError as error:  # a damaged send ledger: say so, never resend blindly
            logger.error("%s", error)
            return 2
        with ledger:
            report = export_files(files, self.destination, ledger)
        report.write_csv(summary.output_dir / "export_report.csv")
        print(report.describe() + f"; report: {summary.output_dir / 'export_report.csv'}", flush=True)
        return report.exit_code


def frame_strengths(details: dict, count: int) -> tuple[list, list]:
    """Per frame: whether it reached its bin centre (``reached``, blank when the method does not say) and
    the strength that made it (``strength``: a method's ``alpha`` or ``shifts`` detail; else blank)."""
    reached = list(details.get("reached") or [""] * count)
    strength = list(details.get("alpha") or details.get("shifts") or [""] * count)
    return reached, strength


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
