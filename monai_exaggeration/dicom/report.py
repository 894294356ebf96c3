"""A structured report of a written exaggeration series: DICOM Comprehensive SR following TID 1500.

:func:`write_report` builds, from the series' files and its ``frames.csv`` rows, one
Imaging Measurement Report (TID 1500, root concept (126000, DCM), highdicom
:class:`highdicom.sr.MeasurementReport`) with an Image Library (TID 1600: one Image Library Group
(126200, DCM) per modality, listing the frames and the source image) and, per frame, one planar
measurement group (TID 1410) whose image region is the frame's outline (the score is of the whole
frame; a SCOORD in every group is what OHIF v3 needs to show a report at all):

* tracking identifier (112039) ``Frame k/N (step s)`` and a deterministic tracking unique
  identifier (112040);
* finding type: the code of the finding's profile (:mod:`monai_exaggeration.findings`: SNOMED CT
  287272002 "Cardiomegaly"; a finding without a code: a local code), and finding site(s) from the
  profile's region (SNOMED CT 80891009 "Heart" for cardiomegaly; none for a finding without a region);
* measurements: the classifier's score of the frame as written (``frames.csv`` ``score``) as
  (122157, DCM, "Probability"), the target bin centre (local code), and the cardiothoracic ratio of
  the frame when given (``ctr``, local code, unit UCUM ``{ratio}``; NaN is left out);
* with the CTR measured on the frame (a :class:`~monai_exaggeration.metrics.ctr.CtrMeasurement`), two
  more planar groups on the frame: the cardiac width and the thoracic width, each (103355008, SCT,
  "Width") in pixels with its polyline (SCOORD POLYLINE of two points), finding site Heart / Thorax
  (816094009, SCT), so a viewer draws the widths the ratio is made of;
* the source radiograph is evidence and in the Image Library;
* algorithm identification: Algorithm Name (111001) ``monai_exaggeration progressive exaggeration``,
  Algorithm Version (111003) = the model version (``frames.csv`` ``model_version``).

The codes live in :mod:`monai_exaggeration.dicom.codes` (standard ones from pydicom's code
dictionaries; docs/dicom_node.md, "Codes", lists them). The SR goes in the same patient and study as
the series (highdicom copies them from the first evidence instance: the first frame; values its typed
arguments do not take are copied verbatim). Values are stored as DS and, exactly, as
FloatingPointValue, so :func:`read_report` returns the very floats of ``frames.csv``. The two
concepts without a standard code use the local coding scheme ``99EXAG`` (declared in
CodingSchemeIdentificationSequence). ContributingEquipmentSequence names this software as
Processing Equipment (109102) with its Device UID (IHE AI Results).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from monai_exaggeration import __version__
from monai_exaggeration.dicom.codes import (
    CTR,
    LOCAL_SCHEME,
    PIXELS,
    PROBABILITY,
    RATIO,
    TARGET_CENTRE,
    THORAX,
    WIDTH,
    finding_sites,
)
from monai_exaggeration.dicom.presentation import (
    CAPTION_NOTE,
    MODEL_NAME,
    _copy_verbatim,
    _typed_references,
    processing_equipment,
    read_series,
)
from monai_exaggeration.dicom.secondary_capture import DEFAULT_SERIES_NUMBER, SOFTWARE_NAME, derived_uid, device_uid
from monai_exaggeration.findings import finding_profile
from monai_exaggeration.metrics.ctr import CtrMeasurement, WidthLine
from monai_exaggeration.utils import atomic_write

__all__ = [
    "ALGORITHM_NAME",
    "CTR",
    "LOCAL_SCHEME",
    "PROBABILITY",
    "TARGET_CENTRE",
    "build_report",
    "read_report",
    "write_report",
]

ALGORITHM_NAME = "monai_exaggeration progressive exaggeration"
REPORT_SERIES_OFFSET = 2  # SeriesNumber = the SC series' + 2 (presentation state: + 1)
_NO_UNITS = codes.UCUM.NoUnits  # (1, UCUM, "no units")


def _finding_code(finding: str) -> Code:
    """The finding's code from its profile (SNOMED CT for cardiomegaly), else a local code."""
    profile = finding_profile(finding)
    if profile.code is not None:
        return Code(*profile.code)
    return Code(finding.strip().upper().replace(" ", "_")[:16], LOCAL_SCHEME, finding.strip()[:64])


