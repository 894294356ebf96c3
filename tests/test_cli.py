"""``python -m monai_exaggeration classify``: default input, folders, manifests, errors and exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from pydicom.data import get_testdata_file

from monai_exaggeration.bundle import CLASSIFIER_CONFIGS, default_bundle_root
from monai_exaggeration.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore:VR lookup failed"),  # CT_small.dcm has a private tag pydicom cannot type
    pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin"),  # imageio probing a text file
]

IMAGE_SIZE = "64"  # small input keeps every run fast; the network is size-agnostic
SHARED_DICOM = "nih-dx-secondary-capture.dcm"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised state dict of the bundle's classifier network (``network_def``)."""
    root = Path(default_bundle_root("cxr_classifier"))
    parser = ConfigParser()
    parser.read_config([str(root / name) for name in CLASSIFIER_CONFIGS])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("weights") / "classifier.pt"
    torch.save(network.state_dict(), path)
    return path


def run_classify(weights: Path, output_dir: Path, *extra: str) -> int:
    argv = ["classify", "--weights", str(weights), "--output_dir", str(output_dir), "--image_size", IMAGE_SIZE]
    return main(argv + ["--device", "cpu", *extra])


def read_scores(output_dir: Path) -> pd.DataFrame:
    return pd.read_csv(
        output_dir / "scores.csv", dtype={"sop_instance_uid": str, "patient_id": str}, keep_default_na=False
    )


def _nih_png(nih_dir: Path, folder: str) -> Path:
    files = sorted((nih_dir / folder).glob("*.png"))
    assert files
    return files[0]


# ------------------------------------------------------------------ in-process runs


def test_default_input_scores_rg1(weights: Path, tmp_path: Path, rg1_uncr: Path) -> None:
    output_dir = tmp_path / "out"
    assert run_classify(weights, output_dir) == 0
    scores = read_scores(output_dir)
    assert len(scores) == 1
    row = scores.iloc[0]
    assert row["finding"] == "cardiomegaly"
    assert 0.0 <= float(row["score"]) <= 1.0
    assert int(row["predicted"]) == int(float(row["score"]) >= 0.5)
    assert Path(row["image"]).name == "RG1_UNCR.dcm"
    dataset = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    assert row["sop_instance_uid"] == str(dataset.SOPInstanceUID)
    assert row["patient_id"] == str(dataset.PatientID)
    assert not (output_dir / "errors.csv").exists()


def test_folder_with_bad_files(weights: Path, tmp_path: Path, shared_dicom: Path, nih_dir: Path) -> None:
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(shared_dicom / SHARED_DICOM, folder / "chest.dcm")
    shutil.copy(_nih_png(nih_dir, "true"), folder / "sub" / "nih.png")  # folders are searched recursively
    (folder / "study_notes").write_text("Patient notes: no image here\n")  # no suffix: might be a DICOM
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (folder / "readme.txt").write_text("ignored: a non-image suffix\n")
    output_dir = tmp_path / "out"

    assert run_classify(weights, output_dir, "--input", str(folder)) == 1

    scores = read_scores(output_dir)
    assert sorted(Path(p).name for p in scores["image"]) == ["chest.dcm", "nih.png"]
    assert (scores["finding"] == "cardiomegaly").all()
    assert scores["score"].between(0.0, 1.0).all()
    uid = str(pydicom.dcmread(shared_dicom / SHARED_DICOM, stop_before_pixels=True).SOPInstanceUID)
    by_name = {Path(p).name: u for p, u in zip(scores["image"], scores["sop_instance_uid"])}
    assert by_name == {"chest.dcm": uid, "nih.png": ""}

    errors = pd.read_csv(output_dir / "errors.csv", keep_default_na=False)
    assert list(errors.columns) == ["source", "error", "hint"]
    problems = {Path(p).name: e for p, e in zip(errors["source"], errors["error"])}
    assert set(problems) == {"study_notes", "ct.dcm"}  # .DS_Store and readme.txt are not inputs
    assert "modality CT" in problems["ct.dcm"]
    assert "not a DICOM file" in problems["study_notes"]
    assert (errors["hint"] != "").all()


def test_manifest_label_is_carried(weights: Path, tmp_path: Path, nih_dir: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(_nih_png(nih_dir, "true"), images / "positive.png")
    shutil.copy(_nih_png(nih_dir, "false"), images / "negative.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,cardiomegaly\nimages/positive.png,1\nimages/negative.png,0\n")
    output_dir = tmp_path / "out"

    assert run_classify(weights, output_dir, "--input", str(manifest)) == 0

    scores = read_scores(output_dir)
    assert len(scores) == 2
    labels = {Path(p).name: int(v) for p, v in zip(scores["image"], scores["cardiomegaly"])}
    assert labels == {"positive.png": 1, "negative.png": 0}
    assert scores["score"].between(0.0, 1.0).all()


def test_manifest_patient_id_is_kept_for_png(weights: Path, tmp_path: Path, nih_dir: Path) -> None:
    shutil.copy(_nih_png(nih_dir, "true"), tmp_path / "positive.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,patient_id,cardiomegaly\npositive.png,00000013,1\n")
    output_dir = tmp_path / "out"
    assert run_classify(weights, output_dir, "--input", str(manifest)) == 0
    scores = read_scores(output_dir)
    assert scores.loc[0, "cardiomegaly"] == 1
    assert scores.loc[0, "patient_id"] == "00000013"


def test_all_inputs_fail_still_writes_scores_header(weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    output_dir = tmp_path / "out"
    assert (
        run_classify(weights, output_dir, "--input", str(folder)) == 2
    )  # every input failed: exit 2 (documented exit-code table)
    assert len(pd.read_csv(output_dir / "errors.csv")) == 1
    header = (output_dir / "scores.csv").read_text().splitlines()[0].split(",")
    assert {"image", "finding", "score", "predicted", "sop_instance_uid"} <= set(header)


def test_missing_input_exits_2_and_writes_nothing(weights: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    assert run_classify(weights, output_dir, "--input", str(tmp_path / "no_such_folder")) == 2
    assert not output_dir.exists()


def test_missing_weights_exits_2(tmp_path: Path, rg1_uncr: Path) -> None:
    output_dir = tmp_path / "out"
    assert run_classify(tmp_path / "absent.pt", output_dir, "--input", str(rg1_uncr)) == 2
    assert not output_dir.exists()


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "classify" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["classify", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--input" in out and "--weights" in out and "--aspect" in out


def test_module_entry_point_help() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "monai_exaggeration", "classify", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "classify" in result.stdout
    assert "--input" in result.stdout
