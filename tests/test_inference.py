"""The inference workflow end to end: bundle command, DICOM SC series, CSV logs, quick-looks, bad inputs,
rollback, determinism, non-DICOM sources, model resolution and 16-bit output.

The heavy paths run a few times only (module fixtures); most tests assert on their outputs. Score
values are never asserted (the shipped explainer may be replaced): only behaviour and consistency.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.data import get_testdata_file
from scipy.stats import spearmanr

from conftest import REPO_ROOT, run_bundle
from dicom_validation import dciodvfy_errors
from monai_exaggeration.bundle import load_bundle_classifier
from monai_exaggeration.dicom.secondary_capture import derived_uid
from monai_exaggeration.transforms import read_cxr
from monai_exaggeration.inference import (
    ERROR_COLUMNS,
    FRAME_COLUMNS,
    SOURCE_COLUMNS,
    ExaggerationInference,
)
from monai_exaggeration.networks import ExaggerationGenerator

pytestmark = [
    pytest.mark.filterwarnings("ignore:VR lookup failed"),  # CT_small.dcm has a private tag pydicom cannot type
    pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin"),  # imageio probing a text file
]

INFERENCE = str(REPO_ROOT / "bundles" / "cxr" / "configs" / "inference.json")
BUNDLE = str(REPO_ROOT / "bundles" / "cxr")
EXPLAINER = REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PNG_SHAPE = (200, 160)  # rows x columns of the synthetic PNG chest


# ----------------------------------------------------------------------------------- helpers


def tiny_generator(seed: int = 0) -> ExaggerationGenerator:
    """A small randomly initialised generator (for tests where the trained weights do not matter).

    The per-bin conditional batch-norm tables start as the identity (every bin alike), so they are
    randomised too: the frames then differ from bin to bin and from seed to seed.
    """
    torch.manual_seed(seed)
    generator = ExaggerationGenerator(in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[8, 16], image_size=64)
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith(("gamma.weight", "beta.weight")):
                parameter.normal_(1.0 if "gamma" in name else 0.0, 0.5)
    return generator


def png_chest(path: Path, shape: tuple[int, int] = PNG_SHAPE, seed: int = 0) -> Path:
    """A small synthetic 8-bit chest-like PNG (lungs dark, mediastinum/heart bright), rows x columns = shape."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    image = 0.75 - 0.35 * (np.exp(-((x - 0.3) ** 2 + (y - 0.45) ** 2) / 0.03) + np.exp(-((x - 0.7) ** 2 + (y - 0.45) ** 2) / 0.03))
    image += 0.25 * np.exp(-((x - 0.55) ** 2 / 0.02 + (y - 0.65) ** 2 / 0.03))  # heart
    image += np.random.default_rng(seed).normal(0, 0.02, image.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def small_dx(path: Path, rg1: Path, spacing: float = 0.2) -> Path:
    """A small real DX-like DICOM: RG1's chest subsampled to 200 x 120 (rows x columns), PixelSpacing set."""
    dataset = pydicom.dcmread(rg1)
    pixels = np.ascontiguousarray(dataset.pixel_array[200:1800:8, 300:1500:10])
    dataset.PixelData = pixels.tobytes()
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.PixelSpacing = [spacing, spacing]
    dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["small_dx", str(spacing)])
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path)
    return path


def truncated_dicom(path: Path, rg1: Path) -> Path:
    """RG1 cut after 5000 bytes: a readable CR header, the pixel data missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rg1.read_bytes()[:5000])
    return path


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def temporaries(folder: Path) -> list[Path]:
    """Left-over temporary files of atomic writes (``.<name>.<random>.tmp<suffixes>``)."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def read_frames(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "frames.csv", keep_default_na=False, dtype={"source_sop_instance_uid": str})


def read_sources(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "sources.csv", keep_default_na=False, dtype={"source_sop_instance_uid": str})


def dicom_dir(out: Path) -> list[Path]:
    return sorted(p for p in (out / "dicom").iterdir() if p.is_dir()) if (out / "dicom").is_dir() else []


def assert_dciodvfy_clean(files: list[Path]) -> None:
    if dciodvfy_errors(files[0]) is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    for path in files:
        assert dciodvfy_errors(path) == [], path


@pytest.fixture(scope="module")
def classifier():
    """The shipped classifier, loaded once and shared by the in-process runners."""
    return load_bundle_classifier()


