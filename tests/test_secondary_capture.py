"""DICOM Secondary Capture output of a progressive-exaggeration series (DESIGN.md, "DICOM output conventions")."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from monai_exaggeration.dicom import (
    FrameInfo,
    SeriesInfo,
    dciodvfy_report,
    derived_uid,
    quantise_frame,
    write_series,
)
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
    return {bits: (frames, write_series(frames, path, image.meta, _info(), out / f"b{bits}", bits=bits)) for bits in (8, 16)}


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
        assert ds.Modality == "CR"
        assert list(ds.PatientOrientation) == list(source.PatientOrientation) == ["L", "F"]
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored) == (bits, bits)
        assert len(ds.SourceImageSequence) == 1
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
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
        assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109103"
        assert ours[0].PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
        assert MODEL in list(ours[0].SoftwareVersions)
        assert ds.Manufacturer == "monai_exaggeration"
        if bits == 16:
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (32767.5, 65536.0)
        else:
            assert "WindowCenter" not in ds
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3


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
        assert quantise_frame(np.array([[0.0, 0.5, 1.0]]), bits).tolist() == [[0, round((2**bits - 1) / 2), 2**bits - 1]]
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
    ids = lambda paths: [(pydicom.dcmread(p).SeriesInstanceUID, pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert ids(again) == ids(first)
    assert [p.relative_to(tmp_path) for p in again] == [p.relative_to(p.parents[1]) for p in first]
    # another model version: a new series with new instances
    other = _info()
    other.model_version = "cxr-test-model-2.0"
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in write_series(frames[:1], path, image.meta, SeriesInfo(
        "cardiomegaly", "cxr-test-model-2.0", [FrameInfo(0, 0, 0.05, 0.1)]), tmp_path / "v2")}
    assert uids.isdisjoint({uid for _, uid in ids(first)})


@pytest.mark.parametrize("bits", [8, 16])
def test_dciodvfy_reports_no_errors(written, bits):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    _, paths = written[bits]
    errors, warnings = dciodvfy_report(paths[0])
    assert errors == [], errors
    # the only warning allowed is about a value copied verbatim from the source ("ward", a one-part name)
    assert all("Referring Physician" in line for line in warnings), warnings


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
    real_build, calls = sc.build_instance, []

    def failing_build(ctx, array, frame_info, bits):
        calls.append(frame_info.step)
        if frame_info.step == 2:
            raise OSError("No space left on device")
        return real_build(ctx, array, frame_info, bits)

    monkeypatch.setattr(sc, "build_instance", failing_build)
    with pytest.raises(OSError, match="No space"):
        write_series([frame] * 3, source, meta, info, out)
    assert calls == [0, 1, 2]
    assert list(out.rglob("*")) == []

    # a failure inside the atomic write itself leaves no temporary file either
    monkeypatch.setattr(sc, "build_instance", real_build)
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