def _library_entry(image: Dataset) -> Dataset:
    """What highdicom's Image Library (TID 1600) reads of ``image``: its references, size and frame of reference.

    The projection radiography descriptors (TID 1603: orientation, imager pixel spacing) are only
    made when the image has both; highdicom would fail on a CR/DX header without them (the SC
    frames copy the source's Modality but have no ImagerPixelSpacing).
    """
    entry = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in image:
            entry[keyword] = image[keyword]
    orientation = [str(value) for value in (image.get("PatientOrientation") or [])]
    described = len(orientation) == 2 and all(orientation) and len(image.get("ImagerPixelSpacing") or []) == 2
    entry.Modality = str(image.get("Modality", "OT")) if described else "OT"
    if described:
        entry.PatientOrientation = orientation
        entry.ImagerPixelSpacing = image.ImagerPixelSpacing
    return entry


def _measurement(name: Code, value: float, unit: Code, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)


def _ratio(value: float | CtrMeasurement | None) -> float | None:
    """The CTR of one frame as a finite float, or None."""
    ratio = value.ratio if isinstance(value, CtrMeasurement) else value
    return float(ratio) if ratio is not None and math.isfinite(float(ratio)) else None


#: The two widths of a CTR: (name in the tracking identifier, attribute of CtrMeasurement, finding site).
_WIDTHS = (("cardiac width", "heart", hd.sr.FindingSite(codes.SCT.Heart)), ("thoracic width", "thorax", None))


def _polyline(points: list[tuple[float, float]], image: Dataset) -> hd.sr.ImageRegion:
    """A SCOORD POLYLINE of (column, row) ``points`` on ``image``."""
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(points, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID),
    )


def _whole_frame(image: Dataset) -> hd.sr.ImageRegion:
    """The frame's outline (a closed polyline along its edges): the region of a whole-image measurement."""
    rows, columns = float(image.Rows), float(image.Columns)
    return _polyline([(0.0, 0.0), (columns, 0.0), (columns, rows), (0.0, rows), (0.0, 0.0)], image)


def _width_groups(
    measured: CtrMeasurement,
    image: Dataset,
    identifier: str,
    uid: Callable[[str], str],
    finding_type: Code,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The cardiac and thoracic widths of one frame's CTR: a planar measurement group each, with its polyline."""
    groups = []
    for name, attribute, site in _WIDTHS:
        line: WidthLine = getattr(measured, attribute)
        region = _polyline([(line.left, line.row), (line.right, line.row)], image)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid(name), identifier=f"{identifier} {name}"),
                referenced_region=region,
                finding_type=finding_type,
                finding_sites=[site or hd.sr.FindingSite(THORAX)],
                algorithm_id=algorithm,
                measurements=[_measurement(WIDTH, line.width, PIXELS, algorithm)],
            )
        )
    return groups


def _frame_groups(
    images: Sequence[Dataset],
    rows: pd.DataFrame,
    finding: str,
    ctr: Sequence[float | CtrMeasurement | None] | None,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: Callable[..., str],
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """Per frame, its group on the frame's outline, then (with a :class:`CtrMeasurement`) its two width groups."""
    finding_type = _finding_code(finding)
    sites = [
        hd.sr.FindingSite(anatomic_location=location, laterality=laterality)
        for location, laterality in finding_sites(finding_profile(finding).region)
    ]
    groups = []
    for index, (image, row) in enumerate(zip(images, rows.itertuples())):
        measurements = [
            _measurement(PROBABILITY, row.score, _NO_UNITS, algorithm),
            _measurement(TARGET_CENTRE, row.target_centre, _NO_UNITS, algorithm),
        ]
        ratio = _ratio(ctr[index]) if ctr is not None else None
        if ratio is not None:
            measurements.append(_measurement(CTR, ratio, RATIO, algorithm))
        step = int(row.step)
        identifier = f"Frame {step + 1}/{len(rows)} (step {step})"
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid("sr-group", step), identifier=identifier),
                referenced_region=_whole_frame(image),  # the score is of the whole frame
                finding_type=finding_type,
                finding_sites=sites,
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
        if ratio is not None and isinstance(ctr[index], CtrMeasurement):
            groups += _width_groups(
                ctr[index],
                image,
                identifier,
                lambda name, step=step: uid("sr-width", step, name),
                finding_type,
                algorithm,
            )
    return groups