def shipped_runner(classifier, **settings) -> ExaggerationInference:
    """ExaggerationInference configured exactly as inference.json (shipped weights), on the CPU."""
    settings.setdefault("explainer_weights", EXPLAINER)
    settings.setdefault("quicklook", False)
    return ExaggerationInference(None, classifier, finding="cardiomegaly", device="cpu", **settings)


# ----------------------------------------------------------------------------------- 1. bundle command, default input


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory):
    """``run inference`` on the default input (RG1_UNCR.dcm), 10 frames at source resolution."""
    out = tmp_path_factory.mktemp("default_run") / "out"
    result = run_bundle(
        ["run", "inference", "--config_file", INFERENCE, "--bundle_root", BUNDLE, "--output_dir", str(out)], env=ONE_THREAD
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_bundle_default_run_writes_series_logs_and_quicklooks(default_run) -> None:
    out, _ = default_run
    series = dicom_dir(out)
    assert len(series) == 1
    assert [p.name for p in all_files(series[0])] == [f"step_{i:03d}.dcm" for i in range(10)]
    frames, sources = read_frames(out), read_sources(out)
    assert list(frames.columns) == FRAME_COLUMNS and len(frames) == 10
    assert list(sources.columns) == SOURCE_COLUMNS and len(sources) == 1
    assert not (out / "errors.csv").exists()
    assert not temporaries(out)
    looks = [p for p in (out / "quicklook").iterdir()]
    assert len(looks) == 1 and looks[0].name.startswith("RG1_UNCR-")
    assert {p.name for p in looks[0].iterdir()} == {"series.gif", "montage.png", "scores.png"}
    with Image.open(sources["gif"][0]) as gif:
        assert gif.format == "GIF" and gif.is_animated and gif.n_frames >= 10
        assert gif.width <= 512 and gif.height < 1955 / 2  # a preview (plus caption), not the full matrix
    for key in ("montage", "score_plot"):
        assert Path(sources[key][0]).parent == looks[0]
        with Image.open(sources[key][0]) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100


def test_bundle_default_run_prints_the_summary_with_the_paths(default_run) -> None:
    out, result = default_run
    assert "1 input(s): 1 series written (10 DICOM files), 0 failed" in result.stdout
    for path in (out / "dicom", out / "frames.csv", out / "sources.csv", out / "quicklook"):
        assert str(path) in result.stdout
    assert "errors.csv" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------------- 2. DICOM validity and tags


def test_bundle_default_run_dicom_is_valid(default_run) -> None:
    out, _ = default_run
    files = all_files(dicom_dir(out)[0])
    for path in (files[0], files[-1]):
        dataset = pydicom.dcmread(path)
        image = hd.imread(path)  # highdicom reads it as an image
        assert image.SOPClassUID == SC_STORAGE and image.SOPInstanceUID == dataset.SOPInstanceUID
        assert np.array_equal(image.get_frame(1), dataset.pixel_array)
        assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert_dciodvfy_clean(files)


def test_bundle_default_run_dicom_tags_match_source_and_frame_log(default_run, rg1_uncr: Path) -> None:
    out, _ = default_run
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    frames = read_frames(out)
    series_uids = set()
    for row in frames.itertuples():
        ds = pydicom.dcmread(row.output_file)
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.SOPClassUID == SC_STORAGE
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
        assert ds.StudyInstanceUID == source.StudyInstanceUID == row.study_instance_uid
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID  # a new series in the source's study
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert len(ds.SourceImageSequence) == 1
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID == row.source_sop_instance_uid
        assert "cardiomegaly" in ds.SeriesDescription.lower() and "not for diagnosis" in ds.SeriesDescription.lower()
        assert ds.InstanceNumber == row.step + 1
        assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns) == (1955, 1841)
        assert ds.BitsAllocated == 8 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert f"Step {row.step} of 10" in ds.ImageComments
        assert f"target bin {row.target_bin} of 10" in ds.ImageComments
        assert f"target centre {row.target_centre:.4f}" in ds.ImageComments
        assert f"score {row.score:.4f}" in ds.ImageComments
        assert row.model_version in ds.ImageComments
        assert Path(row.output_file).name == f"step_{row.step:03d}.dcm"
    assert len(series_uids) == 1
    assert frames["step"].tolist() == list(range(10)) and frames["target_bin"].tolist() == list(range(10))


def test_bundle_default_run_uids_are_derived_from_source_and_model_version(default_run, rg1_uncr: Path) -> None:
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


# ----------------------------------------------------------------------------------- 5. CSV contents


def test_bundle_default_run_frame_log(default_run) -> None:
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
        assert Path(row.source).name == "RG1_UNCR.dcm"


