"""Helpers of the PACS export tests: small SC series, test TLS certificates, a TLS Orthanc.

The fixtures (``pacs``, ``series``) are in ``orthanc_fixture.py``; the Orthanc start/stop logic
itself is :class:`orthanc_harness.LocalOrthanc` (``tests/orthanc_harness.py``), shared with the benchmarks.
Tests that need Orthanc skip with :data:`needs_orthanc` when the ``Orthanc`` binary is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc_harness import LocalOrthanc, OrthancTls, orthanc_binary

from monai_exaggeration.dicom import SeriesInfo, write_series
from monai_exaggeration.transforms import read_cxr

__all__ = ["make_series", "make_tls_files", "needs_orthanc", "tls_orthanc", "uids_of"]

needs_orthanc = pytest.mark.skipif(
    orthanc_binary() is None, reason="Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)"
)


def make_series(
    source: Path, out: Path, models: tuple[str, ...] = ("model A",), size: tuple[int, int] = (64, 64)
) -> list[Path]:
    """One SC series of 10 small synthetic frames per model name, as the inference writes them."""
    image = read_cxr(source)
    rng = np.random.default_rng(0)
    files: list[Path] = []
    for model in models:
        frames = [np.clip(rng.random(size) * 0.2 + step / 12, 0, 1).astype(np.float32) for step in range(10)]
        info = SeriesInfo.from_scores("cardiomegaly", model, [(b + 0.5) / 10 for b in range(10)], num_bins=10)
        files += write_series(frames, source, dict(image.meta, source_shape=size), info, out)
    return files


def uids_of(files: list[Path]) -> list[str]:
    """SOP Instance UIDs of ``files``."""
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (EC keys, openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make test certificates)")
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    (folder / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\n")
    (folder / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("ca", "server", "client"):
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=test {name}",
        )
    openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem", "-days", "2", "-extfile", "ca.ext")
    for name in ("server", "client"):
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        )
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def tls_orthanc(workdir: Path, files: dict[str, Path]) -> LocalOrthanc:
    """An Orthanc whose DICOM port speaks TLS only and wants a client certificate signed by the test CA."""
    tls = OrthancTls(str(files["server.pem"]), str(files["server.key"]), str(files["ca.pem"]))
    return LocalOrthanc(workdir, tls=tls)
