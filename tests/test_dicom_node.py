"""The DICOM node (``serve-dicom``): configuration, job queue, Storage SCP, and the whole node against real services.

The Storage SCP tests run it in this process (no models) and talk to it with pynetdicom and dcmtk.
The end-to-end tests run ``python -m monai_exaggeration serve-dicom`` as a subprocess on free
loopback ports, send real chest X-rays with dcmtk's ``storescu`` (RG1_UNCR.dcm and the project's
shared CXR DICOMs when present), and check what arrives in a real Orthanc through its REST API;
one kills the node with SIGKILL in the middle of a job and restarts it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from copy import deepcopy
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml
from conftest import REPO_ROOT
from dev_data import shared_data_dir
from dicom_validation import dciodvfy_report
from orthanc_harness import LocalOrthanc, dcmtk_tool, free_port, orthanc_binary
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from monai_exaggeration.cli import main as cli_main
from monai_exaggeration.dicom.report import read_report
from monai_exaggeration.dicom.secondary_capture import SERIES_MODALITY, derived_uid
from monai_exaggeration.node.config import NodeConfigError, load_node_config
from monai_exaggeration.node.queue import JobQueue
from monai_exaggeration.node.scp import StorageSCP

GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


STORESCU, ECHOSCU = dcmtk_tool("storescu"), dcmtk_tool("echoscu")
needs_dcmtk = pytest.mark.skipif(
    STORESCU is None or ECHOSCU is None, reason="dcmtk's storescu/echoscu are not installed (apt-get install dcmtk)"
)
needs_orthanc = pytest.mark.skipif(
    orthanc_binary() is None, reason="Orthanc is not installed (apt-get install orthanc)"
)


# ----------------------------------------------------------------------------------------- helpers


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def write_config(folder: Path, pacs_port: int = 4242, **settings) -> Path:
    """A node.yaml in ``folder`` (free port, loopback, calling AE STORESCU allowed), with ``settings`` merged in."""
    base = {
        "node": {"ae_title": "EXAGNODE", "host": "127.0.0.1", "port": free_port(), "allowed_calling_aes": ["STORESCU"]},
        "work_dir": "node",
        "queue": {"poll_s": 0.1, "backoff_s": 1},
        "destinations": {
            "pacs": {"host": "127.0.0.1", "port": pacs_port, "called_ae": "ORTHANC", "calling_ae": "EXAGGERATION"}
        },
        "inference": {"device": "cpu"},
        "outputs": {"keep_results": True},
        "threads": 1,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(_merge(base, settings)))
    return path


def copy_with_uid(source: Path, path: Path, index: int) -> Path:
    """``source`` written again with a new (deterministic) SOP Instance UID: another instance of the same image."""
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = derived_uid(
        str(dataset.SOPInstanceUID), "test copy", index
    )
    dataset.save_as(path, enforce_file_format=True)
    return path


def c_store(
    port: int, datasets: list[pydicom.Dataset], calling: str = "STORESCU", called: str = "EXAGNODE", tls=None
) -> list[tuple[int, str]]:
    """(status, ErrorComment) of each C-STORE, over one association (pynetdicom)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for dataset in datasets:
        ae.add_requested_context(dataset.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)
    assert assoc.is_established, "association not established"
    answers = []
    try:
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return answers


