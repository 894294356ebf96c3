"""The OHIF viewer on localhost, reading a DICOMweb server (e.g. Orthanc with its DICOMweb plugin).

OHIF v3 is published prebuilt on the npm registry as ``@ohif/app``; its ``dist/`` folder is a
static web app. :func:`ohif_dist` finds it in the cache (``$EXAG_CACHE_DIR`` or
``~/.cache/monai_exaggeration``, ``ohif-<version>/dist``) or fetches it there once with
``npm pack``. :class:`ViewerServer` serves it on one origin with:

* ``/app-config.js`` generated for the DICOMweb server (the dist's own file is never modified);
* ``/dicom-web/...`` forwarded to the DICOMweb server (same origin: no CORS set-up on the PACS);
* any other path that is not a file answered with ``index.html`` (OHIF routes such as ``/viewer``).

    with ViewerServer(ohif_dist(), "http://127.0.0.1:8042/dicom-web") as viewer:
        print(viewer.study_url(study_instance_uid))
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["OHIF_VERSION", "ViewerServer", "app_config", "ohif_dist"]

logger = logging.getLogger(__name__)

#: The OHIF release the viewer demo and the viewer test use (npm ``@ohif/app``).
OHIF_VERSION = "3.13.2"

_PROXY_PREFIX = "/dicom-web"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


def _cache_dir() -> Path:
    return Path(os.environ.get("EXAG_CACHE_DIR") or Path.home() / ".cache" / "monai_exaggeration")


def ohif_dist(version: str = OHIF_VERSION, cache_dir: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """The ``dist/`` folder of ``@ohif/app`` ``version``: from the cache, else fetched there with ``npm pack``.

    Raises FileNotFoundError with what to do when it is not cached and cannot be fetched.
    """
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    dist = folder / f"ohif-{version}" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if not fetch or npm is None:
        raise FileNotFoundError(
            f"the OHIF viewer {version} is not in {dist.parent} and npm is not available to fetch it: install "
            f"Node.js/npm (Debian: apt-get install npm), or unpack `npm pack @ohif/app@{version}` there so that "
            f"{dist / 'index.html'} exists"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ohif-") as scratch:
        logger.info("fetching @ohif/app@%s from the npm registry (about 50 MB, once)", version)
        packed = subprocess.run(
            [npm, "pack", f"@ohif/app@{version}", "--silent"], cwd=scratch, capture_output=True, text=True, timeout=600
        )
        tarballs = sorted(Path(scratch).glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            raise FileNotFoundError(
                f"npm pack @ohif/app@{version} failed: {(packed.stderr or packed.stdout).strip()[-500:]}"
            )
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(scratch, filter="data")
        unpacked = Path(scratch) / "package"
        if not (unpacked / "dist" / "index.html").is_file():
            raise FileNotFoundError(f"@ohif/app@{version} has no dist/index.html")
        target = dist.parent
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)  # one rename: a killed fetch leaves no half folder behind
    return dist


def app_config(dicomweb_root: str, name: str = "monai_exaggeration") -> str:
    """OHIF's ``app-config.js`` for one DICOMweb data source at ``dicomweb_root`` (a URL or a same-origin path)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name,
            "name": "dicomweb",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class ViewerServer:
    """OHIF's ``dist`` and a DICOMweb server on one local origin (module docstring); a context manager.

    ``dicomweb_url``: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc's plugin);
    ``username``/``password``: HTTP basic authentication toward it, if it needs one. ``port`` 0 picks a free port.
    """

    def __init__(
        self,
        dist: str | os.PathLike,
        dicomweb_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.dist = Path(dist).resolve()
        if not (self.dist / "index.html").is_file():
            raise FileNotFoundError(f"{self.dist} is not an OHIF dist folder (no index.html): see ohif_dist()")
        self.upstream = dicomweb_url.rstrip("/")
        self.auth = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode() if username is not None else None
        )
        self.config = app_config(_PROXY_PREFIX).encode()
        self._server = ThreadingHTTPServer((host, int(port)), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def study_url(self, study_instance_uid: str) -> str:
        """The viewer page of one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-viewer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                logger.debug("viewer: " + format, *args)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._answer()

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                path = urlsplit(self.path).path
                if path == _PROXY_PREFIX or path.startswith(_PROXY_PREFIX + "/"):
                    return self._forward()
                if path == "/app-config.js":
                    return self._send(200, server.config, "application/javascript")
                file = (server.dist / path.lstrip("/")).resolve()
                if server.dist not in file.parents or not file.is_file():
                    file = server.dist / "index.html"  # OHIF's own routes (/viewer, /) and unknown paths
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if file.suffix == ".wasm":
                    kind = "application/wasm"
                self._send(200, file.read_bytes(), kind)

            def _forward(self) -> None:
                target = server.upstream + self.path[len(_PROXY_PREFIX) :]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                request = urllib.request.Request(target, data=body, method=self.command)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP | {"host", "content-length"}:
                        request.add_header(key, value)
                if server.auth:
                    request.add_header("Authorization", server.auth)
                try:
                    with urllib.request.urlopen(request, timeout=120) as answer:
                        status, headers, data = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as error:
                    status, headers, data = error.code, error.headers, error.read()
                except OSError as error:
                    return self._send(502, f"DICOMweb server unreachable: {error}".encode(), "text/plain")
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


def main(argv: list[str] | None = None) -> int:
    """``python -m monai_exaggeration.viewer --fetch``: put the pinned OHIF dist in the cache and print where."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m monai_exaggeration.viewer", description=main.__doc__)
    parser.add_argument("--fetch", action="store_true", help="fetch it with npm when it is not cached yet")
    parser.add_argument("--version", default=OHIF_VERSION, help=f"the @ohif/app version (default {OHIF_VERSION})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(ohif_dist(args.version, fetch=args.fetch))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
