"""DICOMweb sender: STOW-RS with ``dicomweb-client``, optional basic or bearer authentication and TLS files.

One instance per request, so each instance gets its own answer (status from the STOW-RS
response's FailedSOPSequence / ReferencedSOPSequence). One HTTP session (keep-alive) per export.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from monai_exaggeration.export.destinations import Destination
from monai_exaggeration.export.status import (
    PermanentSendError,
    SendResult,
    TransientSendError,
    UnreachableError,
    classify_status,
)

__all__ = ["DicomwebSender"]


class DicomwebSender:
    """STOW-RS to ``destination.url``."""

    def __init__(self, destination: Destination) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        session = requests.Session()
        if destination.username:
            session.auth = (destination.username, destination.password)
        headers = {"Authorization": f"Bearer {destination.bearer_token}"} if destination.bearer_token else None
        if destination.tls_ca:
            session.verify = destination.tls_ca
        if destination.tls_cert:
            session.cert = (destination.tls_cert, destination.tls_key) if destination.tls_key else destination.tls_cert
        self.destination = destination
        self.session = session
        self.client = DICOMwebClient(
            destination.url, session=session, headers=headers,
            timeout=(destination.connect_timeout, destination.network_timeout),
        )

    def echo(self) -> int:
        """A QIDO-RS query for one study: 0x0000 when the server answers (DICOMweb has no C-ECHO)."""
        import requests

        try:
            self.client.search_for_studies(limit=1)
        except requests.HTTPError as error:
            raise self._http_error(error) from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise UnreachableError(f"cannot reach {self.destination.url}: {type(error).__name__}") from error
        return 0x0000

    def ensure_open(self) -> None:
        return None

    def _http_error(self, error) -> Exception:
        code = error.response.status_code if error.response is not None else 0
        if code >= 500 or code in (408, 429):
            return TransientSendError(f"HTTP {code} from {self.destination.url}")
        if code in (401, 403):
            return PermanentSendError(f"HTTP {code}: not authorised at {self.destination.url} -- check the credentials")
        if code == 404:
            return PermanentSendError(f"HTTP 404 at {self.destination.url}: is this the DICOMweb base URL (e.g. .../dicom-web)?")
        return PermanentSendError(f"HTTP {code} from {self.destination.url}")

    def send(self, dataset: Dataset) -> SendResult:
        """STOW-RS one instance."""
        import requests

        try:
            answer = self.client.store_instances([dataset])
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else 0
            if code in (400, 409, 415):  # this instance was refused; others may be fine
                return SendResult("failed", 0xC000, f"STOW-RS HTTP {code}: the server refused the instance")
            raise self._http_error(error) from error
        except requests.ConnectionError as error:
            raise UnreachableError(f"cannot reach {self.destination.url}: {type(error).__name__}") from error
        except requests.Timeout as error:
            raise TransientSendError(f"no answer from {self.destination.url} in time: {type(error).__name__}") from error
        uid = str(dataset.SOPInstanceUID)
        for item in answer.get("FailedSOPSequence", []):
            if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
                return classify_status(int(item.get("FailureReason", 0xC000)))
        for item in answer.get("ReferencedSOPSequence", []):
            if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
                warning = item.get("WarningReason")
                return classify_status(int(warning)) if warning is not None else SendResult("sent", 0x0000)
        return SendResult("failed", 0xC000, "the STOW-RS answer does not mention the instance")

    def close(self) -> None:
        self.session.close()