def build_report(
    images: Sequence[Dataset],
    rows: pd.DataFrame,
    finding: str,
    source: Dataset | None = None,
    ctr: Sequence[float | CtrMeasurement | None] | None = None,
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 SR of one series: ``images`` (its SC headers) and ``rows`` (its frames.csv rows) in step order.

    ``source``: the source image's header (recorded as evidence and in the Image Library);
    ``ctr``: per frame, a cardiothoracic ratio, or a :class:`CtrMeasurement` (the ratio and the two widths,
    drawn as polylines on the frame), or None; or None for no CTR at all.
    """
    if len(images) != len(rows) or not len(rows):
        raise ValueError(f"{len(images)} images but {len(rows)} frames.csv rows")
    if ctr is not None and len(ctr) != len(rows):
        raise ValueError(f"{len(ctr)} CTR values for {len(rows)} frames")
    versions = set(rows["model_version"].astype(str))
    if len(versions) != 1:
        raise ValueError(f"the frames of one series name {len(versions)} model versions: {sorted(versions)}")
    model_version = versions.pop()
    first = images[0]
    images, verbatim = _typed_references(images)  # values highdicom does not take are copied at the end
    series_uid = str(images[0].SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=model_version, parameters=[f"finding={finding}"], manufacturer=SOFTWARE_NAME
    )
    groups = _frame_groups(
        images, rows, finding, ctr, algorithm, lambda *parts: derived_uid(series_uid, model_version, *parts)
    )
    evidence = [*images, *([source] if source is not None else [])]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(SOFTWARE_NAME, model_version),  # the Device UID of the Contributing Equipment item too
        name=SOFTWARE_NAME,
        manufacturer_name=SOFTWARE_NAME,
        model_name=MODEL_NAME,
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device)
        ),
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=groups,
        referenced_images=[_library_entry(image) for image in evidence],  # Image Library Group(s) (126200)
    )
    report = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content,
        series_instance_uid=derived_uid(series_uid, model_version, "sr-series"),
        series_number=int(images[0].get("SeriesNumber") or DEFAULT_SERIES_NUMBER) + REPORT_SERIES_OFFSET,
        sop_instance_uid=derived_uid(series_uid, model_version, "sr"),
        instance_number=1,
        manufacturer=SOFTWARE_NAME,
        is_complete=True,
        series_description=f"Exaggeration report - {CAPTION_NOTE.lower()}"[:64],
        manufacturer_model_name=MODEL_NAME,
        software_versions=[f"{SOFTWARE_NAME} {__version__}"[:64], model_version],
        contributing_equipment=[
            processing_equipment(model_version, "Measurements of the counterfactual frames; " + CAPTION_NOTE.lower())
        ],
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME,
                name="monai_exaggeration local codes",
                responsible_organization="monai_exaggeration",
            )
        ],
    )
    _copy_verbatim(report, first, verbatim)
    return report


def write_report(
    rows: pd.DataFrame,
    dicom_dir: str | os.PathLike,
    finding: str,
    source: str | os.PathLike | Dataset | None = None,
    ctr: Sequence[float] | None = None,
) -> Path:
    """Write the SR of one series (``rows`` from :func:`~.presentation.series_rows`) under ``dicom_dir``.

    ``source`` is the source DICOM file (or its header); a non-DICOM source is not referenced.
    Returns ``<dicom_dir>/<SR series UID>/report.dcm``.
    """
    header = source
    if source is not None and not isinstance(source, Dataset):
        try:
            header = pydicom.dcmread(source, stop_before_pixels=True, force=True)
        except (OSError, pydicom.errors.InvalidDicomError):
            header = None
        if header is not None and not ("SOPInstanceUID" in header and "SOPClassUID" in header):
            header = None  # PNG/JPEG/NIfTI sources have nothing to reference
    report = build_report(read_series(rows), rows, finding, header, ctr)
    path = Path(dicom_dir) / str(report.SeriesInstanceUID) / "report.dcm"
    return atomic_write(path, lambda tmp: report.save_as(tmp, enforce_file_format=True))


def _key(code: Code) -> tuple[str, str]:
    return code.scheme_designator, code.value


def _region_frame(group) -> str:
    """The SOP Instance UID of the image a planar group's region is drawn on."""
    return str(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _frame_entry(group, frame: str) -> dict:
    """What :func:`read_report` returns of one frame's measurement group (``frame``: the frame's SOP Instance UID)."""
    values = {_key(m.name): m.value for m in group.get_measurements()}
    texts = {
        item.ConceptNameCodeSequence[0].CodeValue: str(item.TextValue)
        for container in group
        for item in container.get("ContentSequence", [])
        if item.ValueType == "TEXT"
    }
    return {
        "tracking_identifier": group.tracking_identifier,
        "frame_sop_instance_uid": frame,
        "score": values.get(_key(PROBABILITY), values.get((LOCAL_SCHEME, "SCORE"))),  # 0.9's local code
        "target_centre": values.get(_key(TARGET_CENTRE)),
        "ctr": values.get(_key(CTR)),
        "algorithm_name": texts.get(codes.DCM.AlgorithmName.value, ""),
        "algorithm_version": texts.get(codes.DCM.AlgorithmVersion.value, ""),
    }


def read_report(path: str | os.PathLike) -> list[dict]:
    """One dict per frame of a report written by :func:`write_report`, in document order.

    Keys: ``tracking_identifier``, ``frame_sop_instance_uid``, ``source_sop_instance_uid`` (the evidence
    that is not a frame; "" when none), ``score``, ``target_centre``, ``ctr`` (None when absent),
    ``cardiac_width`` and ``thoracic_width`` (:class:`~monai_exaggeration.metrics.ctr.WidthLine` on the frame,
    None when absent), ``algorithm_name``, ``algorithm_version``.
    """
    document = hd.sr.srread(path)
    frames: list[dict] = []
    widths: dict[str, dict[str, WidthLine]] = {}
    for group in document.content.get_planar_roi_measurement_groups():
        if group.roi is None:
            continue
        frame = _region_frame(group)
        name = group.tracking_identifier.rsplit(")", 1)[-1].strip()  # "" for a frame, else "cardiac width" / …
        if name:
            (left, row), (right, _) = group.roi.value.tolist()[:2]
            widths.setdefault(frame, {})[name] = WidthLine(float(row), float(left), float(right))
            continue
        frames.append(_frame_entry(group, frame))
    for group in document.content.get_image_measurement_groups():  # reports of 0.10 and earlier: TID 1501
        images = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in group.source_images]
        frames.append(_frame_entry(group, str(images[0]) if images else ""))
    header = pydicom.dcmread(path, stop_before_pixels=True)
    evidence = [
        str(item.ReferencedSOPInstanceUID)
        for study in header.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    shown = {entry["frame_sop_instance_uid"] for entry in frames}
    sources = [uid for uid in evidence if uid not in shown]
    for entry in frames:
        entry["source_sop_instance_uid"] = sources[0] if sources else ""
        for name in ("cardiac width", "thoracic width"):
            entry[name.replace(" ", "_")] = widths.get(entry["frame_sop_instance_uid"], {}).get(name)
    return frames
