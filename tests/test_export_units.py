"""PACS export without a PACS: destinations files, status codes, the ledger, and the export loop's
retry / warning / stop rules with a scripted sender."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from export_helpers import make_series

from monai_exaggeration.export import (
    DestinationError,
    PermanentSendError,
    SendLedger,
    SendResult,
    TransientSendError,
    UnreachableError,
    classify_status,
    export_files,
    export_series,
    load_destinations,
)
from monai_exaggeration.export import exporter as exporter_module


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> list[Path]:
    return make_series(rg1_uncr, tmp_path_factory.mktemp("series"))


class ScriptedSender:
    """Answers from a script: one entry per send() call (a status code, or an exception to raise)."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.calls = 0
        self.closed = False

    def echo(self) -> int:
        return 0

    def ensure_open(self) -> None:
        return None

    def send(self, dataset) -> SendResult:
        self.calls += 1
        step = self.script.pop(0) if self.script else 0x0000
        if isinstance(step, Exception):
            raise step
        return classify_status(step)

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def scripted(monkeypatch: pytest.MonkeyPatch):
    def install(script: list) -> ScriptedSender:
        sender = ScriptedSender(script)
        monkeypatch.setattr(exporter_module, "make_sender", lambda destination, contexts=(): sender)
        return sender

    return install


def destination():
    from monai_exaggeration.export import Destination

    return Destination(name="scripted", host="127.0.0.1", port=11112)


def test_destinations_file_and_status_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dest.yaml"
    config.write_text(
        "destinations:\n"
        "  pacs: {host: pacs.example.org, port: 11112, called_ae: ARCHIVE, tls: {ca: /etc/ca.pem}}\n"
        "  web: {url: 'https://pacs.example.org/dicom-web', bearer_token_env: PACS_TOKEN}\n"
    )
    monkeypatch.setenv("PACS_TOKEN", "secret")
    destinations = load_destinations(config)
    assert (
        destinations["pacs"].kind == "dimse" and destinations["pacs"].uses_tls and destinations["pacs"].label == "pacs"
    )
    assert destinations["web"].kind == "dicomweb" and destinations["web"].bearer_token == "secret"
    assert "secret" not in repr(destinations["web"])
    for bad in [
        "destinations: {x: {port: 4242}}",
        "destinations: {x: {host: h, colour: red}}",
        "destinations: {x: {host: h, called_ae: WAY-TOO-LONG-AE-TITLE}}",
        "nothing: here",
    ]:
        config.write_text(bad)
        with pytest.raises(DestinationError):
            load_destinations(config)
    assert classify_status(0x0000).result == "sent"
    assert classify_status(0xB007).result == "warning" and classify_status(0xB007).stored
    assert classify_status(0xA700).result == "failed" and "out of resources" in classify_status(0xA700).message
    assert classify_status(0x0122).message == "refused: SOP class not supported"
    assert not classify_status(0xC001).stored


def test_concurrent_ledger_writers_keep_every_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"

    problems: list[BaseException] = []

    def write(start: int) -> None:
        try:
            with SendLedger(path) as ledger:
                for index in range(start, start + 50):
                    ledger.record(f"1.2.3.{index}", "dest", 0, f"f{index}.dcm")
        except BaseException as error:  # noqa: BLE001 - reported below
            problems.append(error)

    threads = [threading.Thread(target=write, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    with SendLedger(path) as ledger:
        assert (
            ledger.count("dest") == 200 and ledger.is_sent("1.2.3.199", "dest") and not ledger.is_sent("1.2.3.199", "x")
        )


def test_warning_statuses_are_stored_and_failures_are_not(files, scripted, tmp_path: Path) -> None:
    scripted([0x0000, 0xB007, 0xA900, 0xC123, 0x0122, 0xB000])
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files[:6], destination(), ledger, progress=False)
        assert [row.result for row in report.rows] == ["sent", "warning", "failed", "failed", "failed", "warning"]
        assert [row.status for row in report.rows] == ["0x0000", "0xB007", "0xA900", "0xC123", "0x0122", "0xB000"]
        assert "stored with warning" in report.rows[1].message and "SOP class not supported" in report.rows[4].message
        assert ledger.count("scripted") == 3 and report.exit_code == 1
        assert "1 sent, 2 stored with warning, 0 already present, 3 failed" in report.describe()
    path = report.write_csv(tmp_path / "export_report.csv")
    assert path.read_text().splitlines()[0] == "file,sop_instance_uid,destination,result,status,message"


def test_transient_failures_are_retried_with_backoff(files, scripted, tmp_path: Path, monkeypatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(exporter_module.time, "sleep", delays.append)
    sender = scripted(
        [TransientSendError("connection reset"), TransientSendError("association aborted"), 0x0000, 0x0000]
    )
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files[:2], destination(), ledger, retries=3, backoff=0.5, progress=False)
    assert report.count("sent") == 2 and sender.calls == 4 and sender.closed
    assert delays == [0.5, 1.0]


def test_unreachable_peer_stops_the_export(files, scripted, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(exporter_module.time, "sleep", lambda seconds: None)
    sender = scripted([0x0000] + [UnreachableError("cannot connect to X: Connection refused")] * 10)
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files, destination(), ledger, retries=2, progress=False)
    assert sender.calls == 1 + 3  # one success, then one instance tried 3 times; the rest untried
    assert report.count("sent") == 1 and report.count("failed") == 9
    assert all(
        "Connection refused" in row.message and "run the export again later" in row.message for row in report.rows[1:]
    )


def test_no_answer_in_a_row_stops_the_export(files, scripted, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(exporter_module.time, "sleep", lambda seconds: None)
    sender = scripted([TransientSendError("no answer to C-STORE")] * 20)
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files, destination(), ledger, retries=1, give_up_after=3, progress=False)
    assert sender.calls == 3 * 2 and report.count("failed") == 10
    assert report.rows[-1].message.startswith("not tried: 3 instances in a row got no answer")


def test_rejected_association_stops_at_once(files, scripted, tmp_path: Path) -> None:
    sender = scripted([PermanentSendError("association rejected by X: check the called AE title")])
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files, destination(), ledger, progress=False)
    assert sender.calls == 1 and report.count("failed") == 10
    assert {row.message for row in report.rows} == {"association rejected by X: check the called AE title"}


def test_ledger_skips_confirmed_and_duplicate_instances(files, scripted, tmp_path: Path) -> None:
    sender = scripted([])
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        first = export_series(files[0].parent, destination(), ledger, progress=False)
        copy = tmp_path / "copy.dcm"
        copy.write_bytes(files[0].read_bytes())
        again = export_series([files[0].parent, copy], destination(), ledger, progress=False)
    assert first.count("sent") == 10 and sender.calls == 10
    assert again.count("already_sent") == 11 and sender.calls == 10 and again.exit_code == 0


def test_unreadable_dicom_is_reported(scripted, tmp_path: Path) -> None:
    scripted([])
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a dicom file")
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files([broken], destination(), ledger, progress=False)
    assert report.rows[0].result == "failed" and "not a readable DICOM file" in report.rows[0].message
