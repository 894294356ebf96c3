"""Tests for monai_exaggeration.data.adapters and scripts/make_manifest.py."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import pandas as pd
import pytest

from monai_exaggeration.data import (
    SPLITS,
    chexpert_manifest,
    folder_manifest,
    label_name,
    load_split,
    mimic_manifest,
    nih_manifest,
    read_manifest,
)

REPO = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("make_manifest", REPO / "scripts" / "make_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_split_per_patient(df: pd.DataFrame) -> bool:
    return bool(df.groupby("patient_id")["split"].nunique().max() == 1)


def test_label_name() -> None:
    assert label_name("Cardiomegaly") == "cardiomegaly"
    assert label_name("Pleural Effusion") == "pleural_effusion"
    assert label_name("Pleural_Thickening") == "pleural_thickening"


# --------------------------------------------------------------------------- NIH (real label file)


@pytest.fixture(scope="module")
def nih_default(nih_data_entry: Path) -> pd.DataFrame:
    return nih_manifest(nih_data_entry, "/data/nih")


def test_nih_real_counts_and_format(nih_default: pd.DataFrame) -> None:
    df = nih_default
    assert list(df.columns) == ["image", "cardiomegaly", "patient_id", "view", "split"]
    assert int(df["cardiomegaly"].sum()) == 2776
    assert int((df["cardiomegaly"] == 0).sum()) == 60361  # 'No Finding' images
    assert df["image"].iloc[0] == "images/00000001_000.png"
    assert set(df["view"]) == {"PA", "AP"}
    assert set(df["split"]) == set(SPLITS)


def test_nih_real_split_by_patient_and_stratified(nih_default: pd.DataFrame) -> None:
    df = nih_default
    assert _one_split_per_patient(df)
    shares = df["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.01 and abs(shares["test"] - 0.1) < 0.01
    overall = df["cardiomegaly"].mean()
    for name in SPLITS:
        assert abs(df.loc[df["split"] == name, "cardiomegaly"].mean() - overall) < 0.01


def test_nih_real_views_and_negative_policy(nih_data_entry: Path) -> None:
    pa = nih_manifest(nih_data_entry, ".", views=["PA"], negatives="all_without_finding", fractions=None)
    assert set(pa["view"]) == {"PA"} and len(pa) == 67310
    assert "split" not in pa.columns
    everything = nih_manifest(nih_data_entry, ".", views=None, negatives="all_without_finding", fractions=None)
    assert len(everything) == 112120 and int(everything["cardiomegaly"].sum()) == 2776
    assert int(pa["cardiomegaly"].sum()) < 2776
    edema = nih_manifest(nih_data_entry, ".", finding="Edema", views=None, fractions=None)
    assert list(edema.columns)[:2] == ["image", "edema"] and int(edema["edema"].sum()) == 2303


def test_nih_unknown_finding_and_policy(nih_data_entry: Path) -> None:
    with pytest.raises(ValueError, match="Cardiomegalie.*known findings.*Cardiomegaly"):
        nih_manifest(nih_data_entry, ".", finding="Cardiomegalie")
    with pytest.raises(ValueError, match="negatives must be one of"):
        nih_manifest(nih_data_entry, ".", negatives="none")


def _nih_entry(tmp_path: Path) -> Path:
    rows = [
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA",
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,AP",
        "00000002_000.png,No Finding,0,2,80,M,PA",
        "00000003_000.png,Hernia,0,3,81,F,PA",
    ]
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        + "\n".join(rows)
        + "\n"
    )
    return path


def test_nih_missing_columns_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("Image Index,Labels\n1.png,Cardiomegaly\n")
    with pytest.raises(ValueError) as err:
        nih_manifest(path, ".")
    message = str(err.value)
    assert (
        str(path) in message
        and "'Finding Labels'" in message
        and "'Patient ID'" in message
        and "Data_Entry_2017" in message
    )


def test_nih_search_images_in_official_layout(tmp_path: Path) -> None:
    entry = _nih_entry(tmp_path)
    root = tmp_path / "nih"
    for folder, name in [("images_001", "00000001_000.png"), ("images_002", "00000002_000.png")]:
        (root / folder / "images").mkdir(parents=True)
        (root / folder / "images" / name).write_bytes(b"png")
    with pytest.warns(UserWarning, match="1 NIH image"):
        df = nih_manifest(entry, root, search_images=True, fractions=None)
    assert df["image"].tolist() == ["images_001/images/00000001_000.png", "images_002/images/00000002_000.png"]
    absolute = nih_manifest(entry, root, search_images=True, fractions=None, absolute_paths=True, views=["PA"])
    assert absolute["image"].tolist() == [
        str(root / "images_001/images/00000001_000.png"),
        str(root / "images_002/images/00000002_000.png"),
    ]
    with pytest.raises(FileNotFoundError, match="None of the"):
        nih_manifest(entry, tmp_path / "nih" / "images_001" / "images" / "..", search_images=True, views=["AP"])


# --------------------------------------------------------------------------- CheXpert (synthetic, real layout)

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)


def _chexpert_row(patient: int, study: int, view: int, lateral: bool, ap_pa: str, cardio: str, edema: str = "") -> str:
    kind = "lateral" if lateral else "frontal"
    path = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/view{view}_{kind}.jpg"
    observations = ["", "", cardio, "", "", edema] + [""] * 8
    return ",".join(
        [path, "Female", "68", "Lateral" if lateral else "Frontal", "" if lateral else ap_pa] + observations
    )


def _chexpert_csv(tmp_path: Path, name: str = "train.csv", first_patient: int = 1) -> Path:
    p = first_patient
    rows = [
        _chexpert_row(p, 1, 1, False, "AP", "1.0"),
        _chexpert_row(p, 1, 2, True, "", "1.0"),
        _chexpert_row(p + 1, 1, 1, False, "PA", "-1.0", edema="1.0"),
        _chexpert_row(p + 1, 2, 1, False, "AP", "0.0"),
        _chexpert_row(p + 2, 1, 1, False, "PA", ""),
    ]
    path = tmp_path / name
    path.write_text(CHEXPERT_HEADER + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("policy, expected", [("zeros", [1, 0, 0, 0]), ("ones", [1, 1, 0, 0]), ("ignore", [1, 0, 0])])
def test_chexpert_uncertainty_policies(tmp_path: Path, policy: str, expected: list[int]) -> None:
    df = chexpert_manifest(_chexpert_csv(tmp_path), tmp_path, uncertainty=policy, fractions=None)
    assert df["cardiomegaly"].tolist() == expected
    assert df["cardiomegaly"].dtype == "int64"


def test_chexpert_format_patients_views(tmp_path: Path) -> None:
    df = chexpert_manifest(_chexpert_csv(tmp_path), tmp_path)
    assert list(df.columns) == ["image", "cardiomegaly", "patient_id", "view", "split"]
    assert df["image"].iloc[0] == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert df["patient_id"].tolist() == ["patient00001", "patient00002", "patient00002", "patient00003"]
    assert df["view"].tolist() == ["AP", "PA", "AP", "PA"]
    assert _one_split_per_patient(df)
    with_lateral = chexpert_manifest(_chexpert_csv(tmp_path), tmp_path, frontal_only=False, fractions=None)
    assert len(with_lateral) == 5 and "Lateral" in set(with_lateral["view"])
    pa = chexpert_manifest(_chexpert_csv(tmp_path), tmp_path, views=["PA"], fractions=None)
    assert set(pa["view"]) == {"PA"} and len(pa) == 2
    edema = chexpert_manifest(_chexpert_csv(tmp_path), tmp_path, finding="Edema", fractions=None)
    assert edema["edema"].tolist() == [0, 1, 0, 0]


def test_chexpert_strip_prefix_split_and_absolute(tmp_path: Path) -> None:
    df = chexpert_manifest(
        _chexpert_csv(tmp_path, "valid.csv"),
        tmp_path / "CheXpert-v1.0-small",
        strip_prefix=True,
        split="test",
        absolute_paths=True,
    )
    assert df["image"].iloc[0] == str(tmp_path / "CheXpert-v1.0-small" / "train/patient00001/study1/view1_frontal.jpg")
    assert set(df["split"]) == {"test"}


def test_chexpert_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(CHEXPERT_HEADER + "\n" + _chexpert_row(1, 1, 1, False, "AP", "2.0") + "\n")
    with pytest.raises(ValueError, match="'Cardiomegaly'.*'2.0'"):
        chexpert_manifest(bad, tmp_path)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("Path,Sex\nx.jpg,Male\n")
    with pytest.raises(ValueError) as err:
        chexpert_manifest(wrong, tmp_path)
    assert str(wrong) in str(err.value) and "'Frontal/Lateral'" in str(err.value) and "CheXpert" in str(err.value)
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        chexpert_manifest(_chexpert_csv(tmp_path), tmp_path, uncertainty="u-ones")
    with pytest.raises(FileNotFoundError):
        chexpert_manifest(tmp_path / "absent.csv", tmp_path)


# --------------------------------------------------------------------------- MIMIC-CXR-JPG (synthetic, real layout)


def _mimic_files(tmp_path: Path, gz: bool = False) -> tuple[Path, Path, Path]:
    meta = (
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n"
        "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n"
        "d3,10000032,53189527,CHEST (PORTABLE AP),AP,3056,2544\n"
        "d4,11000011,51000001,CHEST (PA AND LAT),PA,3056,2544\n"
        "d5,12000012,52000002,CHEST (PA AND LAT),PA,3056,2544\n"
        "d6,13000013,59999999,CHEST (PA AND LAT),PA,3056,2544\n"
    )
    labels = (
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema\n"
        "10000032,50414267,,1.0,,\n"
        "10000032,53189527,1.0,-1.0,,\n"
        "11000011,51000001,,0.0,,1.0\n"
        "12000012,52000002,,,,\n"
    )
    split = (
        "dicom_id,study_id,subject_id,split\n"
        "d1,50414267,10000032,train\nd2,50414267,10000032,train\nd3,53189527,10000032,train\n"
        "d4,51000001,11000011,validate\nd5,52000002,12000012,test\nd6,59999999,13000013,test\n"
    )
    paths = []
    for name, text in [("metadata", meta), ("chexpert", labels), ("split", split)]:
        path = tmp_path / f"mimic-cxr-2.0.0-{name}.csv{'.gz' if gz else ''}"
        if gz:
            with gzip.open(path, "wt") as handle:
                handle.write(text)
        else:
            path.write_text(text)
        paths.append(path)
    return paths[0], paths[1], paths[2]


@pytest.mark.parametrize("gz", [False, True])
def test_mimic_official_split(tmp_path: Path, gz: bool) -> None:
    meta, labels, split = _mimic_files(tmp_path, gz)
    df = mimic_manifest(meta, labels, tmp_path, split_csv=split)
    assert list(df.columns) == ["image", "cardiomegaly", "patient_id", "view", "split"]
    assert df["image"].tolist() == [
        "files/p10/p10000032/s50414267/d1.jpg",
        "files/p10/p10000032/s53189527/d3.jpg",
        "files/p11/p11000011/s51000001/d4.jpg",
        "files/p12/p12000012/s52000002/d5.jpg",
    ]
    assert df["cardiomegaly"].tolist() == [1, 0, 0, 0]
    assert df["split"].tolist() == ["train", "train", "val", "test"]
    assert df["patient_id"].tolist() == ["10000032", "10000032", "11000011", "12000012"]


def test_mimic_policies_views_and_own_split(tmp_path: Path) -> None:
    meta, labels, _ = _mimic_files(tmp_path)
    ones = mimic_manifest(meta, labels, tmp_path, uncertainty="ones", fractions=None)
    assert ones["cardiomegaly"].tolist() == [1, 1, 0, 0]
    ignore = mimic_manifest(meta, labels, tmp_path, uncertainty="ignore", views=["PA"])
    assert ignore["image"].str.endswith(("d1.jpg", "d4.jpg", "d5.jpg")).all() and len(ignore) == 3
    assert _one_split_per_patient(ignore)
    every_view = mimic_manifest(meta, labels, tmp_path, views=None, fractions=None)
    assert "LATERAL" in set(every_view["view"]) and len(every_view) == 5
    edema = mimic_manifest(meta, labels, tmp_path, finding="Edema", fractions=None)
    assert edema["edema"].tolist() == [0, 0, 1, 0]


def test_mimic_errors(tmp_path: Path) -> None:
    meta, labels, split = _mimic_files(tmp_path)
    partial = tmp_path / "partial-split.csv"
    partial.write_text("dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\n")
    with pytest.raises(ValueError, match="have no split"):
        mimic_manifest(meta, labels, tmp_path, split_csv=partial)
    with pytest.raises(ValueError) as err:
        mimic_manifest(labels, meta, tmp_path)  # files swapped
    assert "'dicom_id'" in str(err.value) and "metadata" in str(err.value) and str(labels) in str(err.value)
    with pytest.raises(ValueError, match="no observation column|lacks required column"):
        mimic_manifest(meta, labels, tmp_path, finding="Hernia")


# --------------------------------------------------------------------------- folder per class


def test_folder_reproduces_shared_labels_csv(nih_dir: Path) -> None:
    reference = pd.read_csv(nih_dir / "labels.csv")
    df = folder_manifest(nih_dir, label="cardiomegaly")
    assert set(map(tuple, df.itertuples(index=False))) == set(map(tuple, reference.itertuples(index=False)))
    pd.testing.assert_frame_equal(df, reference, check_dtype=False)


def test_folder_layout_extensions_and_errors(tmp_path: Path) -> None:
    files = [
        "yes/a/2.png",
        "yes/a/10.PNG",
        "yes/scan.nii.gz",
        "no/1.dcm",
        "no/deep/er/x.jpeg",
        "no/notes.txt",
        "no/.hidden.png",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    df = folder_manifest(tmp_path, positive="yes", negative="no")
    assert df.to_dict("list") == {
        "image": ["yes/a/2.png", "yes/a/10.PNG", "yes/scan.nii.gz", "no/1.dcm", "no/deep/er/x.jpeg"],
        "finding": [1, 1, 1, 0, 0],
    }
    with pytest.raises(FileNotFoundError, match="Class folder"):
        folder_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        folder_manifest(tmp_path / "absent")


# --------------------------------------------------------------------------- scripts/make_manifest.py


def test_script_folder_round_trip(tmp_path: Path) -> None:
    for name in ["true/1.png", "true/2.png", "false/1.png", "false/2.png"]:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(b"")
    out = tmp_path / "data" / "labels.csv"
    assert (
        _load_script().main(
            [
                "folder",
                "--root",
                str(tmp_path / "data"),
                "--label",
                "cardiomegaly",
                "-o",
                str(out),
                "--with_split",
                "--fractions",
                "0.5",
                "0.5",
                "0",
            ]
        )
        == 0
    )
    assert pd.read_csv(out)["image"].tolist() == ["true/1.png", "true/2.png", "false/1.png", "false/2.png"]
    records = load_split(tmp_path / "data", "val")
    assert len(records) == 2 and sum(r["cardiomegaly"] for r in records) == 1
    assert sorted(os.listdir(tmp_path / "data")) == ["false", "labels.csv", "true"]


def test_script_nih_real(nih_data_entry: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nih" / "labels.csv"
    assert (
        _load_script().main(
            [
                "nih",
                "--data_entry",
                str(nih_data_entry),
                "--image_root",
                str(tmp_path / "nih"),
                "--views",
                "PA",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    df = read_manifest(out, label_columns=["cardiomegaly"])
    assert df["image"].iloc[0] == str(tmp_path / "nih" / "images" / "00000001_000.png")
    assert set(df["view"]) == {"PA"} and _one_split_per_patient(df)
    assert "with cardiomegaly" in capsys.readouterr().out


def test_script_chexpert_valid_as_test(tmp_path: Path) -> None:
    train, valid = _chexpert_csv(tmp_path), _chexpert_csv(tmp_path, "valid.csv", first_patient=64541)
    out = tmp_path / "chexpert.csv"
    assert (
        _load_script().main(
            [
                "chexpert",
                "--train_csv",
                str(train),
                "--valid_csv",
                str(valid),
                "--image_root",
                str(tmp_path),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    df = read_manifest(out, label_columns=["cardiomegaly"])
    assert (df["split"] == "test").sum() == 4 and set(df["split"]) <= set(SPLITS)
    assert set(df.loc[df["split"] == "test", "patient_id"]) == {"patient64541", "patient64542", "patient64543"}
    assert _one_split_per_patient(df)
    assert df["image"].iloc[0].startswith(str(tmp_path / "CheXpert-v1.0-small"))


def test_script_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = _load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(
            ["folder", "--root", str(tmp_path), "-o", str(tmp_path / "x.csv"), "--fractions", "0.5", "0.5", "0.5"]
        )
    assert exit_info.value.code == 2 and "sum to 1" in capsys.readouterr().err
    assert script.main(["folder", "--root", str(tmp_path / "absent"), "-o", str(tmp_path / "x.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(SystemExit):
        script.main(["--help"])
    assert "chexpert" in capsys.readouterr().out
