"""Tests for monai_exaggeration.data.manifest: reading, writing, splitting, loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_exaggeration.data import (
    SPLITS,
    assign_split,
    load_split,
    read_manifest,
    write_manifest,
)


def _synthetic(n: int = 1000, positive_rate: float = 0.2, patients: int | None = None, seed: int = 1) -> pd.DataFrame:
    """A manifest-like table with n images, optional patient ids, given positive rate."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {"image": [f"img/{i:05d}.png" for i in range(n)], "finding": (rng.random(n) < positive_rate).astype(int)}
    )
    if patients is not None:
        df["patient_id"] = rng.integers(0, patients, n).astype(str)
    return df


# --------------------------------------------------------------------------- read_manifest


def test_read_manifest_resolves_paths(tmp_path: Path) -> None:
    absolute = str(tmp_path / "elsewhere" / "x.png")
    (tmp_path / "m.csv").write_text(f"image,finding,view\na/1.png,1,PA\n{absolute},0,AP\n./b/../c/2.png,1.0,PA\n")
    df = read_manifest(tmp_path / "m.csv")
    assert df["image"].tolist() == [str(tmp_path / "a" / "1.png"), absolute, str(tmp_path / "c" / "2.png")]
    assert df["finding"].tolist() == [1, 0, 1]
    assert df["finding"].dtype == np.int64
    assert df["view"].tolist() == ["PA", "AP", "PA"]


def test_read_manifest_missing_file_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "labels.csv"
    with pytest.raises(FileNotFoundError) as err:
        read_manifest(missing)
    message = str(err.value)
    assert str(missing) in message
    assert "scripts/make_manifest.py" in message and "docs/datasets.md" in message


def test_read_manifest_needs_image_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,finding\na.png,1\n")
    with pytest.raises(ValueError, match="no 'image' column"):
        read_manifest(tmp_path / "m.csv")


@pytest.mark.parametrize("bad", ["2", "-1", "yes", ""])
def test_read_manifest_rejects_non_binary_labels(tmp_path: Path, bad: str) -> None:
    (tmp_path / "m.csv").write_text(f"image,cardiomegaly\na.png,1\nb.png,{bad}\nc.png,0\n")
    with pytest.raises(ValueError) as err:
        read_manifest(tmp_path / "m.csv")
    message = str(err.value)
    assert "'cardiomegaly'" in message and "0/1" in message and "1 row(s)" in message
    assert repr(bad if bad else "<blank>") in message


