"""``export --verify`` and the send ledger's integrity.

* the ledger is not trusted alone: a PACS that lost a series gets it back (real Orthanc: C-FIND and
  QIDO-RS), the summary says how many instances the PACS confirmed, a PACS that refuses queries
  fails the export clearly; the verify logic itself with a fake PACS; the C-FIND client against a
  small pynetdicom SCP; QIDO-RS paging;
* a damaged or empty ledger (0 bytes, not SQLite, failing ``PRAGMA integrity_check``, unknown
  schema version) is reported with one message and exit status 2, never treated as new; a
  ledger written before schema versions existed is migrated.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from export_helpers import make_series, needs_orthanc, uids_of
from orthanc_harness import LocalOrthanc, free_port

from monai_exaggeration.cli import main as cli_main
from monai_exaggeration.export import (
    Destination,
    LedgerError,
    QueryError,
    SendLedger,
    TransientSendError,
    classify_status,
    export_files,
    make_querier,
)
from monai_exaggeration.export import exporter as exporter_module
from monai_exaggeration.export.dicomweb import DicomwebSender
from monai_exaggeration.export.dimse import STUDY_ROOT_FIND, dimse_querier
from monai_exaggeration.export.ledger import SCHEMA_VERSION

pytest_plugins = ["orthanc_fixture"]  # the pacs and series fixtures


def series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def cli_destination(pacs: LocalOrthanc, ledger: Path, report: Path) -> list[str]:
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(pacs.dicom_port),
        "--called-ae",
        pacs.aet,
        "--calling-ae",
        pacs.allowed_ae,
        "--ledger",
        str(ledger),
        "--report",
        str(report),
        "--backoff",
        "0.05",
    ]


# --------------------------------------------------------------------------------------- against Orthanc


@needs_orthanc
def test_verify_restores_a_series_the_pacs_lost(pacs: LocalOrthanc, series: list[Path], tmp_path: Path, capsys) -> None:
    """Orthanc loses one series (DELETE /series/{id}): a plain re-run trusts the ledger, --verify resends it."""
    folder = series[0].parent.parent  # both series, 20 instances
    ledger, report = tmp_path / "ledger.sqlite", tmp_path / "report.csv"
    options = cli_destination(pacs, ledger, report)
    assert cli_main(["export", str(folder), *options]) == 0
    assert "20 sent" in capsys.readouterr().out and len(pacs.instances()) == 20

    lost_series = series_uid(series[0])
    pacs.delete_series(lost_series)
    assert len(pacs.instances()) == 10
    # without --verify the ledger is trusted: "already present", and the output says it was not checked
    assert cli_main(["export", str(folder), *options]) == 0
    out = capsys.readouterr().out
    assert "0 sent, 0 stored with warning, 20 already present" in out and "not checked with the PACS" in out
    assert "confirmed in PACS" not in out and len(pacs.instances()) == 10

    assert cli_main(["export", str(folder), *options, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "10 sent, 0 stored with warning, 10 already present, 0 failed" in out
    assert "confirmed in PACS: 20 of 20 (10 in the send ledger but missing from the PACS were resent)" in out
    assert sorted(pacs.instances()) == sorted(uids_of(series))  # every instance, no duplicates
    table = pd.read_csv(report, keep_default_na=False)
    resent = table[table["result"] == "sent"]
    assert len(resent) == 10 and resent["message"].str.contains("missing from the PACS").all()
    assert {series_uid(Path(f)) for f in resent["file"]} == {lost_series}
    with SendLedger(ledger) as book:
        assert book.count(pacs.destination().label) == 20 and book.count_lost() == 0

    assert cli_main(["export", str(folder), *options, "--verify"]) == 0  # now nothing is missing
    assert "0 sent, 0 stored with warning, 20 already present, 0 failed" in (out := capsys.readouterr().out)
    assert "confirmed in PACS: 20 of 20" in out and "were resent" not in out


@needs_orthanc
def test_verify_over_dicomweb_asks_qido_rs(pacs: LocalOrthanc, series: list[Path], tmp_path: Path) -> None:
    if not pacs.has_dicomweb:
        pytest.skip("orthanc-dicomweb plugin not installed")
    web = pacs.dicomweb_destination()
    querier = make_querier(web)
    assert isinstance(querier, DicomwebSender)
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        assert export_files(series[:10], web, ledger, progress=False).count("sent") == 10
        study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
        assert querier.find_instances(study, series_uid(series[0])) == set(uids_of(series[:10]))
        assert querier.find_instances(study, "1.2.3.4.5") == set()
        pacs.delete_series(series_uid(series[0]))
        report = export_files(series[:10], web, ledger, progress=False, verify=True)
    querier.close()
    assert report.count("sent") == 10 and report.lost == 10 and report.exit_code == 0
    assert "confirmed in PACS: 10 of 10" in report.describe()
    assert sorted(pacs.instances()) == sorted(uids_of(series[:10]))


@needs_orthanc
def test_verify_against_a_pacs_that_refuses_c_find_fails_clearly(
    series: list[Path], tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    """Orthanc lets us store but not query (AllowFind false): --verify says so, sends nothing, exits 1."""
    server = LocalOrthanc(tmp_path / "orthanc", allow_find=False).start()
    try:
        ledger, report = tmp_path / "ledger.sqlite", tmp_path / "report.csv"
        options = cli_destination(server, ledger, report)
        assert cli_main(["export", str(series[0].parent), *options, "--verify"]) == 1
        out = capsys.readouterr().out
        assert "0 sent" in out and "10 failed" in out and "confirmed in PACS: unknown" in out
        assert "closed the association instead of answering our C-FIND" in caplog.text
        assert "nothing was sent" in caplog.text and "Traceback" not in caplog.text
        assert server.instances() == []
        assert (pd.read_csv(report, keep_default_na=False)["message"].str.startswith("not verified:")).all()
        assert cli_main(["export", str(series[0].parent), *options]) == 0  # storing is still allowed
        assert len(server.instances()) == 10
    finally:
        server.stop(kill=True)


@needs_orthanc
def test_verify_rebuilds_a_damaged_ledger_from_the_pacs(
    pacs: LocalOrthanc, series: list[Path], tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    folder = series[0].parent
    ledger, report = tmp_path / "ledger.sqlite", tmp_path / "report.csv"
    options = cli_destination(pacs, ledger, report)
    assert cli_main(["export", str(folder), *options]) == 0
    ledger.write_bytes(b"\x00garbage, not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    capsys.readouterr()
    assert cli_main(["export", str(folder), *options]) == 2  # reported, not treated as new
    assert "not an SQLite database" in caplog.text and "--verify" in caplog.text
    assert "export to" not in capsys.readouterr().out and len(pacs.instances()) == 10

    assert cli_main(["export", str(folder), *options, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "0 sent, 0 stored with warning, 10 already present" in out and "confirmed in PACS: 10 of 10" in out
    aside = list(tmp_path.glob("ledger.damaged-*.sqlite"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\x00garbage")
    with SendLedger(ledger) as book:
        assert book.count(pacs.destination().label) == 10


# --------------------------------------------------------------------------------------- damaged ledgers


def broken_ledger(path: Path, kind: str) -> Path:
    """A ledger file damaged in one of several ways."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 40)
    elif kind in ("integrity", "truncated", "version"):
        with SendLedger(path) as ledger:
            for index in range(300):
                ledger.record(f"1.2.3.{index}", "pacs", 0, f"/data/run/series/step_{index:05d}.dcm")
        db = sqlite3.connect(path)
        if kind == "integrity":  # an index that no longer matches the table
            db.execute("CREATE INDEX by_file ON sent(file)")
            db.commit()
            db.execute("PRAGMA writable_schema=ON")
            db.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX by_file ON sent(sent_at)' WHERE name = 'by_file'")
        elif kind == "version":
            db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("empty", "the file is empty (0 bytes"),
        ("garbage", "not an SQLite database"),
        ("integrity", "PRAGMA integrity_check failed: row 1 missing from index by_file"),
        ("truncated", "SQLite cannot read it"),
        ("version", "unknown schema version 99"),
    ],
)
def test_damaged_ledger_is_reported_never_treated_as_new(kind: str, problem: str, tmp_path: Path) -> None:
    path = broken_ledger(tmp_path / "ledger.sqlite", kind)
    before = path.read_bytes()
    with pytest.raises(LedgerError) as raised:
        SendLedger(path)
    message = str(raised.value)
    assert problem in message and str(path) in message and "--verify" in message and "move" in message
    assert isinstance(raised.value, ValueError)  # callers that catch ValueError (exit status 2) keep working
    assert path.read_bytes() == before  # left as it was, for inspection


