"""Hardening of the inference output: truthful BurnedInAnnotation, unique UIDs per image content, clean re-runs.

Each test guards one finding of the hardening review (docs/inference.md describes the behaviour).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from conftest import REPO_ROOT
from inference.helpers import chest_png, make_runner

from monai_exaggeration.utils import remove_stale_temporaries

SC_FILES = "dicom/*/step_*.dcm"


@pytest.fixture(scope="module")
def runner():
    return make_runner(quicklook=False, num_frames=3).prepare()


def _written(out: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out.glob(SC_FILES))]


# ----------------------------------------------------------------------------------- 1. BurnedInAnnotation


@pytest.mark.parametrize("value", ["YES", "NO"])
def test_burned_in_annotation_is_copied_from_the_source(tmp_path: Path, rg1_uncr: Path, runner, value: str) -> None:
    source = pydicom.dcmread(rg1_uncr)
    source.BurnedInAnnotation = value
    source.SOPInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / f"burned_{value}.dcm"
    source.save_as(path)
    runner.run(path, tmp_path / "out")
    written = _written(tmp_path / "out")
    assert len(written) == 3 and {ds.BurnedInAnnotation for ds in written} == {value}


def test_unknown_burned_in_annotation_is_left_out_with_a_warning(
    tmp_path: Path, rg1_uncr: Path, runner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="monai_exaggeration.dicom.secondary_capture")  # said once, then DEBUG
    png = chest_png(tmp_path / "chest.png", rg1_uncr, size=(128, 128))
    runner.run(png, tmp_path / "out")
    assert all("BurnedInAnnotation" not in ds for ds in _written(tmp_path / "out"))  # never a guessed NO
    assert "BurnedInAnnotation" in caplog.text
    declared = make_runner(quicklook=False, num_frames=3, burned_in_annotation_free=True)
    declared.run(png, tmp_path / "declared")
    assert {ds.BurnedInAnnotation for ds in _written(tmp_path / "declared")} == {"NO"}


# ----------------------------------------------------------------------------------- 2. UIDs and pixel content


def test_twins_sharing_a_sop_instance_uid_get_their_own_series(shared_dicom: Path, tmp_path: Path, runner) -> None:
    """siim-cr-jpeg-baseline.dcm and its MONOCHROME1 twin share a SOP Instance UID but not their pixels."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("siim-cr-jpeg-baseline.dcm", "siim-cr-jpeg-baseline-monochrome1.dcm"):
        shutil.copy(shared_dicom / name, inbox / name)
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in inbox.iterdir()}
    assert len(uids) == 1
    out = tmp_path / "out"
    summary = runner.run(inbox, out)
    assert (summary.num_series, summary.failures) == (2, [])
    frames = pd.read_csv(out / "frames.csv", keep_default_na=False)
    assert frames["series_instance_uid"].nunique() == 2 and len(frames) == len(list(out.glob(SC_FILES))) == 6
    for row in frames.itertuples():  # every row points at its own file, and the file at its row
        ds = pydicom.dcmread(row.output_file, stop_before_pixels=True)
        assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (row.series_instance_uid, row.sop_instance_uid)
    by_source = frames.groupby("source")["series_instance_uid"].first()
    assert by_source.nunique() == 2
    runner.run(inbox, tmp_path / "again")  # re-runs stay deterministic
    assert (
        pd.read_csv(tmp_path / "again" / "frames.csv")["sop_instance_uid"].tolist()
        == frames["sop_instance_uid"].tolist()
    )