def test_read_manifest_label_columns_selects_and_checks(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,finding,age\na.png,1,57\nb.png,0,80\n")
    with pytest.raises(ValueError, match="'age'"):
        read_manifest(tmp_path / "m.csv")  # inferred label columns include 'age'
    assert read_manifest(tmp_path / "m.csv", label_columns=["finding"])["age"].tolist() == [57, 80]
    with pytest.raises(ValueError, match="lacks label column"):
        read_manifest(tmp_path / "m.csv", label_columns=["edema"])


def test_read_manifest_rejects_unknown_split(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,finding,split\na.png,1,train\nb.png,0,validate\n")
    with pytest.raises(ValueError, match="'validate'"):
        read_manifest(tmp_path / "m.csv")


def test_read_manifest_check_files_lists_missing(tmp_path: Path) -> None:
    (tmp_path / "present.png").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("image,finding\npresent.png,1\nmissing1.png,0\nmissing2.png,0\n")
    assert len(read_manifest(tmp_path / "m.csv")) == 3  # not checked by default
    with pytest.raises(FileNotFoundError) as err:
        read_manifest(tmp_path / "m.csv", check_files=True)
    assert "2 of 3" in str(err.value) and "missing1.png" in str(err.value)


# --------------------------------------------------------------------------- write_manifest


def test_write_manifest_round_trip_relative_and_absolute(tmp_path: Path) -> None:
    outside = str(tmp_path / "other" / "z.png")
    df = pd.DataFrame({"image": [str(tmp_path / "out" / "a" / "1.png"), outside, "b/2.png"], "finding": [1, 0, 1]})
    path = write_manifest(df, tmp_path / "out" / "labels.csv")
    raw = pd.read_csv(path)
    assert raw["image"].tolist() == ["a/1.png", outside, "b/2.png"]
    back = read_manifest(path)
    assert back["image"].tolist() == [
        str(tmp_path / "out" / "a" / "1.png"),
        outside,
        str(tmp_path / "out" / "b" / "2.png"),
    ]
    assert sorted(os.listdir(tmp_path / "out")) == ["labels.csv"]  # no temporary file left


def test_write_manifest_image_root(tmp_path: Path) -> None:
    df = pd.DataFrame({"image": ["images/1.png"], "finding": [1]})
    write_manifest(df, tmp_path / "labels.csv", image_root=tmp_path / "nih")
    assert pd.read_csv(tmp_path / "labels.csv")["image"].tolist() == ["nih/images/1.png"]
    write_manifest(df, tmp_path / "sub" / "labels.csv", image_root=tmp_path / "nih")
    assert pd.read_csv(tmp_path / "sub" / "labels.csv")["image"].tolist() == [
        str(tmp_path / "nih" / "images" / "1.png")
    ]


def test_write_manifest_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "labels.csv"
    target.write_text("image,finding\nold.png,1\n")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(pd.DataFrame({"image": ["new.png"], "finding": [0]}), target)
    assert target.read_text() == "image,finding\nold.png,1\n"
    assert os.listdir(tmp_path) == ["labels.csv"]


# --------------------------------------------------------------------------- assign_split


def test_assign_split_deterministic_and_independent_of_row_order() -> None:
    df = _synthetic(500)
    first = assign_split(df, seed=3, stratify_column="finding")
    shuffled = df.sample(frac=1.0, random_state=7)
    again = assign_split(shuffled, seed=3, stratify_column="finding")
    assert again.index.equals(shuffled.index)
    pd.testing.assert_series_equal(again.sort_index(), first)
    assert not assign_split(df, seed=4, stratify_column="finding").equals(first)
    assert set(first) <= set(SPLITS)


def test_assign_split_sizes_follow_fractions() -> None:
    counts = assign_split(_synthetic(1000), fractions=(0.7, 0.2, 0.1)).value_counts()
    assert counts.to_dict() == {"train": 700, "val": 200, "test": 100}


def test_assign_split_zero_fraction_gives_empty_split() -> None:
    split = assign_split(_synthetic(200), fractions=(0.9, 0.1, 0.0), stratify_column="finding")
    assert "test" not in set(split)
    assert (split == "val").sum() == 20


def test_assign_split_stratifies() -> None:
    df = _synthetic(3000, positive_rate=0.1)
    split = assign_split(df, stratify_column="finding")
    overall = df["finding"].mean()
    for name in SPLITS:
        assert abs(df.loc[split == name, "finding"].mean() - overall) < 0.01


def test_assign_split_keeps_groups_together_and_stratifies_groups() -> None:
    df = _synthetic(4000, positive_rate=0.1, patients=800)
    split = assign_split(df, group_column="patient_id", stratify_column="finding")
    assert split.groupby(df["patient_id"]).nunique().max() == 1
    per_patient = df.groupby("patient_id")["finding"].max()
    patient_split = split.groupby(df["patient_id"]).first()
    overall = per_patient.mean()
    for name in SPLITS:
        assert abs(per_patient[patient_split == name].mean() - overall) < 0.03
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["val"] - 0.1) < 0.03


@pytest.mark.parametrize(
    "fractions", [(0.8, 0.1), (0.8, 0.1, 0.2), (0.9, 0.2, -0.1), ("a", 0.5, 0.5), (float("nan"), 0.5, 0.5)]
)
def test_assign_split_rejects_bad_fractions(fractions: tuple) -> None:
    with pytest.raises(ValueError, match="fractions must be 3 non-negative numbers"):
        assign_split(_synthetic(10), fractions=fractions)


def test_assign_split_missing_columns() -> None:
    with pytest.raises(ValueError, match="'patient_id'"):
        assign_split(_synthetic(10), group_column="patient_id")
    with pytest.raises(ValueError, match="'edema'"):
        assign_split(_synthetic(10), stratify_column="edema")


# --------------------------------------------------------------------------- load_split


def _dataset(tmp_path: Path, df: pd.DataFrame) -> Path:
    write_manifest(df, tmp_path / "labels.csv")
    return tmp_path


def test_load_split_records_and_collation(tmp_path: Path) -> None:
    from torch.utils.data import (
        default_collate,  # what MONAI's list_data_collate applies to dicts
    )

    folder = _dataset(tmp_path, _synthetic(100))
    records = load_split(folder, "train", label="finding")
    assert len(records) == 80
    first = records[0]
    assert set(first) == {"image", "label", "finding"}
    assert os.path.isabs(first["image"]) and first["image"].startswith(str(tmp_path))
    assert first["label"].dtype == np.float32 and first["label"].shape == (1,)
    assert all(float(r["label"][0]) == r["finding"] for r in records)
    assert [r["image"] for r in records] == sorted(r["image"] for r in records)
    batch = default_collate(records[:4])
    assert tuple(batch["label"].shape) == (4, 1)


def test_load_split_partitions_and_accepts_csv_path(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, _synthetic(300, patients=60))
    parts = {s: load_split(folder / "labels.csv", s, label="finding", seed=5) for s in SPLITS}
    images = [r["image"] for s in SPLITS for r in parts[s]]
    assert len(images) == len(set(images)) == 300
    df = read_manifest(folder / "labels.csv")
    patient = dict(zip(df["image"], df["patient_id"]))
    seen = {s: {patient[r["image"]] for r in parts[s]} for s in SPLITS}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


def test_load_split_uses_split_column(tmp_path: Path) -> None:
    df = _synthetic(10)
    df["split"] = ["test"] * 3 + ["train"] * 7
    folder = _dataset(tmp_path, df)
    assert [Path(r["image"]).name for r in load_split(folder, "test", label="finding")] == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]
    with pytest.raises(ValueError, match="split 'val' is empty"):
        load_split(folder, "val", label="finding")