def echo(port: int, calling: str = "STORESCU", called: str = "EXAGNODE", tls=None):
    """The association (released) of a C-ECHO attempt, and its status (None when not established)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)
    status = None
    if assoc.is_established:
        status = int(assoc.send_c_echo().Status)
        assoc.release()
    return assoc, status


def queue_rows(work_dir: Path) -> list[dict]:
    path = work_dir / "queue.sqlite"
    if not path.is_file():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM jobs ORDER BY id")]


@pytest.fixture()
def rg1_dataset(rg1_uncr: Path) -> pydicom.Dataset:
    return pydicom.dcmread(rg1_uncr)


@pytest.fixture()
def scp_factory(tmp_path: Path):
    """Start Storage SCPs in this process (model version "test model", no worker); stopped afterwards."""
    started = []

    def start(**settings) -> tuple[StorageSCP, JobQueue]:
        config = load_node_config(write_config(tmp_path / f"scp{len(started)}", **settings))
        queue = JobQueue(config.work_dir / "queue.sqlite")
        scp = StorageSCP(config, queue, "test model").start()
        started.append((scp, queue))
        return scp, queue

    yield start
    for scp, queue in started:
        scp.stop()
        queue.close()


# ----------------------------------------------------------------------------------------- Storage SCP


def test_scp_spools_durably_then_acknowledges_and_a_resend_makes_no_second_job(scp_factory, rg1_dataset, rg1_uncr):
    scp, queue = scp_factory()
    assert echo(scp.port)[1] == 0x0000
    assert c_store(scp.port, [rg1_dataset]) == [(0x0000, "")]
    jobs = queue.jobs()
    assert len(jobs) == 1 and jobs[0].state == "queued" and jobs[0].sop_instance_uid == rg1_dataset.SOPInstanceUID
    assert jobs[0].calling_ae == "STORESCU" and jobs[0].model_version == "test model"
    spooled = pydicom.dcmread(jobs[0].spool_file)
    assert spooled.SOPInstanceUID == rg1_dataset.SOPInstanceUID
    assert spooled.PixelData == rg1_dataset.PixelData and spooled.PatientID == rg1_dataset.PatientID
    assert spooled.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert jobs[0].spool_bytes == Path(jobs[0].spool_file).stat().st_size
    assert [p.name for p in Path(jobs[0].spool_file).parent.iterdir()] == [Path(jobs[0].spool_file).name]  # no temp
    assert c_store(scp.port, [rg1_dataset]) == [(0x0000, "")]  # a re-send: acknowledged ...
    counts = queue.counts()
    assert counts["queued"] == 1 and counts["duplicates"] == 1  # ... without a second job


def test_scp_refuses_ct_with_a_status_and_a_full_queue_with_a700(scp_factory, rg1_dataset):
    scp, queue = scp_factory(queue={"max_jobs": 2})
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    copies = []
    for index in range(3):
        copy = deepcopy(rg1_dataset)
        copy.SOPInstanceUID = derived_uid(str(rg1_dataset.SOPInstanceUID), "queue test", index)
        copies.append(copy)
    answers = c_store(scp.port, [ct, *copies, copies[0]])
    assert answers[0][0] == 0x0122 and "not accepted" in answers[0][1]  # CT: SOP class not supported
    assert [status for status, _ in answers[1:3]] == [0x0000, 0x0000]
    assert answers[3][0] == 0xA700 and "queue full" in answers[3][1]  # out of resources
    assert answers[4] == (0x0000, "")  # an instance already queued is acknowledged even when full
    assert [job.sop_instance_uid for job in queue.jobs()] == [str(c.SOPInstanceUID) for c in copies[:2]]
    assert len(list((scp.config.work_dir / "spool").iterdir())) == 2


def test_scp_refuses_with_a700_when_the_spool_is_full(scp_factory, rg1_dataset):
    scp, queue = scp_factory(queue={"max_spool_mb": 10})  # RG1 is 7.2 MB
    second = deepcopy(rg1_dataset)
    second.SOPInstanceUID = derived_uid(str(rg1_dataset.SOPInstanceUID), "spool test", 0)
    answers = c_store(scp.port, [rg1_dataset, second])
    assert answers[0] == (0x0000, "") and answers[1][0] == 0xA700 and "spool full" in answers[1][1]
    assert queue.counts()["queued"] == 1


def test_scp_rejects_unknown_calling_and_called_ae_titles(scp_factory):
    scp, _ = scp_factory()
    assoc, status = echo(scp.port, calling="INTRUDER")
    assert status is None and assoc.is_rejected
    answer = assoc.acceptor.primitive
    assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, 0x03)  # calling AE not recognised
    assoc, status = echo(scp.port, called="SOMEONE")
    assert status is None and assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 0x07  # called AE unknown
    if ECHOSCU is not None:
        answer = subprocess.run(
            [ECHOSCU, "-aet", "INTRUDER", "-aec", "EXAGNODE", "127.0.0.1", str(scp.port)],
            capture_output=True,
            text=True,
        )
        assert answer.returncode != 0 and "Rejected" in answer.stdout + answer.stderr
        assert (
            subprocess.run([ECHOSCU, "-aet", "STORESCU", "-aec", "EXAGNODE", "127.0.0.1", str(scp.port)]).returncode
            == 0
        )


def test_scp_over_tls(scp_factory, tmp_path: Path):
    import ssl

    from export_helpers import make_tls_files

    files = make_tls_files(tmp_path / "tls")
    scp, _ = scp_factory(
        node={"tls": {"cert": str(files["server.pem"]), "key": str(files["server.key"]), "ca": str(files["ca.pem"])}}
    )
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca.pem"]))
    client.load_cert_chain(str(files["client.pem"]), keyfile=str(files["client.key"]))
    assert echo(scp.port, tls=(client, "127.0.0.1"))[1] == 0x0000
    assert echo(scp.port)[1] is None  # plain DICOM is not spoken on a TLS port
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca.pem"]))
    assert echo(scp.port, tls=(anonymous, "127.0.0.1"))[1] is None  # no client certificate: refused


# ----------------------------------------------------------------------------------------- job queue


def test_queue_claims_each_job_once_under_concurrency(tmp_path: Path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    for index in range(40):
        assert queue.enqueue(f"1.2.{index}", "m", "1.2.840.10008.5.1.4.1.1.1", "PACS", f"/s/{index}", 10)[0] == "queued"
    assert queue.enqueue("1.2.3", "m", "x", "PACS", "/s/x", 10)[0] == "duplicate"
    assert queue.enqueue("1.2.3", "other model", "x", "PACS", "/s/y", 10)[0] == "queued"  # the key includes the model
    claimed, lock = [], threading.Lock()

    def claim() -> None:
        while (job := queue.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(1, 42))
    assert queue.counts() == {"queued": 0, "running": 41, "done": 0, "failed": 0, "parked": 0, "duplicates": 1}
    queue.close()


def test_queue_backs_off_parks_recovers_and_requeues(tmp_path: Path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    assert queue.enqueue("1.2.1", "m", "c", "PACS", "/s/1", 5, max_jobs=2)[0] == "queued"
    assert queue.enqueue("1.2.2", "m", "c", "PACS", "/s/2", 5, max_jobs=2)[0] == "queued"
    assert queue.enqueue("1.2.3", "m", "c", "PACS", "/s/3", 5, max_jobs=2) == ("full", None)
    assert queue.pending() == (2, 10)
    job = queue.claim()
    before = time.time()
    assert queue.fail(job.id, "PACS down", max_attempts=3, backoff_s=10, max_backoff_s=100) == "failed"
    first = queue.get(job.id)
    assert first.reason == "PACS down" and 9 < first.next_try - before < 11
    assert queue.claim(now=before + 5).id != job.id  # not due yet: the other job comes first
    again = queue.claim(now=before + 11)
    assert again.id == job.id and again.attempts == 2
    assert queue.fail(job.id, "PACS down", 3, 10, 100) == "failed" and 19 < queue.get(job.id).next_try - before < 21.5
    assert queue.claim(now=before + 30).attempts == 3
    assert queue.fail(job.id, "PACS down", 3, 10, 100) == "parked"  # attempts used up
    assert queue.requeue() == 1 and queue.get(job.id).state == "queued" and queue.get(job.id).attempts == 0
    # a crash leaves jobs running: recovered at the next start (parked when they used up their attempts)
    queue.claim(now=before + 100)
    recovered = queue.recover(max_attempts=3)
    assert [j.id for j in recovered] == [1, 2] and queue.counts()["queued"] == 2
    assert queue.get(2).reason == "resumed after an interrupted run"
    for _ in range(2):  # a job that kills the node every time is parked after max_attempts
        while queue.claim(now=before + 200) is not None:
            pass
        queue.recover(max_attempts=3)
    assert [queue.get(i).state for i in (1, 2)] == ["parked", "parked"] and "interrupted 3 time" in queue.get(2).reason
    queue.enqueue("1.2.4", "m", "c", "PACS", "/s/4", 5)
    assert queue.fail(queue.claim(now=before + 300).id, "not a chest X-ray", 3, 10, 100, permanent=True) == "parked"
    queue.close()


def test_queue_moves_waiting_jobs_to_a_new_model_version(tmp_path: Path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    queue.enqueue("1.2.1", "old", "c", "PACS", "/s/1", 5)
    queue.enqueue("1.2.2", "old", "c", "PACS", "/s/2", 5)
    queue.enqueue("1.2.2", "new", "c", "PACS", "/s/3", 5)
    queue.finish(queue.enqueue("1.2.9", "old", "c", "PACS", "/s/9", 5)[1].id)
    assert queue.adopt_model_version("new") == 1
    assert queue.find("1.2.1", "new") is not None and queue.get(2).state == "done"  # 1.2.2 has a job of "new"
    assert queue.find("1.2.9", "old").state == "done"  # history stays
    queue.close()


# ----------------------------------------------------------------------------------------- worker and reporter


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    """The bundle's inference (inference.json) at model resolution (fast), built as the node builds it."""
    from monai_exaggeration.node.service import build_runner

    folder = tmp_path_factory.mktemp("runner")
    return build_runner(load_node_config(write_config(folder, inference={"device": "cpu", "resolution": "model"})))