def test_bundle_default_run_source_log_is_consistent_with_the_frames(default_run) -> None:
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


# ----------------------------------------------------------------------------------- 1/6/9. plain `run` on a folder with bad files


@pytest.fixture(scope="module")
def plain_run_bad_folder(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path):
    """Plain ``run`` (no run id), 5 frames at model resolution, on RG1 plus three bad files."""
    root = tmp_path_factory.mktemp("plain_run")
    inbox = root / "inbox"
    inbox.mkdir()
    shutil.copy(rg1_uncr, inbox / "chest.dcm")
    truncated_dicom(inbox / "truncated.dcm", rg1_uncr)
    (inbox / "notes.png").write_text("not an image at all\n")
    shutil.copy(get_testdata_file("CT_small.dcm"), inbox / "ct.dcm")
    out = root / "out"
    result = run_bundle(
        ["run", "--config_file", INFERENCE, "--bundle_root", BUNDLE, "--input", str(inbox), "--output_dir", str(out),
         "--num_frames", "5", "--resolution", "model"],
        env=ONE_THREAD,
    )
    return inbox, out, result


def test_bundle_plain_run_with_bad_files_exits_1_and_writes_the_good_one(plain_run_bad_folder) -> None:
    _, out, result = plain_run_bad_folder
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 input(s): 1 series written (5 DICOM files), 3 failed" in result.stdout
    assert str(out / "errors.csv") in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert list(errors.columns) == ERROR_COLUMNS
    assert sorted(Path(p).name for p in errors["source"]) == ["ct.dcm", "notes.png", "truncated.dcm"]
    frames = read_frames(out)
    assert {Path(p).name for p in frames["source"]} == {"chest.dcm"}
    assert frames["target_bin"].tolist() == [0, 2, 4, 7, 9] and frames["step"].tolist() == list(range(5))
    assert np.allclose(frames["target_centre"], [0.05, 0.25, 0.45, 0.75, 0.95])
    assert len(dicom_dir(out)) == 1 and len(all_files(out / "dicom")) == 5
    assert len(list((out / "quicklook").iterdir())) == 1
    assert not temporaries(out)


def test_bundle_plain_run_model_resolution_frames(plain_run_bad_folder, rg1_uncr: Path) -> None:
    _, out, _ = plain_run_bad_folder
    frames = read_frames(out)
    files = [Path(p) for p in frames["output_file"]]
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    for row, path in zip(frames.itertuples(), files):
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (128, 128) and ds.pixel_array.shape == (128, 128)  # the shipped model size
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert f"Step {row.step} of 5" in ds.ImageComments and f"target bin {row.target_bin} of 10" in ds.ImageComments
    with Image.open(read_sources(out)["gif"][0]) as gif:
        assert gif.n_frames >= 5
    assert_dciodvfy_clean(files)


def test_changing_settings_changes_the_uids(default_run, plain_run_bad_folder) -> None:
    """Same source, other settings (5 frames, model resolution): new model version, new series, new SOP UIDs."""
    default, _ = default_run
    _, other, _ = plain_run_bad_folder
    a, b = read_frames(default), read_frames(other)
    assert a["source_sop_instance_uid"][0] == b["source_sop_instance_uid"][0]
    assert a["model_version"][0] != b["model_version"][0]
    assert a["series_instance_uid"][0] != b["series_instance_uid"][0]
    assert set(a["sop_instance_uid"]).isdisjoint(b["sop_instance_uid"])
    assert a["study_instance_uid"][0] == b["study_instance_uid"][0]  # both stay in the source's study


# ----------------------------------------------------------------------------------- 6. unusable input or settings: exit 2


def test_bundle_missing_input_exits_2_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir" / "chest.dcm"
    out = tmp_path / "out"
    result = run_bundle(
        ["run", "inference", "--config_file", INFERENCE, "--bundle_root", BUNDLE, "--input", str(missing),
         "--output_dir", str(out)],
        env=ONE_THREAD,
    )
    assert result.returncode == 2
    assert f"input not found: {missing}" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert not out.exists()  # nothing written


