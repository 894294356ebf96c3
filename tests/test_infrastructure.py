"""The shared infrastructure helpers: file locks (filelock), SQLite files, retries, YAML models, shards."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def _holder(code: str) -> subprocess.Popen:
    """A child process that runs ``code`` (taking a lock), prints ``held`` and sleeps."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nprint('held', flush=True)\nimport time; time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_training_lock_refuses_a_live_run_and_takes_over_after_a_kill(tmp_path: Path, caplog) -> None:
    from monai_exaggeration.engines import TrainingLock, TrainingLockedError

    child = _holder(
        f"from monai_exaggeration.engines import TrainingLock\nlock = TrainingLock({str(tmp_path)!r}).acquire()"
    )
    try:
        with pytest.raises(TrainingLockedError, match=f"PID {child.pid} on host"):
            TrainingLock(tmp_path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (tmp_path / ".training.lock").exists()  # the killed run's note stays; its lock went with it
    with TrainingLock(tmp_path):
        pass
    assert "taking over a stale training lock" in caplog.text and f"PID {child.pid}" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_one_node_per_work_dir(tmp_path: Path) -> None:
    from monai_exaggeration.node.config import NodeConfigError
    from monai_exaggeration.node.service import _lock, node_running

    assert node_running(tmp_path) is None
    child = _holder(
        "from pathlib import Path\nfrom monai_exaggeration.node.service import _lock\n"
        f"lock = _lock(Path({str(tmp_path)!r}))"
    )
    try:
        assert node_running(tmp_path) == child.pid
        with pytest.raises(NodeConfigError, match=f"another node \\(pid {child.pid}\\) is running with work_dir"):
            _lock(tmp_path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert node_running(tmp_path) is None
    _lock(tmp_path).release()


def test_sqlite_helper_versions_and_checks(tmp_path: Path) -> None:
    from monai_exaggeration import storage
    from monai_exaggeration.node.queue import JobQueue
    from monai_exaggeration.reader_study.store import ResponseStore

    with JobQueue(tmp_path / "queue.sqlite"):
        pass
    store = ResponseStore(tmp_path / "responses.sqlite")
    for path in (tmp_path / "queue.sqlite", store.path):
        connection = storage.connect(path, mode="rw")
        assert storage.schema_version(connection) == 1 and storage.integrity_problems(connection) == []
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        storage.set_schema_version(connection, 7)
        connection.commit()
        connection.close()
    with pytest.raises(ValueError, match="written by a newer release"):
        JobQueue(tmp_path / "queue.sqlite")
    with pytest.raises(ValueError, match="written by a newer release"):
        ResponseStore(tmp_path / "responses.sqlite")
    with pytest.raises(sqlite3.OperationalError):
        storage.connect(tmp_path / "missing.sqlite", mode="rw")
    (tmp_path / "empty.sqlite").write_bytes(b"")
    assert storage.file_problem(tmp_path / "empty.sqlite").startswith("the file is empty (0 bytes")
    assert storage.file_problem(tmp_path / "queue.sqlite") is None


def test_retry_backs_off_and_raises_the_last_error(monkeypatch) -> None:
    from monai_exaggeration import retry

    delays: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", delays.append)
    calls = iter([OSError("down"), OSError("still down"), "ok"])

    def call():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert retry.retry(call, retries=3, backoff=0.5, transient=OSError) == "ok" and delays == [0.5, 1.0]
    with pytest.raises(OSError, match="again"):
        retry.retry(lambda: (_ for _ in ()).throw(OSError("again")), retries=2, backoff=1.0, transient=OSError)
    assert delays == [0.5, 1.0, 1.0, 2.0]
    assert retry.backoff_delay(0, 60, 3600) == 60 and retry.backoff_delay(10, 60, 3600) == 3600


def test_destinations_are_checked_by_their_model() -> None:
    from monai_exaggeration.export import Destination, DestinationError

    assert Destination(host="pacs", port="11112", called_ae=" ARCHIVE ").port == 11112
    with pytest.raises(DestinationError, match=r"^destination ANY-SCP@pacs:70000: port: must be 1-65535, got 70000$"):
        Destination(host="pacs", port=70000)
    with pytest.raises(DestinationError, match="url: must start with http:// or https://"):
        Destination(url="ftp://pacs")


@pytest.mark.parametrize("items", [0, 1, 2, 3, 7])
def test_shards_follow_monai_partition_dataset(items: int) -> None:
    from monai_exaggeration import distributed

    for world in (1, 2, 3):
        data = list(range(items))
        assert [distributed.shard(data, rank, world) for rank in range(world)] == [data[r::world] for r in range(world)]
