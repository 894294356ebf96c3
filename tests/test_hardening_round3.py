"""Hardening, round three (issue 26, "Faults"): each test guards one fault found by probing the package.

1. decompression bombs (a small .nii.gz declaring a large volume, a many-page TIFF) are refused from
   the header, in a fresh process that stays far below 0.5 GB;
2. two inference runs into one output folder keep every series in ``sources.csv``/``frames.csv``;
3. two exports on one send ledger send each instance once;
4. a CSV cell with a bare carriage return or a newline is quoted (the row is not split);
5. the reading app refuses a cross-origin or non-JSON state-changing request;
6. a percent-encoded token is redacted from the access log;
7. the DICOM node refuses with a failure status what it can refuse from the header;
8. a rejected association leaves a line in the node's log;
9. the content decides a file's format, not its name (a PNG named ``.dcm``);

plus an INFO line when a colour image is read as grey.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import REPO_ROOT
from test_dicom_node import c_store, echo, scp_factory  # noqa: F401 (scp_factory: the node's Storage SCP, no models)

from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.transforms.readers import read_cxr

# ----------------------------------------------------------------------------------- 1. decompression bombs


def nifti_bomb(path: Path, shape: tuple[int, int, int] = (2048, 2048, 600)) -> Path:
    """A .nii.gz of about 2.5 MB whose header declares ``shape`` of uint8 zeros (2.5 GB when decoded).

    A gzip file may hold several members, read as one stream: the same compressed 64 MiB of zeros
    is repeated, so writing it takes a fraction of a second.
    """
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    chunk = 64 * 1024**2
    total = int(np.prod(shape))
    zeros = gzip.compress(bytes(chunk), compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header.binaryblock + b"\x00" * 4))
        for _ in range(total // chunk):
            handle.write(zeros)
        handle.write(gzip.compress(bytes(total % chunk)))
    return path


def tiff_bomb(path: Path, pages: int = 300, size: int = 2048) -> Path:
    """A TIFF of ``pages`` deflate-compressed ``size`` x ``size`` 8-bit pages (1.2 GB decoded) in a few kB:
    every page's header points at the same compressed strip."""
    strip = zlib.compress(bytes(size * size), 9)
    entries = [  # (tag, type, value): 3 = SHORT, 4 = LONG; in ascending tag order
        (256, 4, size),
        (257, 4, size),
        (258, 3, 8),
        (259, 3, 8),
        (262, 3, 1),
        (273, 4, 8),
        (277, 3, 1),
        (278, 4, size),
        (279, 4, len(strip)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    first_ifd = 8 + len(strip) + (len(strip) % 2)
    data = bytearray(b"II*\x00" + struct.pack("<I", first_ifd) + strip + b"\x00" * (len(strip) % 2))
    for page in range(pages):
        following = first_ifd + (page + 1) * ifd_size if page + 1 < pages else 0
        data += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            data += struct.pack("<HHI", tag, kind, 1) + (
                struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            )
        data += struct.pack("<I", following)
    path.write_bytes(bytes(data))
    return path


#: Reads one file in a fresh interpreter that imports only the readers (not torch or MONAI), then prints
#: the error and its own peak resident memory. ``EXAG_READERS_DIR`` may point at another copy of the
#: transforms folder (to run this against an earlier version).
_READ_IN_CHILD = textwrap.dedent("""
    import os, sys, types
    package = types.ModuleType("monai_exaggeration.transforms")
    package.__path__ = [os.environ["EXAG_READERS_DIR"]]
    sys.modules[package.__name__] = package
    from monai_exaggeration.errors import CXRInputError
    from monai_exaggeration.transforms.readers import InputLimits, read_cxr
    try:
        read_cxr(sys.argv[1], InputLimits.for_sources())
        print("read")
    except CXRInputError as error:
        print(error)
    # peak resident memory of this address space (VmHWM, kB); getrusage's ru_maxrss would also count
    # the parent's memory copied by fork before exec
    print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
""")


def read_in_child(path: Path) -> tuple[str, float]:
    """(what reading ``path`` printed, the reading process's peak resident memory in GB)."""
    folder = os.environ.get("EXAG_READERS_DIR", str(REPO_ROOT / "monai_exaggeration" / "transforms"))
    env = dict(os.environ, EXAG_READERS_DIR=folder, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    message, peak_kb = done.stdout.strip().rsplit("\n", 1)
    return message, int(peak_kb) / 1024**2


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="measures peak memory with Linux's /proc")
@pytest.mark.parametrize("bomb", ["nifti", "tiff"])
def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path, bomb: str) -> None:
    if bomb == "nifti":
        path = nifti_bomb(tmp_path / "volume.nii.gz")
        assert path.stat().st_size < 3 * 1024**2
        expected = "is a 3-D volume (shape (2048, 2048, 600))"
    else:
        path = tiff_bomb(tmp_path / "pages.tif")
        assert path.stat().st_size < 100 * 1024
        expected = "is a multi-frame image or volume (300 frames)"
    message, peak_gb = read_in_child(path)
    assert peak_gb < 0.5, f"reading {path.name} took {peak_gb:.2f} GB before it was refused ({message})"
    assert message.startswith(f"{path}: {expected} -- ") and "\n" not in message


def test_bombs_under_other_names_and_small_volumes_are_refused_the_same_way(tmp_path: Path) -> None:
    small = nifti_bomb(tmp_path / "small.nii.gz", shape=(64, 64, 3))
    with pytest.raises(CXRInputError, match=r"3-D volume \(shape \(64, 64, 3\)\)"):
        read_cxr(small)
    renamed = tmp_path / "volume.dcm"  # the content decides: still a NIfTI volume, not "not a DICOM file"
    renamed.write_bytes(small.read_bytes())
    with pytest.raises(CXRInputError, match="3-D volume"):
        read_cxr(renamed)
    pages = tiff_bomb(tmp_path / "pages.png", pages=3, size=64)
    with pytest.raises(CXRInputError, match=r"multi-frame image or volume \(3 frames\)"):
        read_cxr(pages)


# ----------------------------------------------------------------------------------- 9. content, not name


def _chest(size: tuple[int, int] = (96, 80)) -> np.ndarray:
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    return (60 + 120 * np.exp(-((xx - size[1] / 2) ** 2 + (yy - size[0] / 2) ** 2) / 400)).astype(np.uint8)


def test_the_content_decides_the_format_not_the_name(tmp_path: Path, rg1_uncr: Path) -> None:
    from PIL import Image

    grey = _chest()
    Image.fromarray(grey).save(tmp_path / "chest.png")
    expected = read_cxr(tmp_path / "chest.png").pixels
    deep = Image.fromarray(grey.astype(np.uint16) * 200)  # 16 bits: decoded by imageio, not Pillow
    for name, image, fmt in (
        ("chest.dcm", Image.fromarray(grey), "PNG"),
        ("jpeg.dcm", Image.fromarray(grey), "JPEG"),
        ("deep.dcm", deep, "PNG"),
        ("noname", Image.fromarray(grey), "PNG"),
    ):
        image.save(tmp_path / name, format=fmt)
        image.save(tmp_path / f"{name}.{fmt.lower()}", format=fmt)
        read = read_cxr(tmp_path / name)
        assert read.meta["source_format"] == "raster", name
        np.testing.assert_array_equal(read.pixels, read_cxr(tmp_path / f"{name}.{fmt.lower()}").pixels)
    np.testing.assert_allclose(read_cxr(tmp_path / "chest.dcm").pixels, expected, atol=1e-6)
    # the other way round: a DICOM named .png, a NIfTI named .png
    as_png = tmp_path / "radiograph.png"
    as_png.write_bytes(rg1_uncr.read_bytes())
    assert read_cxr(as_png).meta["source_format"] == "dicom"
    import nibabel as nib

    nib.save(nib.Nifti1Image(grey.T.copy(), np.eye(4)), tmp_path / "chest.nii.gz")  # uint8: value / 255
    renamed = tmp_path / "nifti.png"
    renamed.write_bytes((tmp_path / "chest.nii.gz").read_bytes())
    np.testing.assert_allclose(read_cxr(renamed).pixels, expected, atol=1e-6)
    # what is none of these still gets the message of its name
    (tmp_path / "broken.dcm").write_text("not a DICOM file at all")
    with pytest.raises(CXRInputError, match="not a DICOM file"):
        read_cxr(tmp_path / "broken.dcm")
    from monai_exaggeration.transforms.readers import sniff_format

    assert sniff_format(tmp_path / "chest.dcm") == "png" and sniff_format(tmp_path / "jpeg.dcm") == "jpeg"
    assert sniff_format(as_png) == "dicom" and sniff_format(renamed) == "nifti.gz"
    assert sniff_format(tmp_path / "broken.dcm") is None


# ----------------------------------------------------------------------------------- colour read as grey


def test_a_colour_image_read_as_grey_is_said_at_info_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image
    from pydicom.data import get_testdata_file

    caplog.set_level(logging.INFO, logger="monai_exaggeration.transforms.readers")
    grey = _chest()
    colour = np.dstack([grey, grey // 2, 255 - grey])
    Image.fromarray(colour).save(tmp_path / "colour.jpg", quality=95)
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "grey_as_rgb.png")
    read_cxr(tmp_path / "colour.jpg")
    said = [r for r in caplog.records if r.levelno == logging.INFO and "converted to grey" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "colour.jpg") in said[0].getMessage() and "RGB" in said[0].getMessage()
    caplog.clear()
    read_cxr(tmp_path / "grey_as_rgb.png")  # nothing is lost: nothing to say
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    read_cxr(get_testdata_file("SC_rgb.dcm"))  # a colour DICOM secondary capture
    assert any("colour (RGB) image converted to grey" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------- 4. line breaks in CSV cells


def test_a_line_break_in_a_free_text_answer_does_not_split_its_row(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the reading app needs fastapi (pip install -e .[test])")
    from fastapi.testclient import TestClient
    from reader_app_helpers import make_study, put

    from monai_exaggeration.reader_study.analysis import analyze_study
    from monai_exaggeration.reader_study.server import create_app

    study = make_study(tmp_path / "study")
    client = TestClient(create_app(study))
    texts = {"C00001": "heart\rlarger", "C00002": "two\nlines", "C00003": 'old Mac\r"quoted"\r\nand Windows'}
    for case, text in texts.items():
        assert put(client, "R1", case, "comment", text).status_code == 200
    analyze_study(study, tmp_path / "analysis")
    path = tmp_path / "analysis" / "responses.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(table) == 3
    for parsed in (table.to_dict("records"), rows):
        assert {row["case_id"]: row["value"] for row in parsed if row["question_id"] == "comment"} == texts
        assert all(row["reader_id"] == "R1" for row in parsed)
    # the same for any table the package writes
    from monai_exaggeration.utils import write_csv_atomic

    frame = pd.DataFrame({"text": ["a\rb", "c", None], "n": [1, 2, 3]})
    write_csv_atomic(frame, tmp_path / "any.csv")
    back = pd.read_csv(tmp_path / "any.csv", keep_default_na=False)
    assert back["text"].tolist() == ["a\rb", "c", ""] and back["n"].tolist() == [1, 2, 3]
    write_csv_atomic(frame.iloc[1:], tmp_path / "plain.csv")
    assert b"\r" not in (tmp_path / "plain.csv").read_bytes()  # line ends stay \n without carriage returns


# ----------------------------------------------------------------------------------- 5. cross-site requests


def test_the_reading_app_refuses_cross_site_and_non_json_changes(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the reading app needs fastapi (pip install -e .[test])")
    from fastapi.testclient import TestClient
    from reader_app_helpers import TOKENS, make_study, put

    from monai_exaggeration.reader_study.server import create_app
    from monai_exaggeration.reader_study.store import ResponseStore

    study = make_study(tmp_path / "study")
    client = TestClient(create_app(study))
    assert client.post("/api/session", json={"token": TOKENS["R1"]}).status_code == 200  # R1's browser is signed in
    put(client, "R1", "C00001", "real_or_generated", "real")
    url = "/api/cases/C00001/explanation"
    # what a page elsewhere can make the browser send without asking: a simple POST (form or text/plain)
    for headers in (
        {"Content-Type": "text/plain", "Origin": "http://evil.example"},
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
        {"Content-Type": "text/plain", "Origin": "null"},
        {"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},
    ):
        answer = client.post(url, content="{}", headers=headers)
        assert answer.status_code == 403 and "cross-" in answer.json()["detail"], headers
    assert client.post(url, json={}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert (
        client.put(
            "/api/answers/C00001/comment", json={"value": "x"}, headers={"Origin": "https://evil.example"}
        ).status_code
        == 403
    )
    assert client.delete("/api/session", headers={"Origin": "http://evil.example"}).status_code == 403
    # not JSON from anywhere: 415
    plain = client.post(url, content="{}", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
    store = ResponseStore(study / "responses.sqlite")
    assert not store.explained("R1", "C00001")  # none of these reached the store
    # the app's own pages (Origin = the address it was asked as, or a trusted one), and API clients
    assert client.post(url, json={}, headers={"Origin": "http://testserver"}).status_code == 200
    assert client.post(url, content=b"", headers={"X-Requested-With": "script"}).status_code == 200
    assert store.explained("R1", "C00001")
    proxied = TestClient(create_app(study, trusted_origins=["https://study.example.org"]))
    reader = {"Authorization": f"Bearer {TOKENS['R1']}"}
    assert proxied.post(url, json={}, headers={**reader, "Origin": "https://study.example.org"}).status_code == 200
    assert proxied.post(url, json={}, headers={**reader, "Origin": "https://other.example.org"}).status_code == 403
    assert (
        client.get("/api/cases/C00001", headers={"Origin": "http://evil.example"}).status_code == 200
    )  # reading is not changing


# ----------------------------------------------------------------------------------- 6. encoded tokens in the log


def test_percent_encoded_tokens_are_redacted_from_the_access_log() -> None:
    pytest.importorskip("fastapi", reason="the reading app needs fastapi (pip install -e .[test])")
    from uvicorn.logging import AccessFormatter

    from monai_exaggeration.reader_study.server import TokenRedactingFilter

    token = "token-reader-two-0123456789abcdef"
    encoded = "".join(f"%{ord(char):02X}" for char in token[:5]) + token[5:]  # %74%6F%6B%65%6Ereader-two-...
    twice = encoded.replace("%", "%25")
    formatter = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    for path in (
        f"/api/readers/{encoded}/answers",
        f"/api/readers/{twice}/answers",
        f"/api/me?token={encoded}",
        f"/api/readers/{token.replace('-', '%2d')}/answers",
    ):
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5000", "GET", path, "1.1", 403),
            None,
        )
        assert TokenRedactingFilter([token]).filter(record)
        line = formatter.format(record)
        assert "[redacted]" in line and "reader-two" not in line, line
    redactor = TokenRedactingFilter([token])
    assert redactor.redact(f"GET /api/readers/{encoded}%0Afake%20line") == "GET /api/readers/[redacted]%0Afake line"
    assert redactor.redact("GET /api/cases/C%2000001") == "GET /api/cases/C%2000001"  # nothing secret: as sent


# ----------------------------------------------------------------------------------- 3. one exporter per ledger


class CountingPacs:
    """A pynetdicom Storage SCP in this process that counts every C-STORE (slowly, so that exports overlap)."""

    def __init__(self, delay: float = 0.03) -> None:
        from orthanc_harness import free_port
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.stored: list[str] = []
        self.delay = delay
        self.ae = AE(ae_title="COUNTER")
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        time.sleep(self.delay)
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


_EXPORT_IN_CHILD = textwrap.dedent("""
    import os, sys, time
    from monai_exaggeration.export import Destination, SendLedger, export_files
    port, ledger_path, go, *files = sys.argv[1:]
    destination = Destination(host="127.0.0.1", port=int(port), called_ae="COUNTER", calling_ae="EXPORTER")
    with SendLedger(ledger_path) as ledger:
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.005)
        report = export_files(files, destination, ledger, progress=False)
    print(report.count("sent"), report.count("already_sent"), report.exit_code)
""")


def test_two_exports_on_one_ledger_send_each_instance_once(tmp_path: Path, rg1_uncr: Path, caplog) -> None:
    from export_helpers import make_series, uids_of

    files = make_series(rg1_uncr, tmp_path / "series", size=(32, 32))  # 10 instances
    pacs = CountingPacs()
    go, ledger = tmp_path / "go", tmp_path / "export_ledger.sqlite"
    command = [sys.executable, "-c", _EXPORT_IN_CHILD, str(pacs.port), str(ledger), str(go), *map(str, files)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    try:
        exporters = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        for exporter in exporters:  # both have opened the ledger before either starts
            assert exporter.stdout.readline().strip() == "ready", exporter.stderr.read()
        go.touch()
        outputs = [exporter.communicate(timeout=120) for exporter in exporters]
    finally:
        pacs.stop()
    assert all(exporter.returncode == 0 for exporter in exporters), outputs
    counts = sorted(tuple(map(int, out.split())) for out, _ in outputs)
    assert sorted(pacs.stored) == sorted(uids_of(files)), f"{len(pacs.stored)} C-STOREs for {len(files)} instances"
    assert counts == [(0, 10, 0), (10, 0, 0)]  # one sent everything; the other waited, then found it all sent
    waited = next(err for (out, err) in outputs if out.startswith("0 "))
    assert "is in use by another export: waiting for it to finish" in waited


def test_an_export_that_may_not_wait_is_refused_with_one_line(tmp_path: Path, rg1_uncr: Path) -> None:
    from monai_exaggeration.export import Destination, LedgerBusyError, SendLedger, export_files

    with SendLedger(tmp_path / "ledger.sqlite") as first, SendLedger(tmp_path / "ledger.sqlite") as second:
        with first.exclusive():
            with pytest.raises(LedgerBusyError) as refused:
                export_files([rg1_uncr], Destination(host="127.0.0.1", port=1), second, progress=False, wait=0.2)
        message = str(refused.value)
        assert "\n" not in message and "in use by another export" in message and " -- " in message
        with second.exclusive(wait=0):  # released: free again
            pass


# ----------------------------------------------------------------------------------- 2. two runs, one folder


def test_two_runs_into_one_output_folder_list_every_series(tmp_path: Path) -> None:
    """Two runs write 10 series each into one folder at the same time (each with its background writer, started
    before either wrote anything): both logs end with all 20 series, each series once."""
    import threading

    from monai_exaggeration.inference.logs import RUN_LOGS, SeriesWriter, earlier_logs

    out = tmp_path / "out"
    out.mkdir()
    logs = {key: out / name for key, (name, _) in RUN_LOGS.items()}

    def writer(run: str) -> SeriesWriter:
        def write(uid: str) -> tuple[list[dict], dict]:
            folder = out / "dicom" / uid
            folder.mkdir(parents=True, exist_ok=True)
            files = []
            for step in range(2):
                files.append(folder / f"step_{step:03d}.dcm")
                files[-1].write_bytes(b"frame")
            time.sleep(0.005)
            frames = [
                {"source": f"{run}/{uid}.dcm", "series_instance_uid": uid, "step": step, "output_file": str(path)}
                for step, path in enumerate(files)
            ]
            return frames, {
                "source": f"{run}/{uid}.dcm",
                "series_instance_uid": uid,
                "num_frames": 2,
                "series_dir": str(folder),
            }

        return SeriesWriter(write=write, series_uid=lambda uid: uid, logs=logs, earlier=earlier_logs(out))

    runs = {run: writer(run) for run in ("A", "B")}
    uids = {run: [f"1.2.826.0.1.3680043.10.{ord(run)}.{index}" for index in range(10)] for run in runs}

    def feed(run: str) -> None:
        for uid in uids[run]:
            runs[run].submit(f"{run}/{uid}.dcm", uid)
        runs[run].close()

    threads = [threading.Thread(target=feed, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = sorted(uids["A"] + uids["B"])
    assert len(list((out / "dicom").iterdir())) == 20
    sources = pd.read_csv(out / "sources.csv", dtype=str, keep_default_na=False)
    frames = pd.read_csv(out / "frames.csv", dtype=str, keep_default_na=False)
    assert sorted(sources["series_instance_uid"]) == everything, f"sources.csv lists {len(sources)} of 20 series"
    assert sorted(frames["series_instance_uid"]) == sorted(everything * 2), f"frames.csv has {len(frames)} of 40 rows"
    # a later run into the same folder keeps them all, and its rows replace those of a series it writes again
    later = writer("C")
    for uid in (uids["A"][0], "1.2.826.0.1.3680043.10.67.0"):
        later.submit(f"C/{uid}.dcm", uid)
    later.close()
    sources = pd.read_csv(out / "sources.csv", dtype=str, keep_default_na=False)
    assert len(sources) == 21 and sources["series_instance_uid"].is_unique
    assert sources.set_index("series_instance_uid").loc[uids["A"][0], "source"].startswith("C/")


# ----------------------------------------------------------------------------------- 7, 8. the DICOM node


def _unusable_instances(rg1_uncr: Path) -> list[pydicom.Dataset]:
    """RG1 with a new SOP Instance UID each: fine, without pixel data, 60000 x 60000 declared, CT, two frames."""
    from monai_exaggeration.dicom.secondary_capture import derived_uid

    copies = []
    for index in range(5):
        dataset = pydicom.dcmread(rg1_uncr)
        dataset.SOPInstanceUID = derived_uid(str(dataset.SOPInstanceUID), "header refusal", index)
        copies.append(dataset)
    del copies[1].PixelData
    copies[2].Rows = copies[2].Columns = 60000
    copies[3].Modality = "CT"
    copies[4].NumberOfFrames = 2
    return copies


def test_the_node_refuses_from_the_header_with_a_failure_status(scp_factory, rg1_uncr: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="monai_exaggeration.node")
    scp, queue = scp_factory()
    instances = _unusable_instances(rg1_uncr)
    answers = c_store(scp.port, instances)
    assert answers[0] == (0x0000, "")
    assert answers[1][0] == 0xA900 and answers[1][1].startswith("has no pixel data")  # does not match its SOP class
    assert answers[2] == (0xC000, "image is 60000 x 60000 (3600.0 MP), above the limit of 50 MP")
    assert answers[3] == (0xC000, "modality CT is not a chest radiograph")
    assert answers[4] == (0xC000, "is a multi-frame image or volume (2 frames)")
    assert all(len(comment) <= 64 for _, comment in answers)  # ErrorComment is an LO
    assert [job.sop_instance_uid for job in queue.jobs()] == [str(instances[0].SOPInstanceUID)]  # nothing else parked
    assert len(list((scp.config.work_dir / "spool").iterdir())) == 1
    assert f"refused {instances[2].SOPInstanceUID} from STORESCU with 0xC000: image is 60000 x 60000" in caplog.text
    # node.refuse_unusable: false keeps the former behaviour (acknowledge, then park when explaining)
    lenient, lenient_queue = scp_factory(node={"refuse_unusable": False})
    assert [status for status, _ in c_store(lenient.port, instances)] == [0x0000] * 5
    assert len(lenient_queue.jobs()) == 5


def test_a_rejected_association_leaves_a_line_in_the_node_log(scp_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="monai_exaggeration.node")
    scp, _ = scp_factory()
    for calling, called, reason in (
        ("INTRUDER", "EXAGNODE", "calling AE title not allowed"),
        ("STORESCU", "SOMEONE", "called AE title is not ours"),
    ):
        assoc, status = echo(scp.port, calling=calling, called=called)
        assert status is None and assoc.is_rejected
        expected = f"rejected an association from {calling} at 127.0.0.1:"
        deadline = time.monotonic() + 5  # the SCP logs it in its own thread, right after sending the rejection
        while expected not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [
            record
            for record in caplog.records
            if record.getMessage().startswith(expected) and f"to {called}:" in record.getMessage()
        ]
        assert lines, f"no log line for the rejected association from {calling} to {called}:\n{caplog.text}"
        assert lines[0].levelno == logging.WARNING and reason in lines[0].getMessage()
    assert echo(scp.port)[1] == 0x0000  # an allowed caller: no such line
    assert sum("rejected an association" in record.getMessage() for record in caplog.records) == 2
