"""PACS export against a real Orthanc, beyond the basics: an association re-opened when the PACS
restarts mid-export, a refused SOP class, DICOM TLS, DICOMweb with basic authentication, and the
command line (--help, STOW-RS, exit status 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from conftest import REPO_ROOT
from export_helpers import make_tls_files, needs_orthanc, tls_orthanc, uids_of
from orthanc_harness import LocalOrthanc

from monai_exaggeration.cli import main as cli_main
from monai_exaggeration.export import SendLedger, export_files, export_series, make_sender

pytest_plugins = ["orthanc_fixture"]  # the pacs and series fixtures
pytestmark = needs_orthanc


def test_association_is_reopened_when_the_pacs_restarts(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    """Orthanc is killed and restarted after 5 instances: the same run re-opens the association and completes."""
    done = []

    def restart_after_five(row) -> None:
        done.append(row)
        if len(done) == 5:
            pacs.stop(kill=True)
            pacs.start()

    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(
            series, pacs.destination(), ledger, backoff=0.05, progress=False, after_each=restart_after_five
        )
        assert report.count("sent") == 20 and report.exit_code == 0 and ledger.count() == 20
    assert sorted(pacs.instances()) == sorted(uids_of(series))


def test_refused_sop_class_is_reported_per_instance(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    odd = pydicom.dcmread(series[0])
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.1234.1"  # a private SOP class
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    odd.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files([*series[:3], tmp_path / "odd.dcm"], pacs.destination(), ledger, progress=False)
    assert [row.result for row in report.rows] == ["sent", "sent", "sent", "failed"]
    assert report.rows[3].status == "0x0122" and "no presentation context" in report.rows[3].message
    assert report.exit_code == 1 and len(pacs.instances()) == 3


def test_dicom_tls_with_client_certificate(series: list[Path], tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with tls_orthanc(tmp_path / "orthanc", tls) as server:
        try:
            secure = server.destination(
                tls_ca=str(tls["ca.pem"]), tls_cert=str(tls["client.pem"]), tls_key=str(tls["client.key"])
            )
            sender = make_sender(secure)
            try:
                assert sender.echo() == 0x0000
            finally:
                sender.close()
            with SendLedger(tmp_path / "ledger.sqlite") as ledger:
                report = export_files(series[:3], secure, ledger, progress=False)
                assert report.count("sent") == 3
                start = time.monotonic()
                plain = export_files(
                    series[3:5],
                    server.destination(name="plain", connect_timeout=2.0),
                    ledger,
                    retries=0,
                    progress=False,
                )
                no_cert = export_files(
                    series[3:5],
                    server.destination(name="nocert", tls_ca=str(tls["ca.pem"])),
                    ledger,
                    retries=0,
                    progress=False,
                )
                assert time.monotonic() - start < 10
            assert plain.count("failed") == 2 and "does the port need TLS" in plain.rows[0].message
            assert no_cert.count("failed") == 2 and "--tls-cert" in no_cert.rows[0].message
            assert len(server.instances()) == 3
        finally:
            server.stop(kill=True)


def test_stow_rs_with_basic_authentication(series: list[Path], tmp_path: Path) -> None:
    server = LocalOrthanc(tmp_path / "orthanc", users={"research": "s3cret"}).start()
    try:
        if not server.has_dicomweb:
            pytest.skip("orthanc-dicomweb plugin not installed")
        with SendLedger(tmp_path / "ledger.sqlite") as ledger:
            wrong = export_files(
                series[:2], server.dicomweb_destination(username="research", password="nope"), ledger, progress=False
            )
            right = export_files(
                series[:2], server.dicomweb_destination(username="research", password="s3cret"), ledger, progress=False
            )
        assert (
            wrong.count("failed") == 2
            and "HTTP 401" in wrong.rows[0].message
            and "credentials" in wrong.rows[0].message
        )
        assert right.count("sent") == 2 and sorted(server.instances()) == sorted(uids_of(series[:2]))
    finally:
        server.stop(kill=True)


def test_cli_help_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monai_exaggeration", "export", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for words in ("--called-ae", "--url", "--config", "--ledger", "--verify", "C-FIND", "STOW-RS", "Exit status"):
        assert words in result.stdout


def test_cli_stow_rs_frames_csv_and_bad_arguments(
    pacs: LocalOrthanc, series: list[Path], tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    if not pacs.has_dicomweb:
        pytest.skip("orthanc-dicomweb plugin not installed")
    log = tmp_path / "frames.csv"
    pd.DataFrame({"output_file": [str(p) for p in series[:4]]}).to_csv(log, index=False)
    url = f"{pacs.url}/dicom-web"
    assert cli_main(["export", "--echo", "--url", url]) == 0
    assert cli_main(["export", str(log), "--url", url]) == 0
    report = pd.read_csv(tmp_path / "export_report.csv", keep_default_na=False)
    assert list(report["result"]) == ["sent"] * 4 and (tmp_path / "export_ledger.sqlite").is_file()
    out = capsys.readouterr().out
    assert "4 sent, 0 stored with warning, 0 already present, 0 failed" in out and "instances/s" in out
    assert cli_main(["export", str(log), "--url", url]) == 0  # everything already there
    assert "0 sent, 0 stored with warning, 4 already present" in capsys.readouterr().out
    assert sorted(pacs.instances()) == sorted(uids_of(series[:4]))
    # exit 2: nothing to send, conflicting destinations, unknown destination without a file, bad config
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    (empty / "README").write_text("no DICOM here either")  # read, found not DICOM, skipped
    assert cli_main(["export", str(empty), "--url", url]) == 2
    config = tmp_path / "destinations.json"
    config.write_text(f'{{"destinations": {{"web": {{"url": "{url}"}}}}}}')
    assert cli_main(["export", str(log), "--config", str(config), "--url", url]) == 2
    assert cli_main(["export", str(log), "--destination", "web"]) == 2
    config.write_text("{not json")
    assert cli_main(["export", str(log), "--config", str(config)]) == 2
    errors = caplog.text
    assert (
        "nothing to send" in errors and "not both" in errors and "needs --config" in errors and "cannot parse" in errors
    )
    assert "Traceback" not in errors + capsys.readouterr().err


def test_export_series_from_a_folder(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_series(series[0].parent.parent, pacs.destination(), ledger, progress=False)
    assert report.count("sent") == 20 and len(pacs.instances()) == 20
