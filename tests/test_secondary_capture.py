"""DICOM Secondary Capture output of a progressive-exaggeration series (docs/method.md, "DICOM conventions")."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_report
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from monai_exaggeration import __version__, dicom
from monai_exaggeration.dicom import (
    FrameInfo,
    SeriesInfo,
    WrittenSeries,
    derived_uid,
    quantise_frame,
    write_series,
)
from monai_exaggeration.dicom.secondary_capture import device_uid
from monai_exaggeration.transforms import read_cxr

MODEL = "cxr-test-model-1.0"
SCORES = [0.0512, 0.4873, 0.9321]
PATIENT_STUDY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _info(**kwargs) -> SeriesInfo:
    return SeriesInfo.from_scores("cardiomegaly", MODEL, SCORES, num_bins=10, target_bins=[0, 5, 9], **kwargs)


def _frames(pixels: np.ndarray) -> list[np.ndarray]:
    """The source and two modified copies (a brightened band, an inverted corner): not symmetric."""
    brighter = pixels.copy()
    brighter[100:400, :] = np.clip(brighter[100:400, :] + 0.2, 0, 1)
    corner = pixels.copy()
    corner[:300, :500] = 1.0 - corner[:300, :500]
    return [pixels, brighter, corner]


@pytest.fixture(scope="module")
def rg1(rg1_uncr: Path):
    image = read_cxr(rg1_uncr)
    return rg1_uncr, image, pydicom.dcmread(rg1_uncr, stop_before_pixels=True)


@pytest.fixture(scope="module")
def written(rg1, tmp_path_factory):
    """The RG1 series written at 8 and 16 bits: {bits: (frames, paths)}."""
    path, image, _ = rg1
    frames = _frames(image.pixels)
    out = tmp_path_factory.mktemp("sc")
    return {
        bits: (frames, write_series(frames, path, image.meta, _info(), out / f"b{bits}", bits=bits)) for bits in (8, 16)
    }


# ------------------------------------------------------------------------------------------ UIDs


def test_derived_uid_is_deterministic_valid_and_distinct():
    uid = derived_uid("1.2.3.4", MODEL, 0)
    assert uid == derived_uid("1.2.3.4", MODEL, 0)
    assert uid.is_valid and UID_PATTERN.match(uid) and len(uid) <= 64 and uid.startswith("2.25.")
    others = {
        derived_uid("1.2.3.4", MODEL, 1),
        derived_uid("1.2.3.4", MODEL, "0"),  # int and str parts differ
        derived_uid("1.2.3.5", MODEL, 0),
        derived_uid("1.2.3.4", MODEL + "x", 0),
        derived_uid("1.2.3.4", MODEL, "series"),
        derived_uid("1.2.3.4", MODEL, 0, 0),
    }
    assert uid not in others and len(others) == 6
    # unambiguous encoding: ("ab", "c") is not ("a", "bc")
    assert derived_uid("1.2", "3", "4") != derived_uid("1.2", "", "34")
    with pytest.raises(ValueError):
        derived_uid("", MODEL, 0)


# ------------------------------------------------------------------------------------------ RG1 series


@pytest.mark.parametrize("bits", [8, 16])
def test_rg1_series_attributes(written, rg1, bits):
    source = rg1[2]
    paths = written[bits][1]
    assert [p.name for p in paths] == ["step_000.dcm", "step_001.dcm", "step_002.dcm"]
    datasets = [pydicom.dcmread(p) for p in paths]
    pixel_key = rg1[1].meta["pixel_sha256"]
    series_uid = derived_uid(source.SOPInstanceUID, MODEL, "series", pixel_key)
    assert all(p.parent.name == series_uid for p in paths)
    for step, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        for keyword in PATIENT_STUDY:
            assert str(ds.get(keyword, "")) == str(source.get(keyword, "")), keyword
        assert ds.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
        assert ds.SOPInstanceUID == derived_uid(source.SOPInstanceUID, MODEL, step, pixel_key)
        assert ds.InstanceNumber == step + 1 and ds.SeriesNumber == 900
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.ConversionType == "SYN"
        assert "BurnedInAnnotation" not in source and "BurnedInAnnotation" not in ds  # unknown: not guessed
        assert ds.Modality == "OT"  # synthesized frames; a CR series would not scroll as one stack in OHIF
        assert list(ds.PatientOrientation) == list(source.PatientOrientation) == ["L", "F"]
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored) == (bits, bits)
        assert len(ds.SourceImageSequence) == 1
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        # IHE AI Results: the source's purpose of reference is (121322, DCM)
        (purpose,) = ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "121322",
            "DCM",
            "Source image for image processing operation",
        )
        # CID 7203: frames on the source's grid are the source plus the change carried to its grid
        assert [(item.CodeValue, item.CodingSchemeDesignator) for item in ds.DerivationCodeSequence] == [
            ("113042", "DCM"),
            ("113085", "DCM"),
        ]
        assert "not for diagnosis" in ds.SeriesDescription and "cardiomegaly" in ds.SeriesDescription
        assert len(ds.SeriesDescription) <= 64
        bin_, centre = [0, 5, 9][step], ([0, 5, 9][step] + 0.5) / 10
        assert f"{SCORES[step]:.4f}" in ds.ImageComments
        assert f"Step {step}" in ds.ImageComments and f"target bin {bin_}" in ds.ImageComments
        assert f"{centre:.4f}" in ds.ImageComments
        assert "cardiomegaly" in ds.DerivationDescription and MODEL in ds.DerivationDescription
        assert f"target bin {bin_}" in ds.DerivationDescription
        ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "monai_exaggeration"]
        assert len(ours) == 1
        (purpose,) = ours[0].PurposeOfReferenceCodeSequence  # CID 7005: synthesized from the source
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "109100",
            "DCM",
            "Synthesizing Equipment",
        )
        assert MODEL in list(ours[0].SoftwareVersions)
        assert f"monai_exaggeration {__version__}" in list(ours[0].SoftwareVersions)
        assert ours[0].ManufacturerModelName == "progressive exaggeration explainer"
        assert ours[0].DeviceUID == device_uid("monai_exaggeration", MODEL) and UID_PATTERN.match(ours[0].DeviceUID)
        acquisition = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == source.Manufacturer]
        assert acquisition[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109101"  # the source's equipment
        assert ds.Manufacturer == "monai_exaggeration"
        if bits == 16:
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (32767.5, 65536.0)
        else:
            assert "WindowCenter" not in ds
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3


@pytest.mark.parametrize("bits", [8, 16])
def test_write_series_returns_the_uids_it_wrote(written, bits):
    """Callers take the UIDs from the result instead of reading every file back."""
    series = written[bits][1]
    assert isinstance(series, WrittenSeries)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.paths]
    assert list(series) == list(series.paths) and len(series) == 3 and series[-1] == series.paths[2]
    assert list(series.sop_instance_uids) == [str(ds.SOPInstanceUID) for ds in datasets]
    assert {str(ds.SeriesInstanceUID) for ds in datasets} == {series.series_instance_uid} == {series[0].parent.name}
    assert {str(ds.StudyInstanceUID) for ds in datasets} == {series.study_instance_uid}
    assert all(
        type(uid) is str for uid in (series.series_instance_uid, series.study_instance_uid, *series.sop_instance_uids)
    )


def test_public_api_has_no_private_types_or_validators():
    """``write_series`` builds the instances; no helper taking the private context, no dciodvfy runner."""
    assert "build_instance" not in dicom.__all__ and not hasattr(dicom, "build_instance")
    assert not [name for name in dir(dicom) if "dciodvfy" in name]


@pytest.mark.parametrize("bits", [8, 16])
def test_rg1_pixels_round_trip_exact_and_not_transposed(written, bits):
    import highdicom as hd

    frames, paths = written[bits]
    for frame, path in zip(frames, paths):
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        assert stored.shape == (1955, 1841) == frame.shape
        assert stored.dtype == (np.uint8 if bits == 8 else np.uint16)
        np.testing.assert_array_equal(stored, quantise_frame(frame, bits))
        # the full range: 0 -> 0, 1 -> 2**bits - 1
        assert quantise_frame(np.array([[0.0, 0.5, 1.0]]), bits).tolist() == [
            [0, round((2**bits - 1) / 2), 2**bits - 1]
        ]
        # highdicom reads it back as an image (0.28 has hd.imread; SCImage.from_dataset is not in this version)
        image = hd.imread(path)
        assert image.SOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_array_equal(image.get_frame(1), stored)
    # the written file reads back through the project's reader (polarity, VOI window) within quantisation
    back = read_cxr(paths[1]).pixels
    assert back.shape == (1955, 1841)
    assert np.abs(back - frames[1]).max() <= 1.0 / (2**bits - 1)


def test_rerun_gives_identical_uids(written, rg1, tmp_path):
    path, image, _ = rg1
    frames, first = written[8]
    again = write_series(frames, path, image.meta, _info(), tmp_path, bits=8)

    def ids(paths):
        return [(pydicom.dcmread(p).SeriesInstanceUID, pydicom.dcmread(p).SOPInstanceUID) for p in paths]

    assert ids(again) == ids(first)
    assert [p.relative_to(tmp_path) for p in again] == [p.relative_to(p.parents[1]) for p in first]
    # another model version: a new series with new instances
    other = _info()
    other.model_version = "cxr-test-model-2.0"
    uids = {
        pydicom.dcmread(p).SOPInstanceUID
        for p in write_series(
            frames[:1],
            path,
            image.meta,
            SeriesInfo("cardiomegaly", "cxr-test-model-2.0", [FrameInfo(0, 0, 0.05, 0.1)]),
            tmp_path / "v2",
        )
    }
    assert uids.isdisjoint({uid for _, uid in ids(first)})


@pytest.mark.parametrize("bits", [8, 16])
def test_dciodvfy_reports_no_errors(written, bits):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    _, paths = written[bits]
    errors, warnings = dciodvfy_report(paths[0])
    assert errors == [], errors
    # The warnings allowed: a value copied verbatim from the source ("ward", a one-part name), and the
    # Device UID of the Contributing Equipment item (in the current standard's SOP Common module, not
    # in the 2022 dictionary of Debian's dicom3tools, which then calls the SOP class "Standard Extended").
    allowed = ("Referring Physician", "(0x0018,0x1002) UI Device UID", "Standard Extended SOP Class")
    assert all(any(text in line for text in allowed) for line in warnings), warnings


# ------------------------------------------------------------------------------------------ non-DICOM source


def test_png_source_gets_marked_deterministic_patient_and_study(nih_dir, tmp_path):
    png = min((nih_dir / "true").glob("*.png"))
    image = read_cxr(png)
    frames = [image.pixels, 1.0 - image.pixels]
    info = SeriesInfo.from_scores("cardiomegaly", MODEL, [0.2, 0.8])
    first = write_series(frames, png, image.meta, info, tmp_path / "a", bits=8)
    copy = tmp_path / "renamed_copy.png"
    shutil.copyfile(png, copy)
    second = write_series(frames, copy, read_cxr(copy).meta, info, tmp_path / "b", bits=8)
    a, b = pydicom.dcmread(first[0]), pydicom.dcmread(second[0])
    assert re.fullmatch(r"EXAG-[0-9A-F]{16}", a.PatientID)
    assert str(a.PatientName) == "ANONYMOUS^EXAGGERATION"
    assert "non-DICOM" in a.StudyDescription
    assert a.StudyInstanceUID.is_valid and a.StudyInstanceUID == pydicom.dcmread(first[1]).StudyInstanceUID
    assert "SourceImageSequence" not in a
    assert [item.CodeValue for item in a.DerivationCodeSequence] == ["113042", "113085"]  # on the PNG's grid
    assert a.Modality == "OT" and a.PatientOrientation == "" and a.ConversionType == "SYN"
    assert a.BodyPartExamined == "CHEST"
    assert "non-DICOM file sha256:" in a.DerivationDescription
    assert str(png.name) not in str(a.to_json_dict())  # no file name (may identify the patient) written
    for keyword in ("PatientID", "StudyInstanceUID", "StudyID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a[keyword].value == b[keyword].value, keyword  # same content -> same identity
    other_png = sorted((nih_dir / "true").glob("*.png"))[1]
    other = write_series(frames, other_png, read_cxr(other_png).meta, info, tmp_path / "c", bits=8)
    c = pydicom.dcmread(other[0])
    assert c.PatientID != a.PatientID and c.StudyInstanceUID != a.StudyInstanceUID
    if shutil.which("dciodvfy"):
        errors, warnings = dciodvfy_report(first[0])
        assert errors == [], errors
        assert not [line for line in warnings if "Laterality" in line], warnings


def test_png_without_path_is_a_clear_error(tmp_path):
    info = SeriesInfo.from_scores("cardiomegaly", MODEL, [0.5])
    with pytest.raises(ValueError, match="no file is given"):
        write_series([np.zeros((8, 8), np.float32)], None, {"dicom": {}}, info, tmp_path)


# ------------------------------------------------------------------------------------------ failures


def _png(tmp_path: Path) -> tuple[Path, dict]:
    import imageio.v3 as iio

    path = tmp_path / "src.png"
    iio.imwrite(path, (np.arange(48 * 40) % 256).astype(np.uint8).reshape(48, 40))
    return path, read_cxr(path).meta


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((48, 41), np.float32), "shape"),
        (np.zeros((48, 40), np.int32), "dtype"),
        (np.full((48, 40), np.nan, np.float32), "NaN"),
        (np.full((48, 40), -1.0, np.float32), r"\[0, 1\]"),
        (np.zeros((1, 48, 40), np.float32), "2-D"),
    ],
)
def test_bad_frame_leaves_nothing_and_raises_value_error(tmp_path, bad, message):
    source, meta = _png(tmp_path)
    out = tmp_path / "out"
    good = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    info = SeriesInfo.from_scores("cardiomegaly", MODEL, [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match=message):
        write_series([good, bad, good], source, meta, info, out)
    assert not out.exists() or list(out.rglob("*")) == []


def test_failure_while_writing_rolls_back_the_series(tmp_path, monkeypatch):
    """An error after the first files are on disk (e.g. disk full) removes them and leaves no temporary file."""
    from monai_exaggeration.dicom import secondary_capture as sc

    source, meta = _png(tmp_path)
    out = tmp_path / "out"
    frame = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    info = SeriesInfo.from_scores("cardiomegaly", MODEL, [0.1, 0.5, 0.9])
    real_build, calls = sc._build_instance, []

    def failing_build(ctx, array, frame_info, bits):
        calls.append(frame_info.step)
        if frame_info.step == 2:
            raise OSError("No space left on device")
        return real_build(ctx, array, frame_info, bits)

    monkeypatch.setattr(sc, "_build_instance", failing_build)
    with pytest.raises(OSError, match="No space"):
        write_series([frame] * 3, source, meta, info, out)
    assert calls == [0, 1, 2]
    assert list(out.rglob("*")) == []

    # a failure inside the atomic write itself leaves no temporary file either
    monkeypatch.setattr(sc, "_build_instance", real_build)
    real_save = pydicom.Dataset.save_as

    def half_save(self, filename, *args, **kwargs):
        if self.InstanceNumber == 2:
            Path(filename).write_bytes(b"partial")
            raise OSError("disk error")
        return real_save(self, filename, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", half_save)
    with pytest.raises(OSError, match="disk error"):
        write_series([frame] * 3, source, meta, info, out)
    assert list(out.rglob("*")) == []


def test_transposed_frames_and_bad_arguments_are_rejected(rg1, tmp_path):
    path, image, _ = rg1
    info = SeriesInfo.from_scores("cardiomegaly", MODEL, [0.5])
    with pytest.raises(ValueError, match="transposed"):
        write_series([image.pixels.T], path, image.meta, info, tmp_path)
    with pytest.raises(ValueError, match="bits"):
        write_series([image.pixels], path, image.meta, info, tmp_path, bits=12)
    with pytest.raises(ValueError, match="2 frames"):
        write_series([image.pixels] * 2, path, image.meta, info, tmp_path)
    with pytest.raises(ValueError):
        SeriesInfo.from_scores("cardiomegaly", MODEL, [1.5])
    assert list(tmp_path.rglob("*.dcm")) == []


def test_long_finding_keeps_series_description_within_64_chars(tmp_path):
    source, meta = _png(tmp_path)
    info = SeriesInfo.from_scores("enlarged cardiomediastinum and pleural effusion", MODEL, [0.5])
    frame = np.zeros((48, 40), np.float32)
    ds = pydicom.dcmread(write_series([frame], source, meta, info, tmp_path / "o")[0])
    assert len(ds.SeriesDescription) <= 64 and ds.SeriesDescription.endswith("not for diagnosis")


def test_frames_off_the_source_grid_are_derived_by_resampling_only(tmp_path):
    """Frames at model resolution (not the source's pixel matrix): derivation code 113085 alone."""
    source, meta = _png(tmp_path)
    info = SeriesInfo.from_scores("cardiomegaly", MODEL, [0.5])
    ds = pydicom.dcmread(write_series([np.zeros((24, 20), np.float32)], source, meta, info, tmp_path / "o")[0])
    assert [(item.CodeValue, item.CodeMeaning) for item in ds.DerivationCodeSequence] == [
        ("113085", "Spatial resampling")
    ]
    assert "SourceImageSequence" not in ds  # a PNG: nothing to reference, but the equipment is named
    (ours,) = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "monai_exaggeration"]
    assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "109100" and ours.DeviceUID


