"""A throw-away local Orthanc PACS (Debian packages ``orthanc`` + ``orthanc-dicomweb``) for the tests and benchmarks.

Test and benchmark code only, not part of the package: the tests import it from ``tests/`` (pytest puts
that folder on ``sys.path``), the benchmarks through ``benchmarks/repo_helpers.py``.

    with LocalOrthanc(workdir) as pacs:          # free ports on 127.0.0.1, remote access off
        destination = pacs.destination()          # DIMSE; pacs.dicomweb_destination() for STOW-RS
        ...
        pacs.instances()                          # SOP Instance UIDs stored, via the REST API

The configuration allows C-ECHO from anyone, C-STORE and C-FIND only from the known AE title
``allowed_ae`` (``DicomModalities``; ``allow_find=False`` refuses its C-FIND, as a PACS that only
accepts storage from us would), checks the called AE title, and loads the DICOMweb plugin.
Storage lives in ``workdir`` and survives :meth:`stop` / :meth:`start` (for restart tests).
``tls=OrthancTls(certificate, private_key, trusted)`` makes the DICOM port speak TLS only (Orthanc
>= 1.9), requiring a client certificate signed by one of ``trusted``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from monai_exaggeration.export.destinations import Destination

__all__ = ["LocalOrthanc", "OrthancTls", "dcmtk_tool", "orthanc_binary", "free_port"]

_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None."""
    return shutil.which("Orthanc") or (("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return int(handle.getsockname()[1])


@dataclass(frozen=True)
class OrthancTls:
    """PEM files of Orthanc's DICOM TLS: its certificate and key, and the certificates it trusts (clients)."""

    certificate: str
    private_key: str
    trusted: str
    client_certificate_required: bool = True


def _dicomweb_plugin() -> str | None:
    for folder in _PLUGIN_DIRS:
        candidates = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if candidates:
            return str(candidates[0])
    return None


class LocalOrthanc:
    """Start/stop an unprivileged Orthanc on loopback with its configuration in ``workdir``."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        aet: str = "ORTHANC",
        allowed_ae: str = "EXAGGERATION",
        tls: OrthancTls | None = None,
        users: dict[str, str] | None = None,
        allow_find: bool = True,
    ) -> None:
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError(
                "Orthanc is not installed (Debian/Ubuntu: apt-get install orthanc orthanc-dicomweb)"
            )
        self.binary = binary
        self.workdir = Path(workdir)
        self.aet = aet
        self.allowed_ae = allowed_ae
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        plugin = _dicomweb_plugin()
        config = {
            "Name": "monai_exaggeration test PACS",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowFind": False,
            "DicomModalities": {  # port unused: Orthanc never calls back
                "exaggeration": {
                    "AET": allowed_ae,
                    "Host": "127.0.0.1",
                    "Port": 104,
                    "AllowEcho": True,
                    "AllowStore": True,
                    "AllowFind": allow_find,
                    "AllowMove": False,
                    "AllowGet": False,
                },
            },
            "Plugins": [plugin] if plugin else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "HttpsVerifyPeers": False,
        }
        if tls is not None:
            config.update(
                DicomTlsEnabled=True,
                DicomTlsCertificate=str(tls.certificate),
                DicomTlsPrivateKey=str(tls.private_key),
                DicomTlsTrustedCertificates=str(tls.trusted),
                DicomTlsRemoteCertificateRequired=tls.client_certificate_required,
            )
        if users:  # HTTP basic authentication for the REST API and DICOMweb
            config.update(AuthenticationEnabled=True, RegisteredUsers=dict(users))
        self.tls = tls
        self.users = dict(users or {})
        self.has_dicomweb = plugin is not None
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))

    # -------------------------------------------------------------------------------- life cycle

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        """Start Orthanc and wait until its REST API answers (``/system``)."""
        with open(self.workdir / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(self.workdir / "orthanc.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.workdir / 'orthanc.log'}")
            try:
                self.rest("/system")
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s; see {self.workdir / 'orthanc.log'}")

    def stop(self, kill: bool = False) -> None:
        """Stop Orthanc (SIGKILL with ``kill=True``, as a crash would)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------------- access

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def version(self) -> str:
        """Orthanc's version, from ``/system``."""
        return str(self.rest("/system")["Version"])

    def rest(self, route: str, method: str = "GET", data: bytes | None = None) -> object:
        """JSON of Orthanc's REST API (raw bytes for non-JSON answers)."""
        request = urllib.request.Request(self.url + route, data=data, method=method)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        try:
            return json.loads(body)
        except ValueError:
            return body

    def clear(self) -> None:
        """Delete every stored patient (a fresh, empty PACS without a restart)."""
        for patient in self.rest("/patients"):
            self.rest(f"/patients/{patient}", method="DELETE")

    def delete_series(self, series_instance_uid: str) -> None:
        """Delete one series (``DELETE /series/{id}``), as a PACS losing data would."""
        matches = [
            m
            for m in self.rest("/tools/lookup", method="POST", data=series_instance_uid.encode())
            if m.get("Type") == "Series"
        ]
        if not matches:
            raise KeyError(f"Orthanc has no series {series_instance_uid}")
        self.rest(f"/series/{matches[0]['ID']}", method="DELETE")

    def instances(self) -> list[str]:
        """SOP Instance UIDs of every stored instance."""
        uids = []
        for orthanc_id in self.rest("/instances"):
            uids.append(self.rest(f"/instances/{orthanc_id}/simplified-tags")["SOPInstanceUID"])
        return uids

    def destination(self, called_ae: str | None = None, calling_ae: str | None = None, **settings) -> Destination:
        return Destination(
            host="127.0.0.1",
            port=self.dicom_port,
            called_ae=called_ae or self.aet,
            calling_ae=calling_ae or self.allowed_ae,
            **settings,
        )

    def dicomweb_destination(self, **settings) -> Destination:
        return Destination(url=f"{self.url}/dicom-web", **settings)


def dcmtk_tool(name: str) -> str | None:
    """dcmtk's ``name`` (storescu, echoscu, ...) on PATH or in /usr/bin; None when absent.

    pynetdicom installs Python apps of the same names with other options, so the tool must say it is dcmtk's.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True)
            if "dcmtk" in (version.stdout + version.stderr).lower():
                return str(candidate)
    return None