def test_load_split_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_split(tmp_path / "missing", "train")
    message = str(err.value)
    assert "labels.csv" in message and "docs/datasets.md" in message and "shared" not in message
    with pytest.raises(FileNotFoundError, match="has no labels.csv"):
        load_split(tmp_path, "train")
    folder = _dataset(tmp_path, _synthetic(20))
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(folder, "validation", label="finding")
    with pytest.raises(ValueError, match="'cardiomegaly'"):
        load_split(folder, "train")


def test_load_split_shared_nih128(nih_dir: Path) -> None:
    folder = nih_dir
    parts = {s: load_split(folder, s) for s in SPLITS}
    sizes = {s: len(parts[s]) for s in SPLITS}
    assert sum(sizes.values()) == 4438
    assert sizes == {"train": 3550, "val": 444, "test": 444}
    images = {r["image"] for s in SPLITS for r in parts[s]}
    assert len(images) == 4438
    for s in SPLITS:
        rate = np.mean([r["cardiomegaly"] for r in parts[s]])
        assert abs(rate - 0.5) < 0.01
    assert all(os.path.isfile(r["image"]) for r in parts["val"][:20])
    assert [r["image"] for r in load_split(folder, "val")] == [r["image"] for r in parts["val"]]


def test_stratified_head_interleaves_classes_deterministically() -> None:
    """A folder-per-class split sorted by path starts with one class; the head must hold both."""
    from monai_exaggeration.data import stratified_head

    records = [{"image": f"false/{i}.png", "cardiomegaly": 0} for i in range(5)]
    records += [{"image": f"true/{i}.png", "cardiomegaly": 1} for i in range(2)]
    head = stratified_head(records, 4)
    assert [r["cardiomegaly"] for r in head] == [0, 1, 0, 1]
    assert [r["image"] for r in head] == ["false/0.png", "true/0.png", "false/1.png", "true/1.png"]
    everything = stratified_head(records, None)
    assert len(everything) == 7 and sorted(r["image"] for r in everything) == sorted(r["image"] for r in records)
    assert [r["cardiomegaly"] for r in everything][4:] == [0, 0, 0]  # the larger class fills the tail
    assert stratified_head(records, 4) == head
