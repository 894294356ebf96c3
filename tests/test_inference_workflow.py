"""The inference workflow: bundle command, DICOM series, CSV logs, quick-looks, errors, determinism."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from scipy.stats import spearmanr

from conftest import REPO_ROOT, run_bundle
from dicom_validation import dciodvfy_errors
from monai_exaggeration.bundle import load_bundle_classifier
from monai_exaggeration.inference import (
    ERROR_COLUMNS,
    FRAME_COLUMNS,
    SOURCE_COLUMNS,
    ExaggerationInference,
    full_resolution_frames,
    select_bins,
)
from monai_exaggeration.networks import ExaggerationGenerator
from monai_exaggeration.transforms import LoadCXR, cxr_preprocessing

INFERENCE = str(REPO_ROOT / "bundles" / "cxr" / "configs" / "inference.json")
BUNDLE = str(REPO_ROOT / "bundles" / "cxr")
EXPLAINER = REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def make_runner(**settings) -> ExaggerationInference:
    settings.setdefault("explainer_weights", EXPLAINER)
    return ExaggerationInference(None, load_bundle_classifier(), **settings)


def chest_png(path: Path, rg1: Path, size: tuple[int, int] = (160, 200)) -> Path:
    """A small real chest PNG (RG1 resized), rows x columns = size."""
    pixels = LoadCXR()(rg1)[0].numpy()
    image = Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def temporaries(folder: Path) -> list[Path]:
    """Left-over temporary files of atomic writes under ``folder`` (``.<name>.<random>.tmp``, hidden)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".tmp" in p.name)


# ----------------------------------------------------------------------------------- bundle command


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> tuple[Path, object]:
    """The README's main job: the bundle's inference on the default input (RG1_UNCR.dcm)."""
    out = tmp_path_factory.mktemp("default_run") / "out"
    result = run_bundle(
        ["run", "inference", "--config_file", INFERENCE, "--bundle_root", BUNDLE, "--output_dir", str(out)],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_default_run_writes_series_logs_and_quicklooks(default_run, rg1_uncr: Path) -> None:
    out, result = default_run
    series_dirs = [p for p in (out / "dicom").iterdir() if p.is_dir()]
    assert len(series_dirs) == 1
    files = sorted(series_dirs[0].glob("*.dcm"))
    assert [f.name for f in files] == [f"step_{i:03d}.dcm" for i in range(10)]
    frames = pd.read_csv(out / "frames.csv", keep_default_na=False)
    sources = pd.read_csv(out / "sources.csv", keep_default_na=False)
    assert list(frames.columns) == FRAME_COLUMNS and list(sources.columns) == SOURCE_COLUMNS
    assert len(frames) == 10 and len(sources) == 1
    assert not (out / "errors.csv").exists()
    assert Path(frames["source"][0]).samefile(rg1_uncr)
    gif = Image.open(sources["gif"][0])
    assert gif.format == "GIF" and gif.n_frames >= 10 and gif.is_animated
    for key in ("montage", "score_plot"):
        with Image.open(sources[key][0]) as image:
            assert image.format == "PNG" and image.width > 300
    # the summary tells the user where everything is
    assert "1 series written (10 DICOM files), 0 failed" in result.stdout
    assert str(out / "frames.csv") in result.stdout and str(out / "dicom") in result.stdout
    assert temporaries(out) == [], "temporary files left behind"


def test_default_run_dicom_tags_match_source_and_log(default_run, rg1_uncr: Path) -> None:
    out, _ = default_run
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    frames = pd.read_csv(out / "frames.csv", keep_default_na=False)
    series_uids = set()
    for row in frames.itertuples():
        ds = pydicom.dcmread(row.output_file)
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.SOPClassUID == SC_STORAGE
        assert ds.SOPInstanceUID == row.sop_instance_uid and ds.SeriesInstanceUID == row.series_instance_uid
        assert ds.PatientID == source.PatientID and ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.StudyInstanceUID == row.study_instance_uid
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID == row.source_sop_instance_uid
        assert "cardiomegaly" in ds.SeriesDescription and "not for diagnosis" in ds.SeriesDescription
        assert ds.InstanceNumber == row.step + 1
        assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns)  # full resolution by default
        assert f"Step {row.step} of 10" in ds.ImageComments
        assert f"target bin {row.target_bin}" in ds.ImageComments
        assert f"score {row.score:.4f}" in ds.ImageComments
        assert row.model_version in list(ds.SoftwareVersions)
        ours = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "monai_exaggeration"]
        assert len(ours) == 1 and row.model_version in list(ours[0].SoftwareVersions)
        assert np.isclose(row.target_centre, (row.target_bin + 0.5) / 10)
        assert 0.0 <= row.score <= 1.0 and 0.0 <= row.generator_frame_score <= 1.0
    assert len(series_uids) == 1
    image = hd.imread(frames["output_file"][0])
    assert image.SOPInstanceUID == frames["sop_instance_uid"][0]