# ------------------------------------------------------------------------------------------ source values


def _flat_source(**tags) -> dict:
    base = {
        "SOPInstanceUID": "1.2.3.4",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1",
        "StudyInstanceUID": "1.2.3",
        "Modality": "DX",
    }
    return {"dicom": dict(base, **tags), "source_shape": (48, 40), "pixel_sha256": "ab" * 32}


def _record_sc_arguments(monkeypatch) -> dict:
    """The keyword arguments ``write_series`` gives highdicom's SCImage constructor (last call)."""
    import highdicom as hd

    seen, real = {}, hd.sc.SCImage

    def recording(**kwargs):
        seen.clear()
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(hd.sc, "SCImage", recording)
    return seen


def test_typed_patient_study_laterality_and_orientation(tmp_path, monkeypatch):
    """Values highdicom takes go through its constructor and come out as the source has them."""
    import warnings

    tags = dict(
        PatientName="Doe^Jane",
        ReferringPhysicianName="Who^Doctor",
        PatientSex="F",
        PatientBirthDate="19800101",
        StudyDate="20200102",
        StudyTime="120000.123",
        PatientID="P1",
        StudyID="S1",
        AccessionNumber="A1",
        PatientOrientation="P\\F",
        Laterality="l",
        StudyDescription="chest",
    )
    frame = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    arguments = _record_sc_arguments(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom would warn about values it doubts
        series = write_series(
            [frame], None, _flat_source(**tags), SeriesInfo.from_scores("cardiomegaly", MODEL, [0.5]), tmp_path
        )
    ds = pydicom.dcmread(series[0])
    for keyword in (
        "PatientName",
        "ReferringPhysicianName",
        "PatientSex",
        "PatientBirthDate",
        "StudyDate",
        "StudyTime",
        "PatientID",
        "StudyID",
        "AccessionNumber",
        "StudyDescription",
    ):
        assert str(ds[keyword].value) == tags[keyword], keyword
    assert list(ds.PatientOrientation) == ["P", "F"] and ds.Laterality == "L"
    assert series.study_instance_uid == ds.StudyInstanceUID == "1.2.3"
    assert (arguments["patient_name"], arguments["patient_sex"], arguments["study_time"]) == (
        "Doe^Jane",
        "F",
        "120000.123",
    )
    assert (arguments["patient_orientation"], arguments["laterality"]) == (("P", "F"), "L")
    assert arguments["study_instance_uid"] == "1.2.3" and arguments["accession_number"] == "A1"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the source's own non-standard values
def test_source_values_highdicom_does_not_take_are_copied_verbatim(tmp_path, monkeypatch):
    """A one-part name, sex U, a year-only birth date, a colon time, a two-letter orientation: kept as they are."""
    import warnings

    tags = dict(
        PatientName="ward",
        ReferringPhysicianName="smith",
        PatientSex="U",
        PatientBirthDate="1980",
        StudyTime="12:00:00",
        PatientOrientation="AL\\F",
        Laterality="X",
    )
    frame = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    arguments = _record_sc_arguments(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = write_series(
            [frame], None, _flat_source(**tags), SeriesInfo.from_scores("cardiomegaly", MODEL, [0.5]), tmp_path
        )
    assert not [w for w in caught if "person name" in str(w.message)], [str(w.message) for w in caught]
    ds = pydicom.dcmread(series[0])
    for keyword in ("PatientName", "ReferringPhysicianName", "PatientSex", "PatientBirthDate", "StudyTime"):
        assert str(ds[keyword].value) == tags[keyword], keyword
    assert list(ds.PatientOrientation) == ["AL", "F"]
    assert "Laterality" not in ds and arguments["laterality"] is None  # only R or L is copied
    for argument in ("patient_name", "referring_physician_name", "patient_sex", "patient_birth_date", "study_time"):
        assert argument not in arguments, argument  # set after construction, verbatim
    assert arguments["patient_id"] == "" and arguments["study_instance_uid"] == "1.2.3"
