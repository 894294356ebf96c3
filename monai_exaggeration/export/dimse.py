"""DIMSE sender: C-ECHO, C-STORE and C-FIND over one reused association (pynetdicom), optionally over TLS.

Presentation contexts are requested for the SOP classes and transfer syntaxes the files actually
have (plus Explicit/Implicit VR Little Endian as fallback). The association is opened on first
use and re-opened by :meth:`DimseSender.ensure_open` when it dropped. :meth:`DimseSender.find_instances`
(``export --verify``) asks the peer which instances of a series it holds: an IMAGE-level C-FIND in
the Study Root information model, on an association made for it (:func:`dimse_querier`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from monai_exaggeration.export.destinations import Destination
from monai_exaggeration.export.status import (
    PermanentSendError,
    QueryError,
    SendResult,
    TransientSendError,
    UnreachableError,
    classify_status,
)

__all__ = ["STUDY_ROOT_FIND", "DimseSender", "dimse_querier", "ssl_context"]

logger = logging.getLogger("monai_exaggeration.export")
# pynetdicom logs every PDU at INFO: noise in an export log (set it back to INFO to debug a peer).
if logging.getLogger("pynetdicom").level == logging.NOTSET:
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

_VERIFICATION = "1.2.840.10008.1.1"
#: Study Root Query/Retrieve Information Model - FIND.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_PENDING = (0xFF00, 0xFF01)
_FIND_FAILURES = {
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "identifier does not match SOP class",
    0xFE00: "cancelled",
}
_MAX_SOP_CLASSES = 120  # 128 presentation contexts at most, keep room for the fallbacks


def ssl_context(destination: Destination) -> ssl.SSLContext:
    """Client TLS context: verify the peer with ``tls_ca`` (system CAs if empty); ``tls_cert``/``tls_key`` for client auth."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.tls_ca or None)
        if destination.tls_cert:
            context.load_cert_chain(destination.tls_cert, keyfile=destination.tls_key or None)
    except (OSError, ssl.SSLError) as error:
        raise PermanentSendError(
            f"cannot load the TLS files of {destination.label} (ca={destination.tls_ca!r}, cert={destination.tls_cert!r}, "
            f"key={destination.tls_key!r}): {error}"
        ) from error
    return context


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else uid