@pytest.mark.parametrize("kind", ["empty", "garbage"])
def test_cli_reports_a_damaged_ledger_with_exit_status_2(
    kind: str, series: list[Path], tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = broken_ledger(tmp_path / "ledger.sqlite", kind)
    code = cli_main(
        [
            "export",
            str(series[0].parent),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--ledger",
            str(ledger),
            "--report",
            str(tmp_path / "report.csv"),
        ]
    )
    assert code == 2
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and f"send ledger {ledger} is unusable" in errors[0].getMessage()
    assert "re-run with --verify" in errors[0].getMessage() or "again with --verify" in errors[0].getMessage()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err + caplog.text
    assert not (tmp_path / "report.csv").exists() and ledger.exists()


def test_unversioned_ledger_of_the_previous_release_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)  # exactly what the code before schema versions wrote
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS sent (sop_instance_uid TEXT NOT NULL, destination TEXT NOT NULL, "
        "status INTEGER NOT NULL, file TEXT NOT NULL, sent_at TEXT NOT NULL, "
        "PRIMARY KEY (sop_instance_uid, destination))"
    )
    db.executemany(
        "INSERT INTO sent VALUES (?, ?, 0, ?, '2024-01-01T00:00:00+00:00')",
        [(f"1.2.3.{i}", "pacs", f"f{i}.dcm") for i in range(5)],
    )
    db.commit()
    db.close()
    with SendLedger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION == 2
        assert ledger.count("pacs") == 5 and ledger.is_sent("1.2.3.4", "pacs") and not ledger.is_sent("1.2.3.4", "x")
        ledger.mark_lost(["1.2.3.4"], "pacs")
        assert not ledger.is_sent("1.2.3.4", "pacs") and ledger.count_lost("pacs") == 1
    with SendLedger(path) as ledger:  # opening again: no second migration
        assert ledger.count("pacs") == 4
    other = tmp_path / "other.sqlite"  # an SQLite file that is not a ledger
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE patients (id TEXT)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match=r"unknown schema without a version number \(tables \['patients'\]"):
        SendLedger(other)