def parsed_inference(tmp_path: Path, **overrides) -> ConfigParser:
    """inference.json as ``monai.bundle run`` parses it, with command-line style overrides."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update({"bundle_root": BUNDLE, "output_dir": str(tmp_path / "out"), **overrides})
    return parser


def test_missing_explainer_weights_exit_2_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nonexistent.pt"
    parser = parsed_inference(tmp_path, explainer_weights=str(missing))
    with pytest.raises(SystemExit) as exit_info:
        parser.get_parsed_content("inference")
    assert exit_info.value.code == 2
    assert f"weights not found: {missing}" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("setting", "message"), [({"bits": 12}, "bits must be 8 or 16"),
                                                   ({"resolution": "full"}, "resolution must be one of"),
                                                   ({"num_frames": 50}, "num_frames must be an integer from 2 to 10")])
def test_bad_settings_exit_2_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture, setting: dict, message: str) -> None:
    parser = parsed_inference(tmp_path, **setting)
    with pytest.raises(SystemExit) as exit_info:
        parser.get_parsed_content("inference")
    assert exit_info.value.code == 2 and message in caplog.text
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- 6. bad files, via the API


def test_folder_with_bad_files_writes_only_the_good_ones(tmp_path: Path, rg1_uncr: Path, classifier) -> None:
    inbox = tmp_path / "inbox"
    png_chest(inbox / "good.png")
    small_dx(inbox / "sub" / "good.dcm", rg1_uncr)
    truncated_dicom(inbox / "truncated.dcm", rg1_uncr)
    (inbox / "notes.png").write_text("a text file with an image suffix\n")
    (inbox / "README").write_text("a text file without a suffix\n")
    shutil.copy(get_testdata_file("CT_small.dcm"), inbox / "ct.dcm")
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 6), np.float32), np.eye(4)), str(inbox / "volume.nii.gz"))
    out = tmp_path / "out"
    runner = ExaggerationInference(tiny_generator(), classifier, num_bins=10, num_frames=4, device="cpu")

    summary = runner.run(inbox, out)

    assert summary.num_inputs == 7 and summary.num_series == 2 and summary.num_files == 8
    assert summary.exit_code == 1 and len(summary.failures) == 5
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert list(errors.columns) == ERROR_COLUMNS and len(errors) == 5
    problems = {Path(p).name: e for p, e in zip(errors["source"], errors["error"])}
    assert "truncated or corrupt" in problems["truncated.dcm"]
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
    assert not temporaries(out)
    text = summary.describe()
    assert "7 input(s): 2 series written (8 DICOM files), 5 failed" in text and str(out / "errors.csv") in text


def test_empty_folder_is_an_input_error(tmp_path: Path, classifier) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "labels.csv").write_text("image\n")  # not a candidate image
    runner = ExaggerationInference(tiny_generator(), classifier, num_bins=10, device="cpu")
    with pytest.raises(FileNotFoundError, match="no image files found"):
        runner.run(tmp_path / "inbox", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- 7. rollback


def test_failed_quicklook_rolls_back_that_source_only(tmp_path: Path, classifier, monkeypatch: pytest.MonkeyPatch) -> None:
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
    runner = ExaggerationInference(tiny_generator(), classifier, num_bins=10, num_frames=3, quicklook=True, device="cpu")

    summary = runner.run(inbox, out)

    assert summary.exit_code == 1 and summary.num_series == 1 and summary.num_files == 3
    assert [Path(f["source"]).name for f in summary.failures] == ["broken.png"]
    assert "No space left on device" in summary.failures[0]["error"]
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert errors["source"].map(lambda p: Path(p).name).tolist() == ["broken.png"]
    # the DICOM series and the GIF written before the montage failed are gone; the other source is complete
    sources = read_sources(out)
    assert [Path(p).name for p in sources["source"]] == ["fine.png"]
    assert [p.name for p in dicom_dir(out)] == [sources["series_instance_uid"][0]]
    assert [p.name for p in (out / "quicklook").iterdir()] == [Path(sources["gif"][0]).parent.name]
    kept = {p.relative_to(out).as_posix() for p in all_files(out)}
    expected = {"frames.csv", "sources.csv", "errors.csv"}
    expected |= {Path(p).relative_to(out).as_posix() for p in read_frames(out)["output_file"]}
    expected |= {Path(sources[k][0]).relative_to(out).as_posix() for k in ("gif", "montage", "score_plot")}
    assert kept == expected
    assert not any("broken" in p.name for p in out.rglob("*"))


# ----------------------------------------------------------------------------------- 3/8/9. PNG source: determinism, patient, bits, resolution


@pytest.fixture(scope="module")
def png_runs(tmp_path_factory: pytest.TempPathFactory, classifier) -> dict[str, Path]:
    """One PNG run with inference.json's settings, the same again elsewhere, and with bits=16 / resolution=model."""
    root = tmp_path_factory.mktemp("png_runs")
    png = png_chest(root / "input" / "chest.png")
    outs = {}
    for name, settings in [("a", {}), ("b", {}), ("bits16", {"bits": 16}), ("model", {"resolution": "model"})]:
        outs[name] = root / name
        summary = shipped_runner(classifier, **settings).run(png, outs[name])
        assert summary.exit_code == 0 and summary.num_files == 10
    outs["input"] = png
    return outs


