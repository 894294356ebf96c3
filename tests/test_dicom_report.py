"""Captions (GSPS, burned-in copies) and the TID 1500 structured report of a written series.

A real series is written once per module from RG1_UNCR.dcm (the real CR chest of pydicom-data);
the presentation state, the report and the burned-in copies are built from its files and its
frames.csv, then read back with pydicom and highdicom and checked with dciodvfy (dicom3tools).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import REPO_ROOT
from dicom_validation import dciodvfy_report

from monai_exaggeration import __version__
from monai_exaggeration.bundle import load_bundle_classifier, load_bundle_segmenter
from monai_exaggeration.dicom.presentation import (
    CAPTION_NOTE,
    FrameCaption,
    burn_in,
    read_series,
    series_rows,
    write_burned_in_series,
    write_presentation_state,
)
from monai_exaggeration.dicom.report import build_report, read_report, write_report
from monai_exaggeration.dicom.secondary_capture import device_uid
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.metrics.ctr import CtrMeasurement, WidthLine
from monai_exaggeration.node.reporter import frame_ctr

EXPLAINER = REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt"
GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools"
)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(rg1: Path, out: Path, **settings) -> tuple[pd.DataFrame, object]:
    runner = ExaggerationInference(
        None, load_bundle_classifier(), explainer_weights=EXPLAINER, quicklook=False, device="cpu", **settings
    )
    summary = runner.run(rg1, out)
    assert summary.exit_code == 0, summary.failures
    frames = pd.read_csv(out / "frames.csv", dtype={"series_instance_uid": str, "sop_instance_uid": str})
    return series_rows(frames), summary


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> pd.DataFrame:
    """RG1's 10-frame series at source resolution (1955 x 1841, 8 bit), as the inference writes it."""
    rows, _ = _run(rg1_uncr, tmp_path_factory.mktemp("series") / "out")
    return rows