class DimseSender:
    """C-STORE over one reused association (re-opened by :meth:`ensure_open` if it dropped)."""

    def __init__(self, destination: Destination, contexts: Iterable[tuple[str, str]] = ()) -> None:
        from pynetdicom import AE

        self.destination = destination
        self.ae = AE(ae_title=destination.calling_ae)
        self.ae.connection_timeout = destination.connect_timeout
        self.ae.acse_timeout = destination.acse_timeout
        self.ae.dimse_timeout = destination.dimse_timeout
        self.ae.network_timeout = destination.network_timeout
        self.ae.maximum_pdu_size = destination.max_pdu
        self._contexts: set[tuple[str, str]] = set()
        self.assoc = None
        self.associations_opened = 0
        for sop_class, syntax in contexts:
            self.add_context(sop_class, syntax)

    @property
    def where(self) -> str:
        destination = self.destination
        return f"{destination.called_ae}@{destination.host}:{destination.port}"

    def add_context(self, sop_class: str, transfer_syntax: str) -> None:
        """Request ``sop_class`` with the file's transfer syntax (and the uncompressed ones as fallback)."""
        if (sop_class, transfer_syntax) in self._contexts:
            return
        if len({c for c, _ in self._contexts} | {sop_class}) > _MAX_SOP_CLASSES:
            raise PermanentSendError(f"more than {_MAX_SOP_CLASSES} SOP classes in one export: split it into several")
        self._contexts.add((sop_class, transfer_syntax))
        syntaxes = list(dict.fromkeys([transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        self.ae.add_requested_context(sop_class, syntaxes)
        if self.assoc is not None:  # the association was negotiated without it
            self.close()

    def ensure_open(self) -> None:
        """Open the association unless one is established."""
        if self.assoc is not None and self.assoc.is_established:
            return
        self.close()
        self.assoc = self._associate()
        self.associations_opened += 1

    def _connect_problem(self) -> str | None:
        """A plain TCP connect: why it fails (closed port, unknown host, timeout), or None when the port answers."""
        destination = self.destination
        try:
            socket.create_connection((destination.host, destination.port), timeout=destination.connect_timeout).close()
        except socket.gaierror as error:
            return f"unknown host ({error.strerror})"
        except OSError as error:
            return error.strerror or type(error).__name__
        return None

    def _associate(self):
        destination = self.destination
        tls = (ssl_context(destination), destination.host) if destination.uses_tls else None
        if not self.ae.requested_contexts:
            self.ae.add_requested_context(_VERIFICATION)  # C-ECHO only
        try:
            assoc = self.ae.associate(destination.host, destination.port, ae_title=destination.called_ae, tls_args=tls)
        except (OSError, ssl.SSLError) as error:
            raise UnreachableError(f"cannot connect to {self.where}: {error}") from error
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            self._raise_rejected(assoc)
        if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
            classes = sorted({_sop_class_name(cx.abstract_syntax) for cx in assoc.rejected_contexts})
            raise PermanentSendError(
                f"{self.where} accepts none of the SOP classes / transfer syntaxes offered: {classes}"
            )
        problem = self._connect_problem()
        if problem is not None:
            raise UnreachableError(f"cannot connect to {self.where}: {problem}")
        hint = "TLS handshake failed? check --tls-ca/--tls-cert/--tls-key;" if tls else "does the port need TLS?"
        raise UnreachableError(
            f"{self.where} answers but closed the association while opening it ({hint} is our calling AE title "
            f"{destination.calling_ae} known there?)"
        )

    def _raise_rejected(self, assoc) -> None:
        answer = getattr(assoc.acceptor, "primitive", None)
        details = ""
        if answer is not None and getattr(answer, "result", None) in (0x01, 0x02):
            details = f" ({answer.result_str}, source: {answer.source_str}, reason: {answer.reason_str})"
        message = (
            f"association rejected by {self.where} (calling AE {self.destination.calling_ae}){details}: check the called AE "
            "title, and that the PACS knows our calling AE title and this host"
        )
        if answer is not None and getattr(answer, "result", None) == 0x02:  # rejected-transient (e.g. too busy)
            raise TransientSendError(message)
        raise PermanentSendError(message)

    def echo(self) -> int:
        """C-ECHO; returns the status (0x0000 = the peer answers)."""
        self.ensure_open()
        status = self.assoc.send_c_echo()
        if not status or "Status" not in status:
            self.close()
            raise TransientSendError(f"no answer to C-ECHO from {self.where} (connection lost or DIMSE timeout)")
        return int(status.Status)

    def send(self, dataset: Dataset) -> SendResult:
        """C-STORE one instance."""
        self.ensure_open()
        sop_class = str(dataset.SOPClassUID)
        accepted = [c for c in self.assoc.accepted_contexts if c.abstract_syntax == sop_class]
        if not accepted:
            return SendResult(
                "failed",
                0x0122,
                f"refused: {self.where} accepted no presentation context for SOP class {_sop_class_name(sop_class)}",
            )
        try:
            status = self.assoc.send_c_store(dataset)
        except ValueError as error:  # no accepted context for the file's transfer syntax, or not encodable
            return SendResult("failed", -1, f"cannot send with the negotiated transfer syntaxes: {error}")
        except (ConnectionError, OSError) as error:
            self.close()
            raise TransientSendError(f"connection to {self.where} lost during C-STORE: {error}") from error
        if not status or "Status" not in status:
            self.close()
            raise TransientSendError(
                f"no answer to C-STORE from {self.where}: the peer closed the association or timed out "
                "(is our calling AE title allowed to store there?)"
            )
        result = classify_status(int(status.Status))
        comment = str(status.get("ErrorComment", "") or "")
        if comment:
            result = SendResult(result.result, result.status, f"{result.message}: {comment}")
        if 0xA700 <= result.status <= 0xA7FF:
            raise TransientSendError(f"{self.where} is out of resources (status 0x{result.status:04X})")
        return result

    def find_instances(self, study_instance_uid: str, series_instance_uid: str) -> set[str]:
        """SOP Instance UIDs of one series that the peer holds (IMAGE-level C-FIND, Study Root).

        Needs an association with :data:`STUDY_ROOT_FIND` (see :func:`dimse_querier`). Raises
        :class:`QueryError` when the peer refuses the query, :class:`TransientSendError` when it
        does not answer.
        """
        try:
            self.ensure_open()
        except PermanentSendError as error:
            raise QueryError(f"cannot query {self.where} (C-FIND): {error}") from error
        if not any(c.abstract_syntax == STUDY_ROOT_FIND for c in self.assoc.accepted_contexts):
            self.close()
            raise QueryError(
                f"{self.where} does not accept C-FIND (Study Root Query/Retrieve - FIND) from our AE title "
                f"{self.destination.calling_ae}: it cannot be asked which instances it holds"
            )
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_instance_uid
        query.SeriesInstanceUID = series_instance_uid
        query.SOPInstanceUID = ""
        held: set[str] = set()
        asked = time.monotonic()
        try:
            for status, identifier in self.assoc.send_c_find(query, STUDY_ROOT_FIND):
                if not status or "Status" not in status:
                    self.close()
                    if time.monotonic() - asked < 0.9 * self.destination.dimse_timeout:  # the peer hung up at once
                        raise QueryError(
                            f"{self.where} closed the association instead of answering our C-FIND: it does not let "
                            f"our calling AE title {self.destination.calling_ae} query (C-FIND) or does not support it"
                        )
                    raise TransientSendError(
                        f"no answer to C-FIND from {self.where} within {self.destination.dimse_timeout} s"
                    )
                code = int(status.Status)
                if code in _PENDING:
                    if identifier is not None and identifier.get("SOPInstanceUID"):
                        held.add(str(identifier.SOPInstanceUID))
                elif code == 0x0000:
                    return held
                elif 0xA700 <= code <= 0xA7FF:
                    self._abort()
                    raise TransientSendError(f"{self.where} is out of resources for C-FIND (status 0x{code:04X})")
                else:
                    meaning = _FIND_FAILURES.get(code, "unable to process" if 0xC000 <= code <= 0xCFFF else "failed")
                    comment = str(status.get("ErrorComment", "") or "")
                    self._abort()
                    raise QueryError(
                        f"{self.where} refused the C-FIND for series {series_instance_uid}: status 0x{code:04X} "
                        f"({meaning}{': ' + comment if comment else ''})"
                    )
        except (ConnectionError, OSError) as error:
            self._abort()
            raise TransientSendError(f"connection to {self.where} lost during C-FIND: {error}") from error
        self._abort()
        raise TransientSendError(f"the C-FIND answer of {self.where} ended without a final status")

    def _abort(self) -> None:
        """Abort the association (after a broken exchange a release could wait for answers that never come)."""
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.abort()
            finally:
                self.assoc = None

    def close(self) -> None:
        """Release the association (if any)."""
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            finally:
                self.assoc = None


def dimse_querier(destination: Destination) -> DimseSender:
    """A :class:`DimseSender` whose association offers only Study Root C-FIND (for :meth:`DimseSender.find_instances`)."""
    querier = DimseSender(destination)
    querier.ae.add_requested_context(STUDY_ROOT_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return querier