def test_default_run_is_dciodvfy_clean(default_run) -> None:
    out, _ = default_run
    files = sorted((out / "dicom").rglob("*.dcm"))
    report = dciodvfy_errors(files[0])
    if report is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    for path in files:
        assert dciodvfy_errors(path) == [], path


def test_default_run_source_summary_is_consistent(default_run) -> None:
    out, _ = default_run
    frames = pd.read_csv(out / "frames.csv")
    source = pd.read_csv(out / "sources.csv").iloc[0]
    scores = frames.sort_values("step")["score"].to_numpy()
    assert source.num_frames == 10
    assert np.isclose(source.first_score, scores[0]) and np.isclose(source.last_score, scores[-1])
    assert source.monotone == bool((np.diff(scores) >= 0).all())
    expected_rho = spearmanr(np.arange(10), scores).statistic if np.ptp(scores) > 0 else 0.0
    assert np.isclose(source.spearman, expected_rho)
    positive = source.source_score >= 0.5
    assert source.flip_reached == bool((scores < 0.5).any() if positive else (scores >= 0.5).any())
    assert source.source_bin == min(int(source.source_score * 10), 9)


def test_bundle_plain_run_with_options(tmp_path: Path, rg1_uncr: Path) -> None:
    """Plain ``run`` (no run id), 5 frames at model resolution, 16 bit, no quick-looks."""
    out = tmp_path / "out"
    result = run_bundle(
        ["run", "--config_file", INFERENCE, "--bundle_root", BUNDLE, "--input", str(rg1_uncr), "--output_dir", str(out),
         "--num_frames", "5", "--resolution", "model", "--bits", "16", "--quicklook", "false"],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    frames = pd.read_csv(out / "frames.csv")
    assert frames["target_bin"].tolist() == [0, 2, 4, 7, 9]
    ds = pydicom.dcmread(frames["output_file"][0])
    assert (ds.Rows, ds.Columns) == (128, 128) and ds.BitsAllocated == 16 and ds.pixel_array.dtype == np.uint16
    assert float(ds.WindowWidth) == 65536
    assert not (out / "quicklook").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "/no/such/folder"], "input not found: /no/such/folder"),
        (["--explainer_weights", "/no/such/explainer.pt"], "weights not found: /no/such/explainer.pt"),
        (["--num_frames", "50"], "num_frames must be an integer from 2 to 10"),
    ],
)
def test_unusable_settings_exit_2_without_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = run_bundle(
        ["run", "inference", "--config_file", INFERENCE, "--bundle_root", BUNDLE, "--output_dir", str(out), *args],
        env=ONE_THREAD,
    )
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------- API: errors, rollback


@pytest.fixture(scope="module")
def runner() -> ExaggerationInference:
    return make_runner(quicklook=False).prepare()


