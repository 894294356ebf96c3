"""Senders: one DIMSE association (C-ECHO, C-STORE) or one DICOMweb client (STOW-RS) per export.

Both turn the peer's answer into a :class:`SendResult` with the DICOM status code, and raise
:class:`TransientSendError` for problems worth retrying (connection refused or reset, association
aborted, timeout, "out of resources", HTTP 5xx) and :class:`PermanentSendError` for problems that a
retry cannot fix (association rejected, e.g. a wrong called AE title).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from monai_exaggeration.export.destinations import Destination

__all__ = [
    "DimseSender",
    "DicomwebSender",
    "PermanentSendError",
    "SendResult",
    "TransientSendError",
    "classify_status",
    "make_sender",
]

logger = logging.getLogger("monai_exaggeration.export")
# pynetdicom logs every PDU at INFO: noise in an export log (set it back to INFO to debug a peer).
if logging.getLogger("pynetdicom").level == logging.NOTSET:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

#: Warning statuses of C-STORE (PS3.4 B.2.3): the instance is stored.
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


class TransientSendError(RuntimeError):
    """Worth retrying later (network, peer busy)."""


class PermanentSendError(RuntimeError):
    """A retry cannot help (rejected association, misconfiguration)."""


@dataclass(frozen=True)
class SendResult:
    """The peer's answer for one instance: ``result`` is sent, warning or failed."""

    result: str
    status: int
    message: str = ""

    @property
    def stored(self) -> bool:
        return self.result in ("sent", "warning")


def classify_status(status: int) -> SendResult:
    """C-STORE status code -> result (PS3.4 Annex B, PS3.7 Annex C)."""
    if status == 0x0000:
        return SendResult("sent", status)
    if status in WARNING_STATUSES:
        names = {0xB000: "coercion of data elements", 0xB006: "elements discarded", 0xB007: "data set does not match SOP class"}
        return SendResult("warning", status, f"stored with warning: {names[status]}")
    if 0xA700 <= status <= 0xA7FF:
        return SendResult("failed", status, "refused: out of resources")
    if 0xA900 <= status <= 0xA9FF:
        return SendResult("failed", status, "error: data set does not match SOP class")
    if 0xC000 <= status <= 0xCFFF:
        return SendResult("failed", status, "error: cannot understand")
    known = {0x0122: "refused: SOP class not supported", 0x0124: "refused: not authorized", 0x0110: "processing failure",
             0x0117: "invalid SOP instance", 0x0211: "unrecognized operation", 0x0212: "mistyped argument"}
    return SendResult("failed", status, known.get(status, "failed"))


def _ssl_context(destination: Destination) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.tls_ca or None)
    if destination.tls_cert:
        context.load_cert_chain(destination.tls_cert, keyfile=destination.tls_key or None)
    return context


