"""The writers and logs (:mod:`monai_exaggeration.inference.writers`, ``logs``): DICOM series, CSV logs, quick-looks.

DICOM tags and validity, UIDs and re-runs, log contents, bad files, rollback of a failed source,
no temporary left by a failing write, 16-bit output, model resolution and pixel spacing. Most tests
read the session runs of ``conftest.py`` (``default_run``, ``plain_run_bad_folder``, ``png_runs``).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from scipy.stats import spearmanr

from inference.helpers import (
    LOGS,
    PNG_SHAPE,
    SC_STORAGE,
    all_files,
    assert_dciodvfy_clean,
    chest_png,
    dicom_dir,
    png_chest,
    read_errors,
    read_frames,
    read_sources,
    small_dx,
    temporaries,
    tiny_generator,
    truncated_dicom,
)
from monai_exaggeration.dicom.secondary_capture import derived_uid
from monai_exaggeration.inference import ERROR_COLUMNS, ExaggerationInference
from monai_exaggeration.transforms import read_cxr

pytestmark = [
    pytest.mark.filterwarnings("ignore:VR lookup failed"),  # CT_small.dcm has a private tag pydicom cannot type
    pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin"),  # imageio probing a text file
]


# ----------------------------------------------------------------------------------- DICOM validity, tags (default run)


def test_default_run_dicom_is_valid(default_run) -> None:
    out, _ = default_run
    files = all_files(dicom_dir(out)[0])
    for path in (files[0], files[-1]):
        dataset = pydicom.dcmread(path)
        image = hd.imread(path)  # highdicom reads it as an image
        assert image.SOPClassUID == SC_STORAGE and image.SOPInstanceUID == dataset.SOPInstanceUID
        assert np.array_equal(image.get_frame(1), dataset.pixel_array)
        assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert_dciodvfy_clean(files)


def test_default_run_dicom_tags_match_source_and_frame_log(default_run, rg1_uncr: Path) -> None:
    out, _ = default_run
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    frames = read_frames(out)
    series_uids = set()
    for row in frames.itertuples():
        ds = pydicom.dcmread(row.output_file)
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.SOPClassUID == SC_STORAGE
        assert ds.SOPInstanceUID == row.sop_instance_uid and ds.SeriesInstanceUID == row.series_instance_uid
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
        assert ds.StudyInstanceUID == source.StudyInstanceUID == row.study_instance_uid
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID  # a new series in the source's study
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert len(ds.SourceImageSequence) == 1
        assert (
            ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID == row.source_sop_instance_uid
        )
        assert "cardiomegaly" in ds.SeriesDescription.lower() and "not for diagnosis" in ds.SeriesDescription.lower()
        assert ds.InstanceNumber == row.step + 1
        assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns) == (1955, 1841)  # full resolution by default
        assert ds.BitsAllocated == 8 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert f"Step {row.step} of 10" in ds.ImageComments
        assert f"target bin {row.target_bin} of 10" in ds.ImageComments
        assert f"target centre {row.target_centre:.4f}" in ds.ImageComments
        assert f"score {row.score:.4f}" in ds.ImageComments
        assert row.model_version in ds.ImageComments and row.model_version in list(ds.SoftwareVersions)
        ours = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "monai_exaggeration"]
        assert len(ours) == 1 and row.model_version in list(ours[0].SoftwareVersions)
        assert Path(row.output_file).name == f"step_{row.step:03d}.dcm"
    assert len(series_uids) == 1
    assert frames["step"].tolist() == list(range(10)) and frames["target_bin"].tolist() == list(range(10))


def test_default_run_uids_are_derived_from_source_and_model_version(default_run, rg1_uncr: Path) -> None:
    """UIDs from (source SOP Instance UID, model version, step, pixel SHA-256): a re-send never duplicates."""
    out, _ = default_run
    source_uid = str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).SOPInstanceUID)
    pixel_key = read_cxr(rg1_uncr).meta["pixel_sha256"]
    frames = read_frames(out)
    version = frames["model_version"][0]
    assert frames["model_version"].nunique() == 1 and version.startswith("explainer ")
    assert frames["series_instance_uid"][0] == str(derived_uid(source_uid, version, "series", pixel_key))
    assert dicom_dir(out)[0].name == frames["series_instance_uid"][0]
    for row in frames.itertuples():
        assert row.sop_instance_uid == str(derived_uid(source_uid, version, row.step, pixel_key))


# ----------------------------------------------------------------------------------- CSV logs (default run)


def test_default_run_frame_log(default_run, rg1_uncr: Path) -> None:
    out, _ = default_run
    frames = read_frames(out)
    assert frames["score"].between(0.0, 1.0).all() and frames["generator_frame_score"].between(0.0, 1.0).all()
    assert np.allclose(frames["target_centre"], (frames["target_bin"] + 0.5) / 10)
    assert frames["series_instance_uid"].nunique() == 1 and frames["sop_instance_uid"].is_unique
    for row in frames.itertuples():
        path = Path(row.output_file)
        assert path.is_absolute() and path.is_file() and path.parent.name == row.series_instance_uid
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == row.sop_instance_uid and ds.SeriesInstanceUID == row.series_instance_uid
        assert Path(row.source).samefile(rg1_uncr)


def test_default_run_source_log_is_consistent_with_the_frames(default_run) -> None:
    out, _ = default_run
    frames = read_frames(out).sort_values("step")
    source = read_sources(out).iloc[0]
    scores = frames["score"].to_numpy()
    assert source.num_frames == 10 and source.finding == "cardiomegaly"
    assert source.series_instance_uid == frames["series_instance_uid"][0]
    assert Path(source.series_dir) == Path(frames["output_file"][0]).parent
    assert source.model_version == frames["model_version"][0]
    assert np.isclose(source.first_score, scores[0]) and np.isclose(source.last_score, scores[-1])
    assert 0.0 <= source.source_score <= 1.0
    assert source.source_bin == min(int(np.floor(source.source_score * 10)), 9)
    # validity recomputed from the frame scores
    positive = source.source_score >= 0.5
    assert source.flip_reached == bool((scores < 0.5).any() if positive else (scores >= 0.5).any())
    assert source.monotone == bool(np.all(np.diff(scores) >= 0))
    rho = spearmanr(np.arange(10), scores).statistic if np.ptp(scores) > 0 else 0.0
    assert np.isclose(source.spearman, 0.0 if np.isnan(rho) else rho)
    assert source.seconds > 0


# ----------------------------------------------------------------------------------- model resolution, settings, UIDs


def test_model_resolution_frames_are_model_size(plain_run_bad_folder, png_runs, rg1_uncr: Path) -> None:
    """resolution=model: 128 x 128 frames (the shipped model size) of a DICOM source (plain run, 5 frames) and a PNG."""
    _, out, _ = plain_run_bad_folder
    frames = read_frames(out)
    files = [Path(p) for p in frames["output_file"]]
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    for row, path in zip(frames.itertuples(), files):
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (128, 128) and ds.pixel_array.shape == (128, 128)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert f"Step {row.step} of 5" in ds.ImageComments and f"target bin {row.target_bin} of 10" in ds.ImageComments
    with Image.open(read_sources(out)["gif"][0]) as gif:
        assert gif.n_frames >= 5
    png_files = [Path(p) for p in read_frames(png_runs["model"])["output_file"]]
    for path in png_files:
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (128, 128) and ds.pixel_array.dtype == np.uint8
    assert_dciodvfy_clean(files + png_files)


def test_changing_settings_changes_the_uids_of_a_dicom_source(default_run, plain_run_bad_folder) -> None:
    """Same source, other settings (5 frames, model resolution): new model version, new series, new SOP UIDs."""
    default, _ = default_run
    _, other, _ = plain_run_bad_folder
    a, b = read_frames(default), read_frames(other)
    assert a["source_sop_instance_uid"][0] == b["source_sop_instance_uid"][0]
    assert a["model_version"][0] != b["model_version"][0]
    assert a["series_instance_uid"][0] != b["series_instance_uid"][0]
    assert set(a["sop_instance_uid"]).isdisjoint(b["sop_instance_uid"])
    assert a["study_instance_uid"][0] == b["study_instance_uid"][0]  # both stay in the source's study


def test_rerun_gives_identical_uids_and_pixels(png_runs) -> None:
    a, b = read_frames(png_runs["a"]), read_frames(png_runs["b"])
    assert a["series_instance_uid"].nunique() == 1
    for column in ("series_instance_uid", "sop_instance_uid", "study_instance_uid", "model_version", "score"):
        assert a[column].tolist() == b[column].tolist(), column
    for left, right in zip(a["output_file"], b["output_file"]):
        assert Path(left) != Path(right)
        first, second = pydicom.dcmread(left), pydicom.dcmread(right)
        assert np.array_equal(first.pixel_array, second.pixel_array)
        assert (first.SOPInstanceUID, first.PatientID) == (second.SOPInstanceUID, second.PatientID)


def test_rerun_into_the_same_folder_replaces_the_series(png_runs, runner_factory) -> None:
    out = png_runs["a"]
    before = {p: p.read_bytes() for p in all_files(out / "dicom")}
    summary = runner_factory().run(png_runs["input"], out)
    assert summary.exit_code == 0
    after = all_files(out / "dicom")
    assert sorted(after) == sorted(before)  # no duplicates, same names
    for path in after:
        assert (
            pydicom.dcmread(path).pixel_array.tobytes()
            == pydicom.dcmread(io.BytesIO(before[path])).pixel_array.tobytes()
        )
    assert len(read_frames(out)) == 10


def test_pixel_changing_settings_give_new_uids(png_runs) -> None:
    runs = {name: read_frames(png_runs[name]) for name in ("a", "bits16", "model")}
    versions = {name: frame["model_version"][0] for name, frame in runs.items()}
    assert len(set(versions.values())) == 3
    assert len({frame["series_instance_uid"][0] for frame in runs.values()}) == 3
    sops = [set(frame["sop_instance_uid"]) for frame in runs.values()]
    assert sops[0].isdisjoint(sops[1]) and sops[0].isdisjoint(sops[2]) and sops[1].isdisjoint(sops[2])
    # the non-DICOM file's patient and study depend on its content only, not on the model
    assert len({frame["study_instance_uid"][0] for frame in runs.values()}) == 1


def test_png_source_gets_a_new_marked_patient(png_runs) -> None:
    frames = read_frames(png_runs["a"])
    assert (frames["source_sop_instance_uid"] == "").all()
    files = [Path(p) for p in frames["output_file"]]
    for path in files:
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "ANONYMOUS^EXAGGERATION"
        assert ds.PatientID.startswith("EXAG-") and "chest" not in ds.PatientID
        assert "SourceImageSequence" not in ds
        assert ds.StudyInstanceUID == frames["study_instance_uid"][0]
        assert (ds.Rows, ds.Columns) == PNG_SHAPE  # the PNG's own matrix at source resolution
        assert ds.SOPClassUID == SC_STORAGE and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert "not for diagnosis" in ds.SeriesDescription.lower()
    assert len({pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in files}) == 1
    assert_dciodvfy_clean(files)


def test_sixteen_bit_frames_have_full_range_window(png_runs) -> None:
    eight = read_frames(png_runs["a"])
    sixteen = read_frames(png_runs["bits16"])
    for left, right in zip(eight["output_file"], sixteen["output_file"]):
        ds8, ds16 = pydicom.dcmread(left), pydicom.dcmread(right)
        assert ds16.BitsAllocated == 16 and ds16.BitsStored == 16 and ds16.PixelRepresentation == 0
        assert ds16.pixel_array.dtype == np.uint16 and ds16.pixel_array.shape == PNG_SHAPE
        assert float(ds16.WindowCenter) == 32767.5 and float(ds16.WindowWidth) == 65536
        assert ds8.BitsAllocated == 8 and "WindowCenter" not in ds8
        # the same frames, quantised to 16 instead of 8 bits
        difference = ds16.pixel_array / 65535.0 - ds8.pixel_array / 255.0
        assert np.abs(difference).max() <= 0.5 / 255 + 0.5 / 65535 + 1e-9
    assert_dciodvfy_clean([Path(p) for p in sixteen["output_file"]])


@pytest.mark.parametrize(
    ("resolution", "aspect", "spacing"),
    [
        ("source", "pad", (0.2, 0.2)),
        ("model", "pad", (0.625, 0.625)),
        ("model", "crop", (0.375, 0.375)),
        ("model", "stretch", (0.625, 0.375)),
    ],
)
def test_pixel_spacing_matches_the_written_matrix(
    tmp_path: Path, rg1_uncr: Path, classifier, resolution, aspect, spacing
) -> None:
    """A 200 x 120 source with 0.2 mm pixels: at model resolution a 64 x 64 frame shows the padded 200 x 200
    square (pad: 200/64 x 0.2 mm per pixel both ways) or the centred 120 x 120 square (crop), so its pixels
    stay square; only stretch squeezes rows and columns apart. (2 %: pad rounds the resized short side.)"""
    source = small_dx(tmp_path / "dx.dcm", rg1_uncr)
    runner = ExaggerationInference(
        tiny_generator(),
        classifier,
        num_bins=10,
        num_frames=2,
        resolution=resolution,
        aspect=aspect,
        quicklook=False,
        device="cpu",
    )
    assert runner.run(source, tmp_path / "out").exit_code == 0
    ds = pydicom.dcmread(read_frames(tmp_path / "out")["output_file"][0], stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == ((200, 120) if resolution == "source" else (64, 64))
    assert np.allclose([float(v) for v in ds.PixelSpacing], spacing, rtol=0.02)


# ----------------------------------------------------------------------------------- bad files, rollback, temporaries


def test_folder_with_bad_files_writes_only_the_good_ones(tmp_path: Path, rg1_uncr: Path, classifier) -> None:
    inbox = tmp_path / "inbox"
    png_chest(inbox / "good.png")
    small_dx(inbox / "sub" / "good.dcm", rg1_uncr)
    truncated_dicom(inbox / "truncated.dcm", rg1_uncr)
    truncated_dicom(inbox / "corrupt.dcm", Path(get_testdata_file("CT_small.dcm")), length=700)  # cut in its header
    (inbox / "notes.png").write_text("a text file with an image suffix\n")
    (inbox / "README").write_text("a text file without a suffix\n")
    shutil.copy(get_testdata_file("CT_small.dcm"), inbox / "ct.dcm")
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 6), np.float32), np.eye(4)), str(inbox / "volume.nii.gz"))
    out = tmp_path / "out"
    runner = ExaggerationInference(tiny_generator(), classifier, num_bins=10, num_frames=4, device="cpu")

    summary = runner.run(inbox, out)

    assert summary.num_inputs == 8 and summary.num_series == 2 and summary.num_files == 8
    assert summary.exit_code == 1 and len(summary.failures) == 6
    errors = read_errors(out)
    assert list(errors.columns) == ERROR_COLUMNS and len(errors) == 6
    problems = {Path(p).name: e for p, e in zip(errors["source"], errors["error"])}
    assert "truncated or corrupt" in problems["truncated.dcm"]
    assert problems["corrupt.dcm"] != ""
    assert "not a readable image" in problems["notes.png"]
    assert "not a DICOM file or a supported image" in problems["README"]
    assert "modality CT" in problems["ct.dcm"]
    assert "3-D volume" in problems["volume.nii.gz"]
    assert (errors["hint"].str.len() > 10).all()
    assert all(Path(p).is_absolute() for p in errors["source"])
    # only the good files left anything behind, and only complete files
    frames, sources = read_frames(out), read_sources(out)
    assert sorted(Path(p).name for p in sources["source"]) == ["good.dcm", "good.png"]
    assert len(frames) == 8 and sorted(p.name for p in dicom_dir(out)) == sorted(sources["series_instance_uid"])
    assert sorted(all_files(out / "dicom")) == sorted(Path(p) for p in frames["output_file"])
    looks = sorted(p.name.rsplit("-", 1)[0] for p in (out / "quicklook").iterdir())
    assert looks == ["good", "good"] and len(all_files(out / "quicklook")) == 6
    text = summary.describe()
    assert "8 input(s): 2 series written (8 DICOM files), 6 failed" in text and str(out / "errors.csv") in text


def test_empty_folder_is_an_input_error(tmp_path: Path, classifier) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "labels.csv").write_text("image\n")  # not a candidate image
    runner = ExaggerationInference(tiny_generator(), classifier, num_bins=10, device="cpu")
    with pytest.raises(FileNotFoundError, match="no image files found"):
        runner.run(tmp_path / "inbox", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_quicklook_rolls_back_that_source_only(
    tmp_path: Path, classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monai_exaggeration.inference import quicklook

    original = quicklook.write_montage

    def montage_or_disk_full(path, frames, scores, centres, title="", **kwargs):
        if "broken" in title:
            raise OSError("No space left on device")
        return original(path, frames, scores, centres, title, **kwargs)

    monkeypatch.setattr(quicklook, "write_montage", montage_or_disk_full)
    inbox = tmp_path / "inbox"
    png_chest(inbox / "broken.png", seed=1)
    png_chest(inbox / "fine.png", seed=2)
    out = tmp_path / "out"
    runner = ExaggerationInference(
        tiny_generator(), classifier, num_bins=10, num_frames=3, quicklook=True, device="cpu"
    )

    summary = runner.run(inbox, out)

    assert summary.exit_code == 1 and summary.num_series == 1 and summary.num_files == 3
    assert [Path(f["source"]).name for f in summary.failures] == ["broken.png"]
    assert "No space left on device" in summary.failures[0]["error"]
    errors = read_errors(out)
    assert errors["source"].map(lambda p: Path(p).name).tolist() == ["broken.png"]
    # the DICOM series and the GIF written before the montage failed are gone; the other source is complete
    sources = read_sources(out)
    assert [Path(p).name for p in sources["source"]] == ["fine.png"]
    assert [p.name for p in dicom_dir(out)] == [sources["series_instance_uid"][0]]
    assert [p.name for p in (out / "quicklook").iterdir()] == [Path(sources["gif"][0]).parent.name]
    kept = {p.relative_to(out).as_posix() for p in all_files(out)}
    expected = set(LOGS)
    expected |= {Path(p).relative_to(out).as_posix() for p in read_frames(out)["output_file"]}
    expected |= {Path(sources[k][0]).relative_to(out).as_posix() for k in ("gif", "montage", "score_plot")}
    assert kept == expected
    assert not any("broken" in p.name for p in out.rglob("*"))

    # the only input failing: exit status 2, empty logs, nothing but the logs left
    alone = runner.run(inbox / "broken.png", tmp_path / "alone")
    assert alone.exit_code == 2 and alone.num_series == 0
    assert "No space left on device" in alone.failures[0]["error"]
    assert [p.name for p in all_files(tmp_path / "alone")] == sorted(LOGS)
    assert len(read_frames(tmp_path / "alone")) == 0


@pytest.mark.parametrize("writer", ["dicom", "quicklook"])
def test_failure_inside_a_write_leaves_no_temporary(
    tmp_path: Path, rg1_uncr: Path, monkeypatch: pytest.MonkeyPatch, runner_factory, writer: str
) -> None:
    """Disk full half-way through a file: its temporary is removed and the source's files are rolled back.

    The failure happens inside :func:`~monai_exaggeration.utils.atomic_write` (after bytes reached the
    temporary file), the only place a temporary can be left behind by a run that does not die. The
    check sees that temporary while it exists, so it would see it if it were left behind.
    """
    from monai_exaggeration.dicom import secondary_capture
    from monai_exaggeration.inference import quicklook

    module = secondary_capture if writer == "dicom" else quicklook
    real, calls, seen = module.atomic_write, [], []
    out = tmp_path / "out"

    def fails_on_the_second_file(path, write):
        calls.append(path)
        if len(calls) != 2:
            return real(path, write)

        def half(tmp: Path) -> None:
            tmp.write_bytes(b"half a file")
            seen.extend(temporaries(out))
            raise OSError("No space left on device")

        return real(path, half)

    monkeypatch.setattr(module, "atomic_write", fails_on_the_second_file)
    chest_png(tmp_path / "inbox" / "a.png", rg1_uncr)
    chest_png(tmp_path / "inbox" / "b.png", rg1_uncr, (170, 200))
    summary = runner_factory(quicklook=True, num_frames=3).run(tmp_path / "inbox", out)
    assert len(calls) >= 2 and summary.num_series == 1 and "No space left" in summary.failures[0]["error"]
    assert len(seen) == 1 and seen[0].name.startswith(f".{calls[1].name}.")  # the half-written temporary was there
    assert temporaries(out) == [], "temporary files left behind"
    frames = read_frames(out)
    written = [p for p in all_files(out) if p.name not in LOGS]
    looks = read_sources(out)[["gif", "montage", "score_plot"]].to_numpy().ravel()
    assert sorted(written) == sorted({Path(p) for p in frames["output_file"]} | {Path(p) for p in looks})