def test_new_ledgers_appear_complete_to_concurrent_openers(tmp_path: Path) -> None:
    """A new ledger is linked into place only when complete: openers racing its creation never see it empty."""
    problems: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_it(index: int) -> None:
        try:
            barrier.wait()
            with SendLedger(tmp_path / "ledger.sqlite") as ledger:
                ledger.record(f"1.2.{index}", "pacs", 0, "f.dcm")
        except BaseException as error:  # noqa: BLE001 - reported below
            problems.append(error)

    for _round in range(5):
        for leftover in tmp_path.iterdir():
            leftover.unlink()
        threads = [threading.Thread(target=open_it, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert problems == []
        with SendLedger(tmp_path / "ledger.sqlite") as ledger:
            assert ledger.count("pacs") == 6
        assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


# --------------------------------------------------------------------------------------- verify logic, fake PACS


class FakePacs:
    """A destination's storage: ``send`` stores (unless told to fail), ``find_instances`` lists, by series."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], set[str]] = {}
        self.fail: set[str] = set()  # SOP Instance UIDs whose C-STORE fails
        self.unlisted: set[str] = set()  # stored but never listed by queries
        self.refuse_queries = False
        self.sent: list[str] = []
        self.queries = 0

    # sender
    def echo(self) -> int:
        return 0

    def ensure_open(self) -> None:
        return None

    def send(self, dataset):
        uid = str(dataset.SOPInstanceUID)
        self.sent.append(uid)
        if uid in self.fail:
            return classify_status(0xC000)
        self.held.setdefault((str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)), set()).add(uid)
        return classify_status(0x0000)

    # querier
    def find_instances(self, study: str, series: str) -> set[str]:
        self.queries += 1
        if self.refuse_queries:
            raise QueryError("PACS closed the association instead of answering our C-FIND")
        return set(self.held.get((study, series), set())) - self.unlisted

    def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> list[Path]:
    return make_series(rg1_uncr, tmp_path_factory.mktemp("series"))


@pytest.fixture()
def fake_pacs(monkeypatch: pytest.MonkeyPatch) -> FakePacs:
    pacs = FakePacs()
    monkeypatch.setattr(exporter_module, "make_sender", lambda destination, contexts=(): pacs)
    monkeypatch.setattr(exporter_module, "make_querier", lambda destination: pacs)
    return pacs


def fake_destination() -> Destination:
    return Destination(name="fake", host="127.0.0.1", port=11112)


def test_verify_resends_what_the_pacs_lost_and_marks_the_ledger(files, fake_pacs: FakePacs, tmp_path: Path) -> None:
    uids = uids_of(files)
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        first = export_files(files, fake_destination(), ledger, progress=False)
        assert first.count("sent") == 10 and fake_pacs.queries == 0  # no --verify: no queries
        for held in fake_pacs.held.values():
            held.difference_update(uids[:3])  # the PACS loses 3 instances
        fake_pacs.fail = {uids[0]}  # and one of them cannot be stored again
        fake_pacs.sent.clear()

        trusted = export_files(files, fake_destination(), ledger, progress=False)
        assert trusted.count("already_sent") == 10 and fake_pacs.sent == []  # the ledger alone cannot tell

        checked = export_files(files, fake_destination(), ledger, progress=False, verify=True)
        assert sorted(fake_pacs.sent) == sorted(uids[:3]) and checked.lost == 3
        assert checked.count("sent") == 2 and checked.count("failed") == 1 and checked.count("already_sent") == 7
        assert checked.confirmed == 9 and checked.expected == 10 and checked.exit_code == 1
        assert (
            "confirmed in PACS: 9 of 10 (3 in the send ledger but missing from the PACS were resent)"
            in checked.describe()
        )
        assert all(
            row.message.startswith("resent: in the send ledger but missing")
            for row in checked.rows
            if row.result == "sent"
        )
        # the ledger no longer claims the instance that is still missing: a plain run sends it
        assert (
            not ledger.is_sent(uids[0], "fake") and ledger.is_sent(uids[1], "fake") and ledger.count_lost("fake") == 1
        )
        fake_pacs.fail.clear()
        fake_pacs.sent.clear()
        plain = export_files(files, fake_destination(), ledger, progress=False)
        assert fake_pacs.sent == [uids[0]] and plain.count("sent") == 1 and ledger.count("fake") == 10


def test_verify_rebuilds_rows_and_counts_only_what_the_pacs_lists(files, fake_pacs: FakePacs, tmp_path: Path) -> None:
    uids = uids_of(files)
    with SendLedger(tmp_path / "other.sqlite") as ledger:  # sent by someone else: in the PACS, not in this ledger
        export_files(files[:4], fake_destination(), ledger, progress=False)
    fake_pacs.sent.clear()
    fake_pacs.unlisted = {uids[9]}  # the PACS accepts it but never lists it
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files, fake_destination(), ledger, progress=False, verify=True)
        assert sorted(fake_pacs.sent) == sorted(uids[4:])  # only what the PACS lacks
        assert [row.message for row in report.rows[:4]] == ["found in the PACS by query (added to the send ledger)"] * 4
        assert ledger.count("fake") == 10 and report.lost == 0
    assert report.confirmed == 9 and report.expected == 10 and report.exit_code == 1
    unlisted = next(row for row in report.rows if row.sop_instance_uid == uids[9])
    assert unlisted.result == "sent" and "does not list it" in unlisted.message
    assert fake_pacs.queries == 2  # one series: asked before and after sending


def test_verify_stops_before_sending_when_the_pacs_cannot_be_asked(
    files, fake_pacs: FakePacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pacs.refuse_queries = True
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files, fake_destination(), ledger, progress=False, verify=True)
        assert fake_pacs.sent == [] and ledger.count() == 0
    assert report.count("failed") == 10 and report.exit_code == 1
    assert report.rows[0].message.startswith("not verified: cannot ask which instances it holds: PACS closed")
    assert "confirmed in PACS: unknown" in report.describe()
    # a query that never gets an answer is retried, then fails the same way
    delays: list[float] = []
    monkeypatch.setattr(exporter_module.time, "sleep", delays.append)
    fake_pacs.refuse_queries = False

    def silent(study: str, series: str) -> set[str]:
        raise TransientSendError("no answer to C-FIND")

    monkeypatch.setattr(fake_pacs, "find_instances", silent)
    with SendLedger(tmp_path / "ledger.sqlite") as ledger:
        report = export_files(files, fake_destination(), ledger, progress=False, verify=True, retries=2, backoff=0.5)
    assert delays == [0.5, 1.0] and report.count("failed") == 10 and fake_pacs.sent == []


# --------------------------------------------------------------------------------------- C-FIND client, QIDO-RS paging


@pytest.fixture()
def find_scp():
    """A pynetdicom Study Root C-FIND SCP on a free port; ``answer(identifier)`` yields its (status, identifier) pairs."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    servers = []

    def start(answer, support_find: bool = True):
        ae = AE(ae_title="FINDSCP")
        ae.add_supported_context(Verification)
        if support_find:
            ae.add_supported_context(STUDY_ROOT_FIND)
        port = free_port()
        handlers = [(evt.EVT_C_FIND, lambda event: answer(event.identifier))]
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers))
        return Destination(host="127.0.0.1", port=port, called_ae="FINDSCP", dimse_timeout=5.0)

    yield start
    for server in servers:
        server.shutdown()