def _spooled_job(queue: JobQueue, config, source: Path):
    spool = config.work_dir / "spool" / "job.dcm"
    spool.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, spool)
    header = pydicom.dcmread(spool, stop_before_pixels=True)
    queue.enqueue(
        str(header.SOPInstanceUID), "test model", str(header.SOPClassUID), "PACS", str(spool), spool.stat().st_size
    )
    return queue.claim()


@needs_orthanc
def test_reporter_retries_while_the_pacs_is_down_parks_then_sends_after_requeue(tmp_path, rg1_uncr, runner):
    from monai_exaggeration.export import SendLedger
    from monai_exaggeration.node.reporter import Reporter
    from monai_exaggeration.node.worker import Worker

    config = load_node_config(
        write_config(tmp_path, pacs_port=free_port(), queue={"max_attempts": 2}, outputs={"export_retries": 0})
    )
    queue = JobQueue(config.work_dir / "queue.sqlite")
    job = _spooled_job(queue, config, rg1_uncr)
    worker = Worker(config, queue)
    worker.runner = runner
    seconds, ctr, rows = worker.explain(job)
    assert ctr is None and (config.work_dir / "jobs" / f"{job.id:08d}" / "frames.csv").is_file() and len(rows) == 10
    with SendLedger(config.work_dir / "export_ledger.sqlite") as ledger:
        down = Reporter(config, config.destination(), queue, ledger)  # nothing listens on that port
        assert down.run(job, "cardiomegaly", None, seconds, time.time(), rows) == "failed"
        failed = queue.get(job.id)
        assert (
            "did not reach pacs" in failed.reason
            and "cannot connect" in failed.reason
            and failed.next_try > time.time()
        )
        assert down.run(queue.claim(now=time.time() + 60), "cardiomegaly", None, seconds, time.time(), rows) == "parked"
        assert queue.get(job.id).state == "parked" and Path(job.spool_file).exists()  # kept for a requeue
        pacs = LocalOrthanc(tmp_path / "orthanc").start()  # the PACS is back
        try:
            assert queue.requeue() == 1
            up = Reporter(config, pacs.destination(calling_ae="EXAGGERATION"), queue, ledger)
            assert up.run(queue.claim(), "cardiomegaly", None, seconds, time.time(), rows) == "done"
            result = json.loads(queue.get(job.id).result)
            assert result["sent"] == 12 and len(pacs.instances()) == 12
        finally:
            pacs.stop(kill=True)
    assert not Path(job.spool_file).exists()
    queue.close()