def test_folder_with_bad_files_processes_the_good_ones(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    inbox = tmp_path / "inbox"
    chest_png(inbox / "good" / "chest.png", rg1_uncr)
    (inbox / "corrupt.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:700])  # truncated
    (inbox / "notes").write_text("not an image\n")
    shutil.copy(get_testdata_file("CT_small.dcm"), inbox / "ct.dcm")
    out = tmp_path / "out"

    summary = runner.run(inbox, out)

    assert summary.num_inputs == 4 and summary.num_series == 1 and summary.num_files == 10
    assert summary.exit_code == 1
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert list(errors.columns) == ERROR_COLUMNS
    problems = {Path(p).name: e for p, e in zip(errors["source"], errors["error"])}
    assert set(problems) == {"corrupt.dcm", "notes", "ct.dcm"}
    assert "modality CT" in problems["ct.dcm"]
    assert (errors["hint"] != "").all()
    frames = pd.read_csv(out / "frames.csv")
    assert set(Path(p).name for p in frames["source"]) == {"chest.png"}
    dicoms = list((out / "dicom").rglob("*"))
    assert len([p for p in dicoms if p.is_file()]) == 10 and len([p for p in dicoms if p.is_dir()]) == 1
    assert temporaries(out) == [], "temporary files left behind"
    assert "1 series written" in summary.describe() and "errors.csv" in summary.describe()


def test_failed_quicklook_rolls_back_the_source(tmp_path: Path, rg1_uncr: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monai_exaggeration.inference import quicklook

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(quicklook, "write_montage", broken)
    runner = make_runner(quicklook=True)
    out = tmp_path / "out"
    summary = runner.run(chest_png(tmp_path / "chest.png", rg1_uncr), out)
    assert summary.exit_code == 2 and summary.num_series == 0  # the only input failed
    assert "disk full" in summary.failures[0]["error"]
    leftovers = [p for p in all_files(out) if p.name not in ("errors.csv", "frames.csv", "sources.csv")]
    assert leftovers == []
    assert len(pd.read_csv(out / "frames.csv")) == 0


@pytest.mark.parametrize("writer", ["dicom", "quicklook"])
def test_failure_inside_a_write_leaves_no_temporary(tmp_path: Path, rg1_uncr: Path, monkeypatch: pytest.MonkeyPatch,
                                                    writer: str) -> None:
    """Disk full half-way through a file: its temporary is removed and the source's files are rolled back.

    The failure happens inside :func:`~monai_exaggeration.utils.atomic_write` (after bytes reached the
    temporary file), the only place a temporary can be left behind by a run that does not die.
    """
    from monai_exaggeration.dicom import secondary_capture
    from monai_exaggeration.inference import quicklook

    module = secondary_capture if writer == "dicom" else quicklook
    real, calls = module.atomic_write, []

    def fails_on_the_second_file(path, write):
        calls.append(path)
        if len(calls) != 2:
            return real(path, write)

        def half(tmp: Path) -> None:
            tmp.write_bytes(b"half a file")
            raise OSError("No space left on device")

        return real(path, half)

    monkeypatch.setattr(module, "atomic_write", fails_on_the_second_file)
    out = tmp_path / "out"
    runner = make_runner(quicklook=True, num_frames=3)
    chest_png(tmp_path / "inbox" / "a.png", rg1_uncr)
    chest_png(tmp_path / "inbox" / "b.png", rg1_uncr, (170, 200))
    summary = runner.run(tmp_path / "inbox", out)
    assert len(calls) >= 2 and summary.num_series == 1 and "No space left" in summary.failures[0]["error"]
    assert temporaries(out) == [], "temporary files left behind"
    frames = pd.read_csv(out / "frames.csv")
    written = [p for p in all_files(out) if p.name not in ("errors.csv", "frames.csv", "sources.csv")]
    assert sorted(written) == sorted({Path(p) for p in frames["output_file"]} | {
        Path(p) for p in pd.read_csv(out / "sources.csv")[["gif", "montage", "score_plot"]].to_numpy().ravel()})


# ----------------------------------------------------------------------------------- API: content


def test_same_input_twice_gives_identical_uids_and_pixels(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    png = chest_png(tmp_path / "chest.png", rg1_uncr)
    first = runner.run(png, tmp_path / "a")
    second = runner.run(png, tmp_path / "b")
    assert first.exit_code == second.exit_code == 0
    a = pd.read_csv(tmp_path / "a" / "frames.csv")
    b = pd.read_csv(tmp_path / "b" / "frames.csv")
    assert a["sop_instance_uid"].tolist() == b["sop_instance_uid"].tolist()
    assert a["series_instance_uid"].nunique() == 1 and a["series_instance_uid"][0] == b["series_instance_uid"][0]
    for left, right in zip(a["output_file"], b["output_file"]):
        assert np.array_equal(pydicom.dcmread(left).pixel_array, pydicom.dcmread(right).pixel_array)
    # a setting that changes the pixels changes the model version and so every UID
    other = make_runner(quicklook=False, bits=16)
    other.run(png, tmp_path / "c")
    c = pd.read_csv(tmp_path / "c" / "frames.csv")
    assert set(c["sop_instance_uid"]).isdisjoint(a["sop_instance_uid"])
    assert c["model_version"][0] != a["model_version"][0]


def test_png_source_gets_a_marked_patient_and_valid_dicom(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    png = chest_png(tmp_path / "chest.png", rg1_uncr, size=(150, 120))
    runner.run(png, tmp_path / "out")
    frames = pd.read_csv(tmp_path / "out" / "frames.csv", keep_default_na=False)
    ds = pydicom.dcmread(frames["output_file"][3])
    assert str(ds.PatientName) == "ANONYMOUS^EXAGGERATION" and ds.PatientID.startswith("EXAG-")
    assert (ds.Rows, ds.Columns) == (150, 120)
    assert "SourceImageSequence" not in ds and frames["source_sop_instance_uid"][0] == ""
    errors = dciodvfy_errors(frames["output_file"][3])
    if errors is not None:
        assert errors == []


def test_written_scores_are_the_scores_of_the_written_frames(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    """The logged score is f of the file a reader opens, preprocessed like any input."""
    png = chest_png(tmp_path / "chest.png", rg1_uncr)
    runner.run(png, tmp_path / "out")
    frames = pd.read_csv(tmp_path / "out" / "frames.csv")
    preprocessing = cxr_preprocessing("image", runner.image_size, "pad")
    for row in frames.iloc[[0, 9]].itertuples():
        image = preprocessing({"image": row.output_file})["image"]
        with torch.no_grad():
            score = float(runner.classifier(image[None].as_tensor()))
        assert abs(score - row.score) < 1e-4


def test_source_bin_frame_equals_source_at_full_resolution(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    """x + up(G(x, b_src) - G(x, b_src)) = x: the frame of the source's own bin is the source."""
    result = runner.explain(rg1_uncr)
    source = LoadCXR()(rg1_uncr)[0].numpy()
    own = result.bins.index(result.source_bin)
    frames = result.unit_frames
    assert result.frames.dtype == np.uint8 and frames.shape == (10, *source.shape)
    assert np.abs(frames[own] - source).max() <= 0.5 / 255 + 1e-6
    assert np.abs(frames[-1] - frames[0]).max() > 0.05  # the series does change something


# ----------------------------------------------------------------------------------- frames and bins


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_full_resolution_carries_the_change_to_the_source_grid(aspect: str, rg1_uncr: Path) -> None:
    source = LoadCXR()(rg1_uncr)
    preprocessing = cxr_preprocessing("image", 32, aspect, load=False)
    model_input = preprocessing({"image": source})["image"]
    pixels = np.full(source.shape[1:], 0.5, dtype=np.float32)
    reconstruction = torch.zeros(32, 32)
    frames = torch.stack([torch.zeros(32, 32), torch.full((32, 32), 0.2)])  # change 0 and +0.2 (model units)
    out = full_resolution_frames(pixels, frames, reconstruction, model_input, preprocessing)
    assert out.shape == (2, *pixels.shape)
    assert np.allclose(out[0], 0.5, atol=1e-6)  # no change -> the source itself
    if aspect == "crop":  # outside the centred square nothing was seen, so nothing changes
        side = min(pixels.shape)
        margin = (pixels.shape[0] - side) // 2
        assert np.allclose(out[1][:margin - 1], 0.5, atol=1e-6)
        centre = out[1][margin + 10 : margin + side - 10]
    else:
        centre = out[1][10:-10, 10:-10]
    assert np.allclose(centre, 0.6, atol=1e-4)  # +0.2 in [-1, 1] is +0.1 in display units


def test_select_bins() -> None:
    assert select_bins(10) == list(range(10))
    assert select_bins(10, 5) == [5, 6, 7, 8, 9]
    assert select_bins(10, 2, 6) == [2, 3, 4, 5, 6]
    assert select_bins(10, num_frames=5) == [0, 2, 4, 7, 9]
    assert select_bins(10, 0, 9, 2) == [0, 9]
    for bad in [dict(first=5, last=5), dict(first=-1), dict(last=10), dict(num_frames=11), dict(num_frames=1)]:
        with pytest.raises(ValueError):
            select_bins(10, **bad)


def test_bad_settings_are_rejected() -> None:
    for bad in [dict(bits=12), dict(resolution="full"), dict(aspect="fit"), dict(norm="batch"), dict(quicklook="maybe")]:
        with pytest.raises(ValueError):
            make_runner(**bad)
    assert make_runner(quicklook="false").quicklook is False


def test_weights_that_do_not_fit_the_network_say_so(tmp_path: Path) -> None:
    from monai_exaggeration.networks import ExplainerRecord, save_explainer

    small = ExaggerationGenerator(in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[8, 8], image_size=16)
    bare = tmp_path / "bare.pt"
    torch.save(small.state_dict(), bare)  # a pre-0.6 file: no architecture recorded
    with pytest.raises(ValueError, match="legacy_explainer_v0.json"):
        make_runner(explainer_weights=bare).prepare()
    recorded = save_explainer(tmp_path / "recorded.pt", small, ExplainerRecord(small))
    assert make_runner(explainer_weights=recorded).prepare().image_size == 16  # built from its record
    other = ExaggerationGenerator(in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[16, 8], image_size=16)
    runner = ExaggerationInference(other, load_bundle_classifier(), explainer_weights=recorded)
    with pytest.raises(ValueError, match="do not fit the generator"):
        runner.prepare()
    with pytest.raises(ValueError, match="trained with image_size = 16"):
        make_runner(explainer_weights=recorded, image_size=64).prepare()


def test_stage_timings_are_recorded(tmp_path: Path, rg1_uncr: Path) -> None:
    runner = make_runner(quicklook=False)
    summary = runner.run(chest_png(tmp_path / "chest.png", rg1_uncr), tmp_path / "out")
    assert summary.stage_seconds["generator"] > 0 and summary.stage_seconds["write"] > 0
    assert summary.stage_seconds["quicklook"] == 0.0
    assert sum(summary.stage_seconds.values()) <= summary.seconds + 1e-3
