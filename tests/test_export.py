"""PACS export against a real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``): C-ECHO, C-STORE,
STOW-RS, the send ledger (re-run and resume after a crash), clear failures, and the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import REPO_ROOT
from export_helpers import needs_orthanc, uids_of
from orthanc_harness import LocalOrthanc, free_port

from monai_exaggeration.cli import main as cli_main
from monai_exaggeration.export import Destination, SendLedger, collect_dicom_files, export_files
from monai_exaggeration.transforms import read_cxr

pytest_plugins = ["orthanc_fixture"]  # the pacs and series fixtures
pytestmark = needs_orthanc


def test_echo_and_store_a_series_verified_through_rest(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    from monai_exaggeration.export import make_sender

    sender = make_sender(pacs.destination())
    try:
        assert sender.echo() == 0x0000
    finally:
        sender.close()
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(series[:10], pacs.destination(), ledger, progress=False)
        assert report.count("sent") == 10 and report.exit_code == 0
        assert ledger.count(pacs.destination().label) == 10
    assert sorted(pacs.instances()) == sorted(uids_of(series[:10]))
    assert {row.status for row in report.rows} == {"0x0000"}
    for orthanc_id in pacs.rest("/instances")[:3]:
        stored = pydicom.dcmread(__import__("io").BytesIO(pacs.rest(f"/instances/{orthanc_id}/file")))
        local = next(
            f for f in series if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == stored.SOPInstanceUID
        )
        local_ds = pydicom.dcmread(local)
        assert np.array_equal(stored.pixel_array, local_ds.pixel_array)
        for keyword in (
            "PatientID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPClassUID",
            "ImageComments",
            "SeriesDescription",
        ):
            assert stored[keyword].value == local_ds[keyword].value


def test_rerun_sends_nothing_and_stow_rs_works(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        first = export_files(series[:10], pacs.destination(), ledger, progress=False)
        again = export_files(series[:10], pacs.destination(), ledger, progress=False)
        assert first.count("sent") == 10
        assert again.count("sent") == 0 and again.count("already_sent") == 10 and again.exit_code == 0
        if not pacs.has_dicomweb:
            pytest.skip("orthanc-dicomweb plugin not installed")
        web = export_files(series[10:], pacs.dicomweb_destination(), ledger, progress=False)
    assert web.count("sent") == 10 and web.exit_code == 0
    assert sorted(pacs.instances()) == sorted(uids_of(series))


def test_export_resumes_after_the_pacs_crashes(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    """Orthanc is killed after 6 instances; the rest fail; after a restart only the missing ones are sent."""
    ledger_path = tmp_path / "ledger.sqlite"
    sent = []

    def crash_after_six(row) -> None:
        sent.append(row)
        if len(sent) == 6:
            pacs.stop(kill=True)

    destination = pacs.destination(connect_timeout=2.0)
    with SendLedger(ledger_path) as ledger:
        broken = export_files(
            series, destination, ledger, retries=1, backoff=0.05, progress=False, after_each=crash_after_six
        )
    assert broken.count("sent") == 6 and broken.count("failed") == 14 and broken.exit_code == 1
    assert all("cannot connect" in row.message for row in broken.rows if row.result == "failed")

    pacs.start()  # same storage
    with SendLedger(ledger_path) as ledger:
        resumed = export_files(series, destination, ledger, progress=False)
    assert resumed.count("already_sent") == 6 and resumed.count("sent") == 14 and resumed.exit_code == 0
    stored = pacs.instances()
    assert len(stored) == 20 and sorted(stored) == sorted(uids_of(series))  # complete, no duplicates


def test_wrong_called_ae_and_closed_port_fail_clearly(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        start = time.monotonic()
        wrong_ae = export_files(
            series[:3], pacs.destination(called_ae="NOT-ORTHANC"), ledger, retries=0, progress=False
        )
        closed = export_files(
            series[:3],
            Destination(host="127.0.0.1", port=free_port(), called_ae="X", connect_timeout=2.0),
            ledger,
            retries=1,
            backoff=0.05,
            progress=False,
        )
        assert time.monotonic() - start < 15
        assert ledger.count() == 0
    assert wrong_ae.count("failed") == 3 and wrong_ae.exit_code == 1
    assert "association rejected" in wrong_ae.rows[0].message and "called AE title" in wrong_ae.rows[0].message
    assert closed.count("failed") == 3 and "cannot connect" in closed.rows[0].message
    assert pacs.instances() == []


def test_unknown_calling_ae_is_refused_and_reported(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(series[:2], pacs.destination(calling_ae="STRANGER"), ledger, retries=0, progress=False)
    assert report.count("failed") == 2 and report.exit_code == 1
    assert report.rows[0].message
    assert pacs.instances() == []


def test_cli_export_echo_report_and_exit_codes(pacs: LocalOrthanc, series: list[Path], tmp_path: Path, capsys) -> None:
    folder = series[0].parent
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(pacs.dicom_port),
        "--called-ae",
        pacs.aet,
        "--calling-ae",
        pacs.allowed_ae,
    ]
    assert cli_main(["export", "--echo", *common]) == 0
    assert "status 0x0000" in capsys.readouterr().out
    report = tmp_path / "report.csv"
    ledger = tmp_path / "ledger.sqlite"
    assert cli_main(["export", str(folder), *common, "--report", str(report), "--ledger", str(ledger)]) == 0
    table = pd.read_csv(report, keep_default_na=False)
    assert list(table.columns) == ["file", "sop_instance_uid", "destination", "result", "status", "message"]
    assert (table["result"] == "sent").sum() == 10
    assert "10 sent" in capsys.readouterr().out
    # a named destination from a config file; everything is already there
    config = tmp_path / "destinations.yaml"
    config.write_text(
        f"destinations:\n  test:\n    host: 127.0.0.1\n    port: {pacs.dicom_port}\n    called_ae: {pacs.aet}\n"
        f"    calling_ae: {pacs.allowed_ae}\n"
    )
    assert (
        cli_main(
            [
                "export",
                str(folder),
                "--config",
                str(config),
                "--destination",
                "test",
                "--ledger",
                str(ledger),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert len(pacs.instances()) == 10
    # exit 1 when something failed, 2 for bad arguments
    assert (
        cli_main(
            [
                "export",
                str(folder),
                *common[:-2],
                "--calling-ae",
                "STRANGER",
                "--retries",
                "0",
                "--ledger",
                str(tmp_path / "other.sqlite"),
                "--report",
                str(report),
            ]
        )
        == 1
    )
    assert cli_main(["export", str(folder)]) == 2
    assert cli_main(["export", str(tmp_path / "missing"), *common]) == 2
    assert cli_main(["export", str(folder), "--config", str(config), "--destination", "nope"]) == 2


def test_collect_files_from_folder_and_frames_csv(series: list[Path], tmp_path: Path) -> None:
    folder = series[0].parent.parent
    (folder / "notes.csv").write_text("not dicom")
    found = collect_dicom_files([folder])
    assert set(found) == set(series)
    log = tmp_path / "frames.csv"
    pd.DataFrame({"output_file": [str(p) for p in series[:4]]}).to_csv(log, index=False)
    assert collect_dicom_files([log]) == series[:4]
    with pytest.raises(FileNotFoundError):
        collect_dicom_files([tmp_path / "missing"])


def test_inference_export_step_sends_the_written_series(
    pacs: LocalOrthanc, rg1_uncr: Path, tmp_path: Path, capsys
) -> None:
    """inference.json's optional export step (run_and_exit with a destination) ends with the series in the PACS."""
    from PIL import Image

    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.inference import ExaggerationInference, run_and_exit

    png = tmp_path / "chest.png"
    Image.fromarray((read_cxr(rg1_uncr).pixels[::12, ::12] * 255).astype(np.uint8)).save(png)
    runner = ExaggerationInference(
        None,
        load_bundle_classifier(),
        explainer_weights=REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt",
        num_frames=4,
        quicklook=False,
    )
    out = tmp_path / "out"
    summary = run_and_exit(runner, png, out, export_destination=lambda: pacs.destination())
    frames = pd.read_csv(out / "frames.csv")
    assert summary.num_files == 4 and sorted(pacs.instances()) == sorted(frames["sop_instance_uid"])
    report = pd.read_csv(out / "export_report.csv")
    assert (report["result"] == "sent").all() and (out / "export_ledger.sqlite").is_file()
    assert "4 sent" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:  # a PACS that refuses the association makes the run exit 1
        run_and_exit(runner, png, tmp_path / "out2", export_destination=pacs.destination(called_ae="NOT-ORTHANC"))
    assert stopped.value.code == 1
