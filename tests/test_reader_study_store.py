"""The reader-study response store: schema, upserts, per-reader reads, and concurrent writers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from monai_exaggeration.reader_study.store import RESPONSE_COLUMNS, ResponseStore

REPO_ROOT = Path(__file__).resolve().parents[1]
PER_WRITER = 60  # own answers per writer
SHARED = 10  # answers every writer saves (same key, same value)

_WRITER = """
import sys, time
from pathlib import Path
from monai_exaggeration.reader_study.store import ResponseStore
database, writer, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = ResponseStore(database)
(go.parent / f"ready-{{writer}}").touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)
for index in range({per_writer}):
    store.save(writer, f"C{{index:03d}}", "confidence", "series", "before", index)
for index in range({shared}):
    store.save("shared", f"C{{index:03d}}", "comment", "image", "after", f"same {{index}}")
"""


def test_save_replaces_and_reads_back(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "study" / "responses.sqlite")
    values = {
        "likert": 4,
        "yes_no": "yes",
        "choice": ["heart size", "devices"],
        "text": "größer <b>",
        "flag": True,
        "nested": {"a": [1, 2.5]},
    }
    for question, value in values.items():
        store.save("R1", "C000001", question, "series", "after", value)
    store.save("R1", "C000001", "likert", "series", "after", 2)  # the reader changes an answer
    store.save("R2", "C000001", "likert", "image", "before", 5)
    store.save("R2", "C000002", "likert", "image", "before", 1)
    mine = store.answers("R1")
    assert {row["question_id"]: row["value"] for row in mine} == {**values, "likert": 2}
    assert all(list(row) == RESPONSE_COLUMNS and row["reader_id"] == "R1" for row in mine)
    assert [row["question_id"] for row in mine][-1] == "likert"  # oldest first: the change is the newest
    assert store.progress() == {"R1": 1, "R2": 2}
    assert store.count() == 8
    frame = store.to_frame()
    assert list(frame.columns) == RESPONSE_COLUMNS and len(frame) == 8
    assert frame.loc[(frame["reader_id"] == "R2") & (frame["case_id"] == "C000002"), "value"].item() == 1
    assert store.answers("nobody") == []
    assert [(row["case_id"], row["value"]) for row in store.answers("R2", "C000002")] == [("C000002", 1)]
    assert store.answers("R1", "C000002") == []
    # what is on disk: the documented table, JSON values, WAL mode
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        schema = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'responses'").fetchone()[0]
        raw = connection.execute("SELECT value FROM responses WHERE question_id = 'choice'").fetchone()[0]
    assert "PRIMARY KEY (reader_id, case_id, question_id)" in schema
    assert json.loads(raw) == ["heart size", "devices"]
    reopened = ResponseStore(store.path)
    assert reopened.count() == 8 and [row["value"] for row in reopened.answers("R2")] == [5, 1]


@pytest.mark.parametrize(
    "args, message",
    [
        (("", "C1", "q", "arm", "after", 1), "reader_id"),
        (("R1", "C1", "q", "arm", "during", 1), "phase"),
        (("R1", "C1", "q", "arm", "after", float("nan")), "JSON"),
        (("R1", "C1", "q", "arm", "after", object()), "JSON"),
    ],
)
def test_save_refuses_bad_answers(tmp_path: Path, args: tuple, message: str) -> None:
    store = ResponseStore(tmp_path / "responses.sqlite")
    with pytest.raises(ValueError, match=message):
        store.save(*args)
    assert store.count() == 0


def test_concurrent_threads_and_processes_store_every_answer_once(tmp_path: Path) -> None:
    database = tmp_path / "responses.sqlite"
    go = tmp_path / "go"
    script = _WRITER.format(per_writer=PER_WRITER, shared=SHARED)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(database), f"P{i}", str(go)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    start = threading.Event()
    errors: list[BaseException] = []

    def write(writer: str) -> None:
        try:
            store = ResponseStore(database)
            start.wait(60)
            for index in range(PER_WRITER):
                store.save(writer, f"C{index:03d}", "confidence", "series", "before", index)
            for index in range(SHARED):
                store.save("shared", f"C{index:03d}", "comment", "image", "after", f"same {index}")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(f"T{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(processes):  # every process has opened the store
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), (
            "a writer process failed to start"
        )
        time.sleep(0.01)
    go.touch()
    start.set()
    for thread in threads:
        thread.join(120)
    outputs = [process.communicate(timeout=120) for process in processes]
    assert not errors, errors
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in outputs]

    frame = ResponseStore(database).to_frame()
    writers = [f"T{i}" for i in range(4)] + [f"P{i}" for i in range(3)]
    assert len(frame) == len(writers) * PER_WRITER + SHARED
    assert not frame.duplicated(["reader_id", "case_id", "question_id"]).any()
    for writer in writers:
        mine = frame[frame["reader_id"] == writer].sort_values("case_id")
        assert list(mine["value"]) == list(range(PER_WRITER))
    shared = frame[frame["reader_id"] == "shared"].sort_values("case_id")
    assert list(shared["value"]) == [f"same {i}" for i in range(SHARED)]
    assert ResponseStore(database).progress() == {**{w: PER_WRITER for w in writers}, "shared": SHARED}
    first, last = frame["answered_at"].min(), frame["answered_at"].max()
    process_times = frame.loc[frame["reader_id"].str.startswith("P"), "answered_at"]
    thread_times = frame.loc[frame["reader_id"].str.startswith("T"), "answered_at"]
    assert (
        first < last and process_times.min() < thread_times.max() and thread_times.min() < process_times.max()
    )  # overlapped