def test_a_duplicate_input_is_reported_not_written_twice(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(rg1_uncr, inbox / "a.dcm")
    shutil.copy(rg1_uncr, inbox / "b.dcm")
    summary = runner.run(inbox, tmp_path / "out")
    assert summary.num_series == 1 and len(summary.failures) == 1 and summary.exit_code == 1
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors["source"].tolist() == [str(inbox / "b.dcm")] and "a.dcm" in errors["error"][0]
    assert len(pd.read_csv(tmp_path / "out" / "frames.csv")) == len(list((tmp_path / "out").glob(SC_FILES))) == 3


# ----------------------------------------------------------------------------------- 6. re-runs


def test_rerun_lists_every_series_and_only_this_runs_errors(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    out = tmp_path / "out"
    first = tmp_path / "first"
    chest_png(first / "one.png", rg1_uncr, size=(128, 140))
    (first / "broken.dcm").write_text("not an image")
    assert runner.run(first, out).exit_code == 1 and (out / "errors.csv").is_file()
    second = chest_png(tmp_path / "two.png", rg1_uncr, size=(150, 128))
    assert runner.run(second, out).exit_code == 0
    assert not (out / "errors.csv").exists()  # errors.csv describes this run only
    sources = pd.read_csv(out / "sources.csv")
    on_disk = sorted(p.name for p in (out / "dicom").iterdir())
    assert sorted(sources["series_instance_uid"]) == on_disk and len(on_disk) == 2
    assert sorted(pd.read_csv(out / "frames.csv")["series_instance_uid"].unique()) == on_disk
    assert runner.run(second, out).exit_code == 0  # the same input again: its rows are replaced, not repeated
    assert len(pd.read_csv(out / "sources.csv")) == 2 and len(pd.read_csv(out / "frames.csv")) == 6


def test_symlink_loop_is_an_errors_row(tmp_path: Path, rg1_uncr: Path, runner) -> None:
    inbox = tmp_path / "inbox"
    chest_png(inbox / "good.png", rg1_uncr, size=(128, 128))
    os.symlink(inbox / "loop.dcm", inbox / "loop.dcm")
    summary = runner.run(inbox, tmp_path / "out")
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert summary.num_series == 1 and errors["error"].tolist() == ["symbolic link loop"]


def test_temporary_names_never_end_in_dcm_and_stale_ones_are_removed(tmp_path: Path) -> None:
    from monai_exaggeration.utils import atomic_write

    seen = []
    atomic_write(tmp_path / "step_000.dcm", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].startswith(".step_000.dcm.") and seen[0].endswith(".tmp")
    old = tmp_path / "series" / ".step_001.dcm.abcd1234.tmp.dcm"  # what releases before 0.7 left behind
    old.parent.mkdir()
    old.write_bytes(b"")
    fresh = tmp_path / "series" / ".step_002.dcm.efgh5678.tmp"
    fresh.write_bytes(b"")
    foreign = tmp_path / "series" / "notes.tmp"
    foreign.write_bytes(b"")
    os.utime(old, (time.time() - 60, time.time() - 60))
    removed = remove_stale_temporaries(tmp_path, before=time.time() - 30)
    assert removed == [old] and fresh.exists() and foreign.exists()


def test_kill_during_a_write_then_rerun_leaves_no_temporaries(tmp_path: Path, rg1_uncr: Path) -> None:
    """kill -9 while a DICOM file is being written; the re-run completes the series and cleans up."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        import monai_exaggeration.dicom.secondary_capture as sc
        from inference.helpers import make_runner
        original = sc.atomic_write
        calls = []
        def slow(path, write):
            calls.append(path)
            if len(calls) == 2:  # the second frame: leave its temporary file and die
                def stuck(tmp):
                    tmp.write_bytes(b"")
                    print("WRITING", flush=True)
                    time.sleep(600)
                return original(path, stuck)
            return original(path, write)
        sc.atomic_write = slow
        make_runner(quicklook=False, num_frames=3).run({str(rg1_uncr)!r}, {str(out)!r})
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        line = process.stdout.readline()
        assert "WRITING" in line
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    leftovers = [p for p in out.rglob(".*") if p.is_file()]
    assert leftovers and all(not p.name.endswith(".dcm") for p in leftovers)
    time.sleep(1.1)  # the re-run only removes temporaries older than itself
    summary = make_runner(quicklook=False, num_frames=3).run(rg1_uncr, out)
    assert summary.exit_code == 0 and summary.num_files == 3
    assert [p for p in out.rglob(".*") if p.is_file()] == []
    assert len(list(out.glob(SC_FILES))) == 3