def test_an_input_the_inference_cannot_use_is_parked_at_once(tmp_path, rg1_uncr, runner):
    from export_helpers import make_series

    from monai_exaggeration.node.worker import JobFailure, Worker

    tiny = make_series(rg1_uncr, tmp_path / "tiny", size=(40, 40))[0]  # a 40 x 40 SC: below min_size 64
    config = load_node_config(write_config(tmp_path))
    queue = JobQueue(config.work_dir / "queue.sqlite")
    job = _spooled_job(queue, config, tiny)
    worker = Worker(config, queue)
    worker.runner = runner
    with pytest.raises(JobFailure, match="40") as failure:
        worker.explain(job)
    assert failure.value.permanent
    queue.close()


# ----------------------------------------------------------------------------------------- configuration and CLI


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"node": {"port": 70000}}, "node.port: must be 1-65535"),
        ({"node": {"port": "eleven"}}, "node.port: must be a whole number"),
        ({"node": {"accept": ["CR", "CT"]}}, "node.accept: choose from CR, DX, DX_PROCESSING, SC"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title: an AE title is 1-16"),
        ({"node": {"colour": "red"}}, "node.colour: unknown setting"),
        ({"queue": {"max_jobs": 0}}, "queue.max_jobs: must be at least 1"),
        ({"outputs": {"report": "yes"}}, "outputs.report: must be true or false"),
        ({"inference": {"output_dir": "x"}}, "inference.output_dir: is set by the node itself"),
        ({"inference": {"burned_in_copy": True}}, "inference.burned_in_copy: is set by the node itself"),
        ({"destination": "elsewhere"}, "no destination 'elsewhere'"),
        ({"node": {"tls": {"cert": "missing.pem"}}}, "node.tls.cert: file not found"),
        ({"extra": 1}, "extra: unknown setting"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, capsys, caplog, settings, message):
    path = write_config(tmp_path, **settings)
    with pytest.raises(NodeConfigError, match=message.replace("(", r"\(")):
        load_node_config(path)
    assert cli_main(["serve-dicom", "status", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert message in output and "Traceback" not in output


def test_missing_or_broken_configuration_and_unknown_inference_setting(tmp_path: Path, caplog):
    assert cli_main(["serve-dicom", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "node configuration not found" in caplog.text
    (tmp_path / "bad.yaml").write_text("node: [unclosed\n")
    assert cli_main(["serve-dicom", "status", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in caplog.text
    path = write_config(tmp_path / "unknown", inference={"num_frame": 5})
    assert cli_main(["serve-dicom", "--config", str(path)]) == 2  # found while the node starts: nothing listens
    assert "inference.num_frame: not a setting of" in caplog.text and "Traceback" not in caplog.text


def test_status_prints_the_queue_and_exits_1_with_parked_jobs(tmp_path: Path, capsys):
    path = write_config(tmp_path)
    assert cli_main(["serve-dicom", "status", "--config", str(path)]) == 0
    assert "no job queue yet" in capsys.readouterr().out
    queue = JobQueue(tmp_path / "node" / "queue.sqlite")
    for index in range(4):
        queue.enqueue(f"1.2.{index}", "m", "c", "PACS", f"/s/{index}", 1_000_000)
    queue.finish(queue.claim().id)
    queue.claim()
    queue.fail(queue.claim().id, "not a chest X-ray", 5, 1, 1, permanent=True)
    queue.enqueue("1.2.0", "m", "c", "PACS", "/s/0", 1)  # a re-send
    queue.close()
    assert cli_main(["serve-dicom", "status", "--config", str(path)]) == 1
    text = capsys.readouterr().out
    assert "1 queued, 1 running, 0 waiting to retry, 1 parked, 1 done; 1 re-sent" in text
    assert "parked job 3: 1.2.2 from PACS after 1 attempt(s): not a chest X-ray" in text and "not running" in text
    assert cli_main(["serve-dicom", "status", "--json", "--config", str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["parked"] == 1
    assert cli_main(["serve-dicom", "requeue", "--config", str(path)]) == 0
    assert "1 job(s) queued again" in capsys.readouterr().out
    assert cli_main(["serve-dicom", "status", "--config", str(path)]) == 0


# ----------------------------------------------------------------------------------------- the node, end to end


class NodeProcess:
    """``python -m monai_exaggeration serve-dicom --config CONFIG`` as a subprocess, its output in a log file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.settings = load_node_config(config)
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> NodeProcess:
        log = self.config.parent / f"node{len(self.logs)}.log"
        self.logs.append(log)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monai_exaggeration", "serve-dicom", "--config", str(self.config)],
                cwd=REPO_ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while echo(self.settings.scp.port)[1] != 0:
            assert self.process.poll() is None, f"the node exited with {self.process.returncode}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"the node did not answer C-ECHO:\n{self.log()[-3000:]}"
            time.sleep(0.3)
        return self

    def log(self) -> str:
        return "\n".join(path.read_text() for path in self.logs if path.exists())

    def jobs(self) -> list[dict]:
        return queue_rows(self.settings.work_dir)

    def wait_done(self, count: int, timeout: float = 300.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if sum(job["state"] == "done" for job in jobs) >= count:
                return jobs
            stuck = [job for job in jobs if job["state"] in ("failed", "parked")]
            assert not stuck, f"jobs failed: {stuck}\n{self.log()[-3000:]}"
            assert self.process.poll() is None, f"the node exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"not done in {timeout} s: {jobs}\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture()
def node_factory():
    nodes: list[NodeProcess] = []

    def make(config: Path) -> NodeProcess:
        nodes.append(NodeProcess(config))
        return nodes[-1]

    yield make
    for node in nodes:
        node.stop(signal.SIGKILL)


@pytest.fixture()
def pacs(tmp_path: Path):
    server = LocalOrthanc(tmp_path / "orthanc").start()
    yield server
    server.stop(kill=True)


def storescu(port: int, files: list[Path], calling: str = "STORESCU") -> subprocess.CompletedProcess:
    """dcmtk's storescu: one presentation context per file's SOP class and transfer syntax (JPEG files as they are)."""
    return subprocess.run(
        [
            STORESCU,
            "-v",
            "-R",
            "-xy",
            "-nh",
            "-aet",
            calling,
            "-aec",
            "EXAGNODE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def orthanc_series(pacs: LocalOrthanc) -> dict[str, dict]:
    """SeriesInstanceUID -> {modality, study, instances: {SOP Instance UID: Orthanc id}} of everything Orthanc stores."""
    series = {item["ID"]: item for item in pacs.rest("/series?expand")}
    studies = {item["ID"]: item["MainDicomTags"]["StudyInstanceUID"] for item in pacs.rest("/studies?expand")}
    out: dict[str, dict] = {}
    for instance in pacs.rest("/instances?expand"):
        parent = series[instance["ParentSeries"]]
        entry = out.setdefault(
            parent["MainDicomTags"]["SeriesInstanceUID"],
            {
                "modality": parent["MainDicomTags"].get("Modality"),
                "study": studies[parent["ParentStudy"]],
                "instances": {},
            },
        )
        entry["instances"][instance["MainDicomTags"]["SOPInstanceUID"]] = instance["ID"]
    return out


def _download(pacs: LocalOrthanc, orthanc_id: str, path: Path) -> Path:
    path.write_bytes(pacs.rest(f"/instances/{orthanc_id}/file"))
    return path


@needs_orthanc
@needs_dcmtk
@pytest.mark.slow
def test_node_receives_explains_and_sends_sc_gsps_and_sr_to_orthanc(tmp_path, pacs, node_factory, rg1_uncr, capsys):
    shared = shared_data_dir() / "dicom"
    sources = [rg1_uncr] + (sorted(shared.glob("*.dcm")) if shared.is_dir() else [])
    expected = {
        str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID): path for path in sources
    }
    config = write_config(tmp_path, pacs.dicom_port)
    node = node_factory(config).start()
    ct = Path(get_testdata_file("CT_small.dcm"))
    sent = storescu(node.settings.scp.port, [*sources, ct])
    output = sent.stdout + sent.stderr
    assert output.count("Received Store Response (Success)") == len(sources), output
    assert "CT_small.dcm" in output and ("0x0122" in output or "SOPClassNotSupported" in output), output  # refused
    jobs = node.wait_done(len(expected))
    assert {job["sop_instance_uid"] for job in jobs} == set(expected) and len(jobs) == len(expected)
    assert sum(job["duplicates"] for job in jobs) == len(sources) - len(expected)  # SOP UID twins in the shared data

    stored = orthanc_series(pacs)
    assert sum(len(entry["instances"]) for entry in stored.values()) == 12 * len(expected)
    where = {
        uid: (series_uid, entry, orthanc_id)
        for series_uid, entry in stored.items()
        for uid, orthanc_id in entry["instances"].items()
    }
    for job in jobs:
        result = json.loads(job["result"])
        out = node.settings.work_dir / "jobs" / f"{job['id']:08d}"
        frames = pd.read_csv(out / "frames.csv", dtype={"sop_instance_uid": str, "series_instance_uid": str})
        assert result["series_instance_uid"] == frames["series_instance_uid"][0] and result["sent"] == 12
        series = stored[result["series_instance_uid"]]
        assert set(series["instances"]) == set(frames["sop_instance_uid"]) and len(series["instances"]) == 10
        source = pydicom.dcmread(expected[job["sop_instance_uid"]], stop_before_pixels=True, force=True)
        assert series["study"] == source.StudyInstanceUID  # in the source's study
        derived = {}
        for path in result["files"][10:]:  # after the 10 frames: the presentation state and the report
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            series_uid, entry, orthanc_id = where[uid]  # Orthanc stores it ...
            assert entry["study"] == source.StudyInstanceUID and len(entry["instances"]) == 1  # ... in the same study
            derived[entry["modality"]] = _download(pacs, orthanc_id, tmp_path / f"{entry['modality']}.dcm")
        assert set(derived) == {"PR", "SR"}
        gsps, report = pydicom.dcmread(derived["PR"]), pydicom.dcmread(derived["SR"])
        assert gsps.SOPClassUID == GSPS_STORAGE and report.SOPClassUID == COMPREHENSIVE_SR
        assert [
            item.ReferencedSOPInstanceUID for item in gsps.ReferencedSeriesSequence[0].ReferencedImageSequence
        ] == list(frames["sop_instance_uid"])
        groups = read_report(derived["SR"])
        assert [group["score"] for group in groups] == list(frames["score"])  # the scores of frames.csv, exactly
        assert [group["ctr"] for group in groups] == result["ctr"] and all(value is not None for value in result["ctr"])
        for group in groups:  # the node sends the two widths of every CTR as polylines on the frame
            assert group["cardiac_width"].width / group["thoracic_width"].width == pytest.approx(group["ctr"], rel=1e-5)
        assert {group["source_sop_instance_uid"] for group in groups} == {job["sop_instance_uid"]}
        assert {group["algorithm_version"] for group in groups} == set(frames["model_version"])
        for path in derived.values():
            checked = dciodvfy_report(path)
            if checked is not None:
                assert checked[0] == [], f"{path.name}: {checked[0]}"
        assert not Path(job["spool_file"]).exists()  # the spooled source is removed once done
    assert node.log().count(" done: ") == len(expected)  # one line per job

    before = sum(job["duplicates"] for job in jobs)
    again = storescu(node.settings.scp.port, [rg1_uncr])  # a duplicate send: acknowledged, no second series
    assert again.returncode == 0 and "Received Store Response (Success)" in again.stdout + again.stderr
    time.sleep(1.0)
    jobs = node.jobs()
    assert len(jobs) == len(expected) and sum(job["duplicates"] for job in jobs) == before + 1
    assert {job["state"] for job in jobs} == {"done"}
    assert sum(len(entry["instances"]) for entry in orthanc_series(pacs).values()) == 12 * len(expected)

    refused = storescu(node.settings.scp.port, [rg1_uncr], calling="WRONGAE")  # a calling AE not allowed
    assert refused.returncode != 0 and "Association Rejected" in refused.stdout + refused.stderr

    assert cli_main(["serve-dicom", "status", "--config", str(config)]) == 0
    status = capsys.readouterr().out
    assert f"{len(expected)} done" in status and "running (pid" in status
    assert node.stop(signal.SIGTERM) == 0  # graceful
    assert "SIGTERM received" in node.log() and "node stopped" in node.log()


@needs_orthanc
@needs_dcmtk
@pytest.mark.slow
def test_kill_9_mid_job_then_restart_explains_every_acknowledged_source_once(tmp_path, pacs, node_factory, rg1_uncr):
    sources = [copy_with_uid(rg1_uncr, tmp_path / f"chest_{index}.dcm", index) for index in range(3)]
    config = write_config(tmp_path, pacs.dicom_port, inference={"num_frames": 5})
    node = node_factory(config).start()
    sent = storescu(node.settings.scp.port, sources)
    assert sent.returncode == 0 and (sent.stdout + sent.stderr).count("Received Store Response (Success)") == 3
    acknowledged = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in sources}
    deadline = time.monotonic() + 120
    while not any(job["state"] == "running" for job in node.jobs()):
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.02)
    node.stop(signal.SIGKILL)  # kill -9 in the middle of a job
    jobs = node.jobs()
    assert {job["sop_instance_uid"] for job in jobs} == acknowledged  # every acknowledged instance was queued durably
    interrupted = [job["id"] for job in jobs if job["state"] == "running"]
    assert len(interrupted) >= 1

    node.start()  # the lock is free: the reporter process died with the node
    jobs = node.wait_done(3)
    assert [job["state"] for job in jobs] == ["done"] * 3
    for job in jobs:
        assert job["attempts"] == (2 if job["id"] in interrupted else 1)
    assert "was interrupted while running: queued again" in node.log()
    results = [json.loads(job["result"]) for job in jobs]
    stored = orthanc_series(pacs)
    sc_series = {uid: entry for uid, entry in stored.items() if entry["modality"] == SERIES_MODALITY}
    assert set(sc_series) == {result["series_instance_uid"] for result in results} and len(sc_series) == 3
    assert all(len(entry["instances"]) == 5 for entry in sc_series.values())
    assert sorted(entry["modality"] for entry in stored.values()) == sorted(
        [SERIES_MODALITY] * 3 + ["PR"] * 3 + ["SR"] * 3
    )
    assert node.log().count(" done: ") == 3  # each source explained to the end exactly once
    assert node.stop() == 0