def test_c_find_client_reads_pending_answers_and_reports_refusals(find_scp) -> None:
    def listing(identifier):
        assert identifier.QueryRetrieveLevel == "IMAGE" and identifier.SeriesInstanceUID == "1.2.3.2"
        assert "SOPInstanceUID" in identifier and identifier.StudyInstanceUID == "1.2.3.1"
        for uid in ("1.2.3.2.1", "1.2.3.2.2", "1.2.3.2.3"):
            match = pydicom.Dataset()
            match.QueryRetrieveLevel = "IMAGE"
            match.SOPInstanceUID = uid
            yield 0xFF00, match

    querier = dimse_querier(find_scp(listing))
    try:
        assert querier.find_instances("1.2.3.1", "1.2.3.2") == {"1.2.3.2.1", "1.2.3.2.2", "1.2.3.2.3"}
        assert querier.find_instances("1.2.3.1", "1.2.3.2") == {"1.2.3.2.1", "1.2.3.2.2", "1.2.3.2.3"}  # reused
    finally:
        querier.close()

    def refusing(identifier):
        yield 0xC311, None

    querier = dimse_querier(find_scp(refusing))
    with pytest.raises(QueryError, match="refused the C-FIND for series 1.2.3.2: status 0xC311"):
        querier.find_instances("1.2.3.1", "1.2.3.2")
    querier.close()
    querier = dimse_querier(find_scp(refusing, support_find=False))
    with pytest.raises(QueryError, match="cannot query .*accepts none of the SOP classes"):
        querier.find_instances("1.2.3.1", "1.2.3.2")
    querier.close()


def test_qido_rs_reads_every_page_and_stops_when_offset_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = DicomwebSender(Destination(url="http://127.0.0.1:9/dicom-web"))
    answers = {None: [f"1.9.{i}" for i in range(3)], 3: ["1.9.3", "1.9.4"], 5: []}
    calls: list = []

    def paged(study_instance_uid, series_instance_uid, fields, offset=None):
        calls.append(offset)
        return [{"00080018": {"vr": "UI", "Value": [uid]}} for uid in answers[offset]]

    monkeypatch.setattr(sender.client, "search_for_instances", paged)
    assert sender.find_instances("1.9", "1.9.9") == {f"1.9.{i}" for i in range(5)} and calls == [None, 3, 5]
    calls.clear()
    monkeypatch.setattr(
        sender.client,
        "search_for_instances",
        lambda study_instance_uid, series_instance_uid, fields, offset=None: (
            calls.append(offset) or [{"00080018": {"vr": "UI", "Value": ["1.9.0"]}}]
        ),
    )
    assert sender.find_instances("1.9", "1.9.9") == {"1.9.0"} and calls == [None, 1]  # a server ignoring offset
    sender.close()