@pytest.fixture(scope="module")
def series16(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> pd.DataFrame:
    """RG1's series at model resolution (128 x 128) with 16-bit frames (WindowCenter/Width present)."""
    rows, _ = _run(rg1_uncr, tmp_path_factory.mktemp("series16") / "out", resolution="model", bits=16)
    return rows


def _captions(rows: pd.DataFrame) -> list[str]:
    return [
        f"Frame {int(r.step) + 1}/{len(rows)} | target {r.target_centre:.2f} | cardiomegaly score {r.score:.2f}"
        for r in rows.itertuples()
    ]


def _codes(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _value_code(item) -> tuple[str, str]:
    code = item.ConceptCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


#: A CTR of 0.5 with its two widths, on any frame larger than 100 px.
_WIDTHS = CtrMeasurement(WidthLine(60.5, 30.0, 70.0), WidthLine(62.5, 10.0, 90.0))


def report_rows(series: pd.DataFrame) -> int:
    return int(pydicom.dcmread(series["output_file"].iloc[0], stop_before_pixels=True).Rows)


def report_columns(series: pd.DataFrame) -> int:
    return int(pydicom.dcmread(series["output_file"].iloc[0], stop_before_pixels=True).Columns)


def _check_ohif_conventions(report: pydicom.Dataset, num_frames: int, with_source: bool, widths: int = 0) -> None:
    """What OHIF v3 needs of a TID 1500 report (root 126000, an Image Library Group, tracking identifier
    and UID in every group, a SCOORD for what is to be drawn), the standard codes of issue 28, and the IHE
    AI Results equipment item. ``widths``: how many frames carry the two CTR width polylines."""
    assert _codes(report) == ("126000", "DCM")  # Imaging Measurement Report
    by_code = {_codes(item): item for item in report.ContentSequence}
    library = by_code[("111028", "DCM")]  # Image Library
    library_groups = [item for item in library.ContentSequence if _codes(item) == ("126200", "DCM")]
    assert library_groups and all(item.ValueType == "CONTAINER" for item in library_groups)
    listed = [
        entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library_groups
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    ]
    assert len(listed) == num_frames + (1 if with_source else 0)  # every frame (and the source) in the library
    measurements = by_code[("126010", "DCM")]  # Imaging Measurements
    every_group = [item for item in measurements.ContentSequence if _codes(item) == ("125007", "DCM")]
    groups = [g for g in every_group if any(_codes(i) == ("122157", "DCM") for i in g.ContentSequence)]
    assert len(groups) == num_frames and len(every_group) == num_frames + 2 * widths
    tracking_uids = set()
    for group in every_group:
        if group in groups:
            continue
        items = {_codes(item): item for item in group.ContentSequence}
        tracking_uids.add(items[("112040", "DCM")].UID)
        name = items[("112039", "DCM")].TextValue
        assert name.endswith(("cardiac width", "thoracic width")), name
        site = ("80891009", "SCT") if name.endswith("cardiac width") else ("816094009", "SCT")  # Heart / Thorax
        assert _value_code(items[("363698007", "SCT")]) == site
        width = items[("103355008", "SCT")]  # Width, in pixels
        assert width.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "{pixels}"
        region = items[("111030", "DCM")]  # Image Region: a two-point polyline on the frame
        assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE" and len(region.GraphicData) == 4
        drawn = abs(region.GraphicData[2] - region.GraphicData[0])
        assert drawn == pytest.approx(float(width.MeasuredValueSequence[0].NumericValue), rel=1e-5)
    for group in groups:
        items = {_codes(item): item for item in group.ContentSequence}
        assert items[("112039", "DCM")].TextValue.startswith("Frame ")  # Tracking Identifier
        tracking_uids.add(items[("112040", "DCM")].UID)  # Tracking Unique Identifier
        assert _value_code(items[("121071", "DCM")]) == ("287272002", "SCT")  # Finding: Cardiomegaly
        assert _value_code(items[("363698007", "SCT")]) == ("80891009", "SCT")  # Finding Site: Heart
        assert items[("111001", "DCM")].TextValue and items[("111003", "DCM")].TextValue  # Algorithm Name/Version
        numbers = [item for item in group.ContentSequence if item.ValueType == "NUM"]
        assert _codes(numbers[0]) == ("122157", "DCM")  # Probability
        assert numbers[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "1"
        assert [_codes(item) for item in numbers[1:]] in (
            [("TARGET", "99EXAG"), ("CTR", "99EXAG")],
            [("TARGET", "99EXAG")],
        )  # the two local codes: target bin centre and radiographic CTR
        if len(numbers) == 3:
            assert numbers[2].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "{ratio}"
    assert len(tracking_uids) == num_frames + 2 * widths
    # the local scheme is declared; standard concepts never use it
    assert [item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence] == ["99EXAG"]
    local = _local_concepts(report)
    assert local <= {"TARGET", "CTR"}, local
    _check_processing_equipment(report)


def _local_concepts(dataset: pydicom.Dataset) -> set[str]:
    """Code values of every code item in the local scheme ``99EXAG``, anywhere in ``dataset``."""
    found = set()
    if dataset.get("CodingSchemeDesignator") == "99EXAG" and "CodeValue" in dataset:
        found.add(str(dataset.CodeValue))
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                found |= _local_concepts(item)
    return found


def _check_processing_equipment(instance: pydicom.Dataset) -> None:
    """IHE AI Results: this software in ContributingEquipmentSequence as Processing Equipment (109102)."""
    ours = [
        item
        for item in instance.ContributingEquipmentSequence
        if item.Manufacturer == "monai_exaggeration" and item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    ]
    assert len(ours) == 1, instance.ContributingEquipmentSequence
    (item,) = ours
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert item.ManufacturerModelName == "progressive exaggeration explainer"
    assert f"monai_exaggeration {__version__}" in list(item.SoftwareVersions)
    model_version = list(item.SoftwareVersions)[1]
    assert item.DeviceUID == device_uid("monai_exaggeration", model_version)


def test_presentation_state_captions_every_frame_with_its_score(series: pd.DataFrame, tmp_path: Path) -> None:
    before = {path: _sha256(path) for path in series["output_file"]}
    path = write_presentation_state(series, tmp_path, "cardiomegaly")
    state = pydicom.dcmread(path)
    first = pydicom.dcmread(series["output_file"][0], stop_before_pixels=True)
    assert state.SOPClassUID == GSPS_STORAGE and state.Modality == "PR"
    assert state.StudyInstanceUID == first.StudyInstanceUID and state.PatientID == first.PatientID
    assert state.SeriesInstanceUID != first.SeriesInstanceUID and state.SeriesNumber == first.SeriesNumber + 1
    referenced = [item.ReferencedSOPInstanceUID for item in state.ReferencedSeriesSequence[0].ReferencedImageSequence]
    assert referenced == list(series["sop_instance_uid"])
    assert state.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    annotations = state.GraphicAnnotationSequence
    assert len(annotations) == len(series) == 10
    for annotation, uid, caption in zip(annotations, series["sop_instance_uid"], _captions(series)):
        assert [item.ReferencedSOPInstanceUID for item in annotation.ReferencedImageSequence] == [uid]
        texts = [item.UnformattedTextValue for item in annotation.TextObjectSequence]
        assert texts == [caption, CAPTION_NOTE]
        assert {item.BoundingBoxAnnotationUnits for item in annotation.TextObjectSequence} == {"DISPLAY"}
        assert annotation.GraphicLayer == state.GraphicLayerSequence[0].GraphicLayer
    assert "research use" in state.SeriesDescription and "not for diagnosis" in state.ContentDescription
    assert "PixelData" not in state
    _check_processing_equipment(state)
    assert {path: _sha256(path) for path in series["output_file"]} == before  # the frames are not touched
    again = pydicom.dcmread(write_presentation_state(series, tmp_path / "again", "cardiomegaly"))
    assert again.SOPInstanceUID == state.SOPInstanceUID and again.SeriesInstanceUID == state.SeriesInstanceUID


def test_caption_wording() -> None:
    caption = FrameCaption(frame=3, num_frames=10, target_centre=0.25, score=0.3127, finding="cardiomegaly")
    assert caption.lines == ("Frame 3/10 | target 0.25 | cardiomegaly score 0.31", "Research use, not for diagnosis")


def test_report_follows_tid1500_and_its_scores_equal_frames_csv(
    series: pd.DataFrame, rg1_uncr: Path, tmp_path: Path
) -> None:
    frames = np.stack([image.pixel_array for image in read_series(series, pixels=True)])
    measured = frame_ctr(load_bundle_segmenter(device="cpu"), frames)
    ctr = [m.ratio for m in measured]
    assert all(0.2 < value < 0.8 for value in ctr)
    path = write_report(series, tmp_path, "cardiomegaly", rg1_uncr, measured)
    report = pydicom.dcmread(path)
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    assert report.SOPClassUID == COMPREHENSIVE_SR and report.Modality == "SR"
    assert report.StudyInstanceUID == source.StudyInstanceUID and report.PatientID == source.PatientID
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert report.CompletionFlag == "COMPLETE" and report.VerificationFlag == "UNVERIFIED"
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert evidence == set(series["sop_instance_uid"]) | {source.SOPInstanceUID}
    groups = read_report(path)
    assert len(groups) == len(series)
    # exactly the floats of frames.csv (FloatingPointValue), not rounded
    assert [group["score"] for group in groups] == list(series["score"])
    assert [group["target_centre"] for group in groups] == list(series["target_centre"])
    assert [group["ctr"] for group in groups] == ctr
    rows, columns = frames.shape[1:]
    for group, m in zip(groups, measured):  # the widths as drawn: float32 SCOORDs, on the frame
        for name, line in (("cardiac_width", m.heart), ("thoracic_width", m.thorax)):
            back = group[name]
            assert (back.row, back.left, back.right) == tuple(
                float(np.float32(v)) for v in (line.row, line.left, line.right)
            )
            assert 0 <= back.left < back.right <= columns and 0 < back.row < rows
        assert group["cardiac_width"].width / group["thoracic_width"].width == pytest.approx(group["ctr"], rel=1e-5)
        assert m.thorax.left < m.heart.left < m.heart.right < m.thorax.right  # the heart inside the thorax
    assert [group["frame_sop_instance_uid"] for group in groups] == list(series["sop_instance_uid"])
    assert {group["source_sop_instance_uid"] for group in groups} == {source.SOPInstanceUID}
    assert {group["algorithm_name"] for group in groups} == {"monai_exaggeration progressive exaggeration"}
    assert {group["algorithm_version"] for group in groups} == set(series["model_version"])
    assert groups[2]["tracking_identifier"] == "Frame 3/10 (step 2)"
    # highdicom reads it back as a measurement report with planar ROI groups (every group drawn: OHIF needs a SCOORD)
    document = hd.sr.srread(path)
    assert document.content.get_image_measurement_groups() == []
    planar = document.content.get_planar_roi_measurement_groups()
    assert len(planar) == 3 * len(series)  # per frame: the frame (its outline), the cardiac and the thoracic width
    group = planar[0]
    assert group.roi.graphic_type.value == "POLYLINE" and len(group.roi.value) == 5  # the frame's closed outline
    assert group.roi.value.max(axis=0).tolist() == [float(report_columns(series)), float(report_rows(series))]
    assert group.finding_type.value == "287272002"  # SNOMED CT Cardiomegaly
    assert [m.name.meaning for m in group.get_measurements()] == [
        "Probability",
        "Target bin centre",
        "Cardiothoracic ratio",
    ]
    _check_ohif_conventions(report, len(series), with_source=True, widths=len(series))
    again = pydicom.dcmread(write_report(series, tmp_path / "again", "cardiomegaly", rg1_uncr, measured))
    assert again.SOPInstanceUID == report.SOPInstanceUID


def test_report_leaves_out_missing_ctr_and_checks_its_inputs(series: pd.DataFrame, tmp_path: Path) -> None:
    images = read_series(series)
    ctr = [0.5] * len(series)
    ctr[3] = math.nan
    build_report(images, series, "cardiomegaly", None, ctr).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    _check_ohif_conventions(pydicom.dcmread(tmp_path / "sr.dcm"), len(series), with_source=False)
    groups = read_report(tmp_path / "sr.dcm")
    assert [group["ctr"] for group in groups] == [0.5, 0.5, 0.5, None, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert {group["source_sop_instance_uid"] for group in groups} == {""}  # no source given: the frame only
    with pytest.raises(ValueError, match="CTR values"):
        build_report(images, series, "cardiomegaly", None, ctr[:3])
    with pytest.raises(ValueError, match="images but"):
        build_report(images[:2], series, "cardiomegaly")


def test_burned_in_copy_has_new_uids_and_says_yes(series16: pd.DataFrame, tmp_path: Path) -> None:
    before = {path: _sha256(path) for path in series16["output_file"]}
    paths = write_burned_in_series(series16, tmp_path, "cardiomegaly")
    assert len(paths) == len(series16)
    plain = read_series(series16, pixels=True)
    copies = [pydicom.dcmread(path) for path in paths]
    assert len({copy.SeriesInstanceUID for copy in copies}) == 1
    assert copies[0].SeriesInstanceUID != plain[0].SeriesInstanceUID
    for copy, image, caption in zip(copies, plain, _captions(series16)):
        assert copy.BurnedInAnnotation == "YES"
        assert copy.SOPInstanceUID != image.SOPInstanceUID
        assert copy.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
        assert copy.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in copy.ContributingEquipmentSequence]
        assert "109100" in purposes  # the plain frame's synthesizing equipment is kept
        assert copy.DerivationCodeSequence == image.DerivationCodeSequence
        _check_processing_equipment(copy)  # ... and the caption burning added
        assert copy.StudyInstanceUID == image.StudyInstanceUID and copy.PatientID == image.PatientID
        assert copy.Modality == image.Modality and copy.BitsAllocated == 16
        assert copy.WindowCenter == image.WindowCenter
        assert caption in copy.ImageComments
        changed = copy.pixel_array != image.pixel_array
        assert (
            changed.any()
            and (copy.pixel_array[changed] == 0).sum() + (copy.pixel_array[changed] == 65535).sum() == changed.sum()
        )  # only caption pixels (white text, black outline) changed
        rows_changed = np.flatnonzero(changed.any(axis=1))
        assert rows_changed.min() < 20 and rows_changed.max() > 108 and not changed[40:90].any()
    assert {path: _sha256(path) for path in series16["output_file"]} == before
    again = write_burned_in_series(series16, tmp_path / "again", "cardiomegaly")
    assert [pydicom.dcmread(p).SOPInstanceUID for p in again] == [c.SOPInstanceUID for c in copies]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the source's own non-standard values
def test_captions_and_report_keep_source_values_highdicom_does_not_take(tmp_path: Path) -> None:
    """A source with a one-part name, sex U, a year-only birth date, a colon time and a two-letter
    orientation: the captioned copy, the presentation state and the report are written (highdicom's
    typed arguments reject the date) and keep those values verbatim."""
    import warnings

    from monai_exaggeration.dicom import SeriesInfo, write_series

    tags = {
        "SOPInstanceUID": "1.2.3.4",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1",
        "StudyInstanceUID": "1.2.3",
        "Modality": "DX",
        "PatientName": "ward",
        "PatientSex": "U",
        "PatientBirthDate": "1980",
        "StudyTime": "12:00:00",
        "PatientOrientation": "AL\\F",
        "Laterality": "L",
        "PatientID": "P1",
    }
    frame = np.linspace(0, 1, 96 * 80, dtype=np.float32).reshape(96, 80)
    info = SeriesInfo.from_scores("cardiomegaly", "test-model", [0.2, 0.7], num_bins=10)
    written = write_series(
        [frame, frame[::-1].copy()], None, {"dicom": tags, "source_shape": (96, 80)}, info, tmp_path / "sc"
    )
    rows = pd.DataFrame(
        {
            "step": [0, 1],
            "target_centre": [0.05, 0.15],
            "score": [0.2, 0.7],
            "output_file": [str(p) for p in written],
            "series_instance_uid": written.series_instance_uid,
            "sop_instance_uid": list(written.sop_instance_uids),
            "model_version": "test-model",
        }
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = write_burned_in_series(rows, tmp_path, "cardiomegaly")
        state = pydicom.dcmread(write_presentation_state(rows, tmp_path, "cardiomegaly"))
        report = pydicom.dcmread(write_report(rows, tmp_path, "cardiomegaly"))
    assert not [w for w in caught if "person name" in str(w.message)]
    keywords = ("PatientName", "PatientSex", "PatientBirthDate", "StudyTime", "PatientID", "StudyInstanceUID")
    for path, plain in zip(paths, written):
        copy, image = pydicom.dcmread(path), pydicom.dcmread(plain)
        for keyword in keywords:
            assert str(copy[keyword].value) == str(image[keyword].value) == str(tags[keyword]), keyword
        assert list(copy.PatientOrientation) == ["AL", "F"] and copy.Laterality == "L"
        assert (
            copy.BurnedInAnnotation == "YES"
            and copy.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
        )
    for instance in (state, report):
        for keyword in keywords:
            assert str(instance[keyword].value) == str(tags[keyword]), (instance.Modality, keyword)
    assert [item["frame_sop_instance_uid"] for item in read_report(next(tmp_path.glob("*/report.dcm")))] == list(
        written.sop_instance_uids
    )


def test_burn_in_8_bit_marks_text_white_on_black() -> None:
    pixels = np.full((300, 400), 128, np.uint8)
    out = burn_in(pixels, ("Frame 1/10 | target 0.05 | cardiomegaly score 0.04", CAPTION_NOTE))
    assert out.dtype == np.uint8 and (out == 255).any() and (out == 0).any()
    assert (out[100:200] == 128).all() and (pixels == 128).all()


def test_series_rows_needs_a_series_when_there_are_several(series: pd.DataFrame) -> None:
    two = pd.concat([series, series.assign(series_instance_uid="2.25.1")])
    with pytest.raises(ValueError, match="2 series"):
        series_rows(two)
    assert list(series_rows(two, "2.25.1")["step"]) == list(range(10))
    broken = series.copy()
    broken.loc[0, "sop_instance_uid"] = "2.25.99"
    with pytest.raises(ValueError, match="frames.csv says"):
        read_series(broken)


@needs_dciodvfy
def test_gsps_report_and_burned_in_copy_pass_dciodvfy(
    series: pd.DataFrame, series16: pd.DataFrame, rg1_uncr: Path, tmp_path: Path
) -> None:
    files = {
        "GSPS": write_presentation_state(series, tmp_path, "cardiomegaly"),
        "SR": write_report(series, tmp_path, "cardiomegaly", rg1_uncr, [_WIDTHS] * len(series)),
        "GSPS 16 bit": write_presentation_state(series16, tmp_path, "cardiomegaly"),
        "burned-in": write_burned_in_series(series16, tmp_path, "cardiomegaly")[0],
    }
    for what, path in files.items():
        errors, _warnings = dciodvfy_report(path)
        assert errors == [], f"{what}: {errors}"
