"""``python -m monai_exaggeration viewer-demo``: the explanations of one chest X-ray in OHIF, in one command.

1. Starts a private Orthanc with its DICOMweb plugin on a free local port (Debian: ``apt-get install
   orthanc orthanc-dicomweb``; its data lives in the work folder), unless ``--dicomweb URL`` names
   a running DICOMweb server.
2. Explains the source (default: RG1, the real CR chest radiograph of ``pydicom-data``) with the
   shipped bundle and writes what the DICOM node sends: the SC series, its presentation state, the
   TID 1500 report with every frame's score, target and CTR (the cardiac and thoracic widths drawn
   as polylines) and the burned-in captioned copy; stores them by STOW-RS.
3. Serves the pinned OHIF viewer (:mod:`monai_exaggeration.viewer`) on ``--port`` and prints the study's URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoStudy", "explain_and_send", "private_orthanc", "run_demo"]

logger = logging.getLogger(__name__)

_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


@dataclass
class DemoStudy:
    """What :func:`explain_and_send` stored: the study, the files sent and the report file."""

    study_instance_uid: str
    files: list[Path]
    report: Path
    rows: object  # the series' frames.csv rows (pandas DataFrame)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return int(handle.getsockname()[1])


class private_orthanc:  # noqa: N801 - used as a context manager, like open()
    """An Orthanc with DICOMweb on 127.0.0.1 (free ports, no remote access), storing under ``folder``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
        plugins = [p for d in _PLUGIN_DIRS if Path(d).is_dir() for p in sorted(Path(d).glob("libOrthancDicomWeb.so*"))]
        if binary is None or not plugins:
            raise FileNotFoundError(
                "the viewer demo needs Orthanc with its DICOMweb plugin (Debian/Ubuntu: apt-get install orthanc "
                "orthanc-dicomweb), or --dicomweb URL of a running DICOMweb server"
            )
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port = _free_port()
        config = {
            "Name": "monai_exaggeration viewer demo",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": _free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(plugins[0])],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def __enter__(self) -> private_orthanc:
        with open(self.folder / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: see {self.folder / 'orthanc.log'}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system", timeout=2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"Orthanc did not answer within 30 s: see {self.folder / 'orthanc.log'}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def explain_and_send(source: str | os.PathLike, dicomweb_url: str, work_dir: str | os.PathLike) -> DemoStudy:
    """Explain ``source`` with the shipped bundle, write the node's objects under ``work_dir`` and store them."""
    import numpy as np
    import pandas as pd

    from monai_exaggeration.bundle import default_bundle_root, load_bundle_classifier, load_bundle_segmenter
    from monai_exaggeration.dicom.presentation import (
        read_series,
        series_rows,
        write_burned_in_series,
        write_presentation_state,
    )
    from monai_exaggeration.dicom.report import write_report
    from monai_exaggeration.export import Destination, export_files
    from monai_exaggeration.export.ledger import SendLedger
    from monai_exaggeration.inference import ExaggerationInference
    from monai_exaggeration.node.reporter import frame_ctr

    out = Path(work_dir) / "explained"
    explainer = Path(default_bundle_root("cxr")) / "models" / "explainer.pt"
    runner = ExaggerationInference(None, load_bundle_classifier(), explainer_weights=explainer, quicklook=False)
    summary = runner.run(source, out)
    if summary.exit_code != 0:
        raise ValueError(f"{source} could not be explained: {summary.failures}")
    frames = pd.read_csv(out / "frames.csv", dtype={"series_instance_uid": str, "sop_instance_uid": str})
    rows = series_rows(frames)
    finding = runner.finding
    pixels = np.stack([image.pixel_array for image in read_series(rows, pixels=True)])
    measured = frame_ctr(load_bundle_segmenter(), pixels)
    report = write_report(rows, out / "dicom", finding, source, measured)
    files = [Path(path) for path in rows["output_file"]]
    files += [write_presentation_state(rows, out / "dicom", finding), report]
    files += write_burned_in_series(rows, out / "dicom", finding)
    sent = export_files(
        files, Destination(url=dicomweb_url), SendLedger(Path(work_dir) / "ledger.sqlite"), progress=False
    )
    if sent.exit_code:
        failed = [row for row in sent.rows if row.result == "failed"]
        raise RuntimeError(f"{len(failed)} of {len(files)} instances were not stored: {failed[0].message}")
    return DemoStudy(str(rows["study_instance_uid"].iloc[0]), files, report, rows)


def run_demo(
    source: str | os.PathLike | None = None,
    port: int = 3000,
    dicomweb_url: str | None = None,
    work_dir: str | os.PathLike | None = None,
    serve_seconds: float | None = None,
) -> int:
    """The demo (module docstring); serves until Ctrl-C, or for ``serve_seconds``. Returns the exit status."""
    from monai_exaggeration.viewer import ViewerServer, ohif_dist

    if source is None:
        import pydicom.data

        source = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
        if source is None:
            raise FileNotFoundError("RG1_UNCR.dcm is not installed: pip install pydicom-data, or give --input FILE")
    dist = ohif_dist()  # before the slow part: a missing viewer is said at once
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # a line per request otherwise
    with tempfile.TemporaryDirectory(prefix="exaggeration-viewer-") as scratch:
        folder = Path(work_dir) if work_dir is not None else Path(scratch)
        orthanc = private_orthanc(folder / "orthanc") if dicomweb_url is None else None
        with orthanc or contextlib.nullcontext():
            url = dicomweb_url or orthanc.dicomweb_url
            print(f"explaining {source} and storing the results in {url} ...", flush=True)
            study = explain_and_send(source, url, folder)
            with ViewerServer(dist, url, port=port) as viewer:
                print(
                    f"{len(study.files)} instances stored. Open the viewer:\n  {viewer.study_url(study.study_instance_uid)}"
                )
                print("(the study list: " + viewer.url + "/ ; Ctrl-C stops the demo)", flush=True)
                try:
                    time.sleep(serve_seconds) if serve_seconds is not None else _wait_forever()
                except KeyboardInterrupt:
                    print("stopped")
    return 0


def _wait_forever() -> None:
    while True:
        time.sleep(3600)