class DimseSender:
    """C-STORE over one reused association (re-opened by :meth:`ensure_open` if it dropped)."""

    def __init__(self, destination: Destination, contexts: Iterable[tuple[str, str]] = ()) -> None:
        from pynetdicom import AE

        self.destination = destination
        self.ae = AE(ae_title=destination.calling_ae)
        for name in ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(self.ae, name, getattr(destination, "connect_timeout" if name == "connection_timeout" else name))
        self.ae.maximum_pdu_size = destination.max_pdu
        self._contexts: set[tuple[str, str]] = set()
        self.assoc = None
        for sop_class, syntax in contexts:
            self.add_context(sop_class, syntax)

    def add_context(self, sop_class: str, transfer_syntax: str) -> None:
        """Request ``sop_class`` with the file's transfer syntax (and the uncompressed ones as fallback)."""
        if (sop_class, transfer_syntax) in self._contexts:
            return
        if len({c for c, _ in self._contexts} | {sop_class}) > 120:
            raise PermanentSendError("more than 120 SOP classes in one export: split it")
        self._contexts.add((sop_class, transfer_syntax))
        syntaxes = list(dict.fromkeys([transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        self.ae.add_requested_context(sop_class, syntaxes)
        if self.assoc is not None:  # the association was negotiated without it
            self.close()

    def ensure_open(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            return
        self.close()
        self.assoc = self._associate()

    def _associate(self):
        destination = self.destination
        tls = (_ssl_context(destination), destination.host) if destination.uses_tls else None
        where = f"{destination.called_ae}@{destination.host}:{destination.port}"
        try:  # a plain TCP probe first, so a closed port or unknown host gets a message that says so
            socket.create_connection((destination.host, destination.port), timeout=destination.connect_timeout).close()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise TransientSendError(f"cannot connect to {where}: {reason}") from None
        if not self.ae.requested_contexts:
            self.ae.add_requested_context("1.2.840.10008.1.1")  # Verification only (C-ECHO)
        assoc = self.ae.associate(destination.host, destination.port, ae_title=destination.called_ae, tls_args=tls)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise PermanentSendError(
                f"association rejected by {where} (calling AE {destination.calling_ae}): check the called AE title, "
                "and that the PACS knows the calling AE title and this host"
            )
        if assoc.is_aborted:
            raise TransientSendError(f"association aborted by {where}")
        raise TransientSendError(f"cannot connect to {where}: connection refused, unreachable or timed out")

    def echo(self) -> int:
        """C-ECHO; returns the status (0x0000 = the peer answers)."""
        self.ensure_open()
        status = self.assoc.send_c_echo()
        if not status or "Status" not in status:
            self.close()
            raise TransientSendError("no answer to C-ECHO (connection lost or DIMSE timeout)")
        return int(status.Status)

    def send(self, dataset: Dataset) -> SendResult:
        """C-STORE one instance."""
        self.ensure_open()
        sop_class = str(dataset.SOPClassUID)
        accepted = [c for c in self.assoc.accepted_contexts if c.abstract_syntax == sop_class]
        if not accepted:
            return SendResult("failed", 0x0122, f"the peer accepted no presentation context for SOP class {sop_class}")
        try:
            status = self.assoc.send_c_store(dataset)
        except (ConnectionError, OSError) as error:
            self.close()
            raise TransientSendError(f"connection lost during C-STORE: {error}") from error
        if not status or "Status" not in status:
            self.close()
            raise TransientSendError(
                "no answer to C-STORE: the peer closed the association or timed out "
                "(is our calling AE title allowed to store there?)"
            )
        result = classify_status(int(status.Status))
        comment = str(status.get("ErrorComment", "") or "")
        if comment:
            result = SendResult(result.result, result.status, f"{result.message}: {comment}")
        if 0xA700 <= result.status <= 0xA7FF:
            raise TransientSendError(f"peer out of resources (status 0x{result.status:04X})")
        return result

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            finally:
                self.assoc = None


class DicomwebSender:
    """STOW-RS with ``dicomweb-client`` (one instance per request, so each gets its own answer)."""

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
        return 0

    def ensure_open(self) -> None:
        return None

    def send(self, dataset: Dataset) -> SendResult:
        import requests

        try:
            answer = self.client.store_instances([dataset])
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else 0
            if code >= 500 or code in (408, 429):
                raise TransientSendError(f"STOW-RS HTTP {code} from {self.destination.url}") from error
            if code in (401, 403):
                raise PermanentSendError(f"STOW-RS HTTP {code}: not authorised at {self.destination.url} -- check the credentials")
            return SendResult("failed", 0xC000, f"STOW-RS HTTP {code}")
        except (requests.ConnectionError, requests.Timeout) as error:
            raise TransientSendError(f"cannot reach {self.destination.url}: {type(error).__name__}") from error
        uid = str(dataset.SOPInstanceUID)
        for item in answer.get("FailedSOPSequence", []):
            if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
                return classify_status(int(item.get("FailureReason", 0xC000)))
        for item in answer.get("ReferencedSOPSequence", []):
            if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
                warning = item.get("WarningReason")
                return classify_status(int(warning)) if warning is not None else SendResult("sent", 0x0000)
        return SendResult("failed", 0xC000, "STOW-RS answer does not mention the instance")

    def close(self) -> None:
        self.session.close()


def make_sender(destination: Destination, contexts: Iterable[tuple[str, str]] = ()):
    """The sender for ``destination``'s kind."""
    if destination.kind == "dicomweb":
        return DicomwebSender(destination)
    return DimseSender(destination, contexts)