def test_rerun_gives_identical_uids_and_pixels(png_runs) -> None:
    a, b = read_frames(png_runs["a"]), read_frames(png_runs["b"])
    for column in ("series_instance_uid", "sop_instance_uid", "study_instance_uid", "model_version", "score"):
        assert a[column].tolist() == b[column].tolist(), column
    for left, right in zip(a["output_file"], b["output_file"]):
        assert Path(left) != Path(right)
        first, second = pydicom.dcmread(left), pydicom.dcmread(right)
        assert np.array_equal(first.pixel_array, second.pixel_array)
        assert (first.SOPInstanceUID, first.PatientID) == (second.SOPInstanceUID, second.PatientID)


def test_rerun_into_the_same_folder_replaces_the_series(png_runs, classifier) -> None:
    out = png_runs["a"]
    before = {p: p.read_bytes() for p in all_files(out / "dicom")}
    summary = shipped_runner(classifier).run(png_runs["input"], out)
    assert summary.exit_code == 0
    after = all_files(out / "dicom")
    assert sorted(after) == sorted(before)  # no duplicates, same names
    for path in after:
        assert pydicom.dcmread(path).pixel_array.tobytes() == pydicom.dcmread(io.BytesIO(before[path])).pixel_array.tobytes()
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


def test_model_resolution_frames_are_model_size(png_runs) -> None:
    frames = read_frames(png_runs["model"])
    files = [Path(p) for p in frames["output_file"]]
    for path in files:
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (128, 128) and ds.pixel_array.dtype == np.uint8
    assert_dciodvfy_clean(files)


# ----------------------------------------------------------------------------------- model version and pixel spacing


def test_in_memory_generator_weights_enter_the_model_version(tmp_path: Path, classifier) -> None:
    """Without a weights file (``explainer_weights=None``) the UIDs must still change with the generator's weights:
    two different generators give different pixels, so they must not give the same SOP Instance UIDs."""
    png = png_chest(tmp_path / "chest.png")
    outs = []
    for seed in (1, 2):
        runner = ExaggerationInference(tiny_generator(seed), classifier, num_bins=10, num_frames=2, quicklook=False,
                                       device="cpu")
        runner.run(png, tmp_path / f"out{seed}")
        outs.append(read_frames(tmp_path / f"out{seed}"))
    pixels = [pydicom.dcmread(frame["output_file"][1]).pixel_array for frame in outs]
    assert not np.array_equal(*pixels)  # different generators, different frames
    assert outs[0]["model_version"][0] != outs[1]["model_version"][0]
    assert set(outs[0]["sop_instance_uid"]).isdisjoint(outs[1]["sop_instance_uid"])
    # the same generator again gives the same version
    again = ExaggerationInference(tiny_generator(1), classifier, num_bins=10, num_frames=2, quicklook=False, device="cpu")
    assert again.prepare().model_version == outs[0]["model_version"][0]


@pytest.mark.parametrize(("resolution", "aspect", "spacing"), [("source", "pad", (0.2, 0.2)),
                                                               ("model", "pad", (0.625, 0.625)),
                                                               ("model", "crop", (0.375, 0.375)),
                                                               ("model", "stretch", (0.625, 0.375))])
def test_pixel_spacing_matches_the_written_matrix(tmp_path: Path, rg1_uncr: Path, classifier, resolution, aspect,
                                                  spacing) -> None:
    """A 200 x 120 source with 0.2 mm pixels: at model resolution a 64 x 64 frame shows the padded 200 x 200
    square (pad: 200/64 x 0.2 mm per pixel both ways) or the centred 120 x 120 square (crop), so its pixels
    stay square; only stretch squeezes rows and columns apart. (2 %: pad rounds the resized short side.)"""
    source = small_dx(tmp_path / "dx.dcm", rg1_uncr)
    runner = ExaggerationInference(tiny_generator(), classifier, num_bins=10, num_frames=2, resolution=resolution,
                                   aspect=aspect, quicklook=False, device="cpu")
    assert runner.run(source, tmp_path / "out").exit_code == 0
    ds = pydicom.dcmread(read_frames(tmp_path / "out")["output_file"][0], stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == ((200, 120) if resolution == "source" else (64, 64))
    assert np.allclose([float(v) for v in ds.PixelSpacing], spacing, rtol=0.02)
