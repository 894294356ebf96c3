"""DICOMweb sender: STOW-RS with ``dicomweb-client``, optional basic or bearer authentication and TLS files.

One instance per request, so each instance gets its own answer (status from the STOW-RS
response's FailedSOPSequence / ReferencedSOPSequence). One HTTP session (keep-alive) per export.
:meth:`DicomwebSender.find_instances` (``export --verify``) asks which instances of a series the
server holds with QIDO-RS (``GET {url}/studies/{study}/series/{series}/instances``, all pages).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from monai_exaggeration.export.destinations import Destination
from monai_exaggeration.export.status import (
    PermanentSendError,
    QueryError,
    SendResult,
    TransientSendError,
    UnreachableError,
    classify_status,
)

__all__ = ["DicomwebSender"]

_SOP_INSTANCE_UID = "00080018"


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
            destination.url,
            session=session,
            headers=headers,
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
            return PermanentSendError(
                f"HTTP 404 at {self.destination.url}: is this the DICOMweb base URL (e.g. .../dicom-web)?"
            )
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
            raise TransientSendError(
                f"no answer from {self.destination.url} in time: {type(error).__name__}"
            ) from error
        uid = str(dataset.SOPInstanceUID)
        for item in answer.get("FailedSOPSequence", []):
            if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
                return classify_status(int(item.get("FailureReason", 0xC000)))
        for item in answer.get("ReferencedSOPSequence", []):
            if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
                warning = item.get("WarningReason")
                return classify_status(int(warning)) if warning is not None else SendResult("sent", 0x0000)
        return SendResult("failed", 0xC000, "the STOW-RS answer does not mention the instance")

    def find_instances(self, study_instance_uid: str, series_instance_uid: str) -> set[str]:
        """SOP Instance UIDs of one series that the server holds (QIDO-RS, every page of the answer).

        Raises :class:`QueryError` when the server refuses the query, :class:`TransientSendError`
        when it does not answer (HTTP 5xx, 408, 429, timeout) and :class:`UnreachableError`.
        """
        held: set[str] = set()
        offset = 0
        while True:  # servers may page long answers (limit/offset); stop at an empty page or one with nothing new
            page = self._qido_page(study_instance_uid, series_instance_uid, offset)
            uids = set()
            for item in page:
                element = item.get(_SOP_INSTANCE_UID) if isinstance(item, dict) else None
                uids.update(str(value) for value in ((element or {}).get("Value") or []))
            if not page or uids <= held:
                return held
            held |= uids
            offset += len(page)

    def _qido_page(self, study_instance_uid: str, series_instance_uid: str, offset: int) -> list:
        import requests

        try:
            return (
                self.client.search_for_instances(
                    study_instance_uid=study_instance_uid,
                    series_instance_uid=series_instance_uid,
                    fields=["SOPInstanceUID"],
                    offset=offset or None,
                )
                or []
            )
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else 0
            if code == 404 and self._answers_queries():
                return []  # the server answers QIDO-RS but does not know this study or series
            problem = self._http_error(error)
            if isinstance(problem, TransientSendError):
                raise problem from error
            raise QueryError(
                f"QIDO-RS query refused: {problem} -- {self.destination.url} cannot be asked which instances it holds"
            ) from error
        except requests.ConnectionError as error:
            raise UnreachableError(f"cannot reach {self.destination.url}: {type(error).__name__}") from error
        except requests.Timeout as error:
            raise TransientSendError(f"no answer to QIDO-RS from {self.destination.url} in time") from error
        except ValueError as error:  # not DICOM JSON
            raise QueryError(f"the QIDO-RS answer of {self.destination.url} is not DICOM JSON: {error}") from error

    def _answers_queries(self) -> bool:
        """True when a QIDO-RS study query works (then a 404 for one series means: not there)."""
        import requests

        try:
            self.client.search_for_studies(limit=1)
        except (requests.RequestException, ValueError):
            return False
        return True

    def close(self) -> None:
        self.session.close()
