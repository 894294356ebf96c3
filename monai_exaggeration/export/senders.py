"""The sender for a destination: :class:`~.dimse.DimseSender` (C-STORE) or :class:`~.dicomweb.DicomwebSender` (STOW-RS).

Both have ``echo() -> int``, ``ensure_open()``, ``send(dataset) -> SendResult`` and ``close()``, and
raise :class:`~.status.TransientSendError` / :class:`~.status.PermanentSendError`.
:func:`make_querier` gives the object ``export --verify`` asks which instances the destination holds
(``find_instances(study, series) -> set`` and ``close()``): C-FIND for DIMSE destinations, QIDO-RS
for DICOMweb ones (an Orthanc is asked over the transport its destination describes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pydicom.dataset import Dataset

from monai_exaggeration.export.destinations import Destination
from monai_exaggeration.export.dicomweb import DicomwebSender
from monai_exaggeration.export.dimse import DimseSender, dimse_querier
from monai_exaggeration.export.status import (
    PermanentSendError,
    QueryError,
    SendResult,
    TransientSendError,
    classify_status,
)

__all__ = [
    "DicomwebSender",
    "DimseSender",
    "PermanentSendError",
    "QueryError",
    "Querier",
    "SendResult",
    "Sender",
    "TransientSendError",
    "classify_status",
    "make_querier",
    "make_sender",
]


class Sender(Protocol):
    """What the exporter needs of a sender."""

    def echo(self) -> int: ...

    def ensure_open(self) -> None: ...

    def send(self, dataset: Dataset) -> SendResult: ...

    def close(self) -> None: ...


def make_sender(destination: Destination, contexts: Iterable[tuple[str, str]] = ()) -> Sender:
    """The sender for ``destination``'s kind; ``contexts`` are (SOP class, transfer syntax) pairs for DIMSE."""
    if destination.kind == "dicomweb":
        return DicomwebSender(destination)
    return DimseSender(destination, contexts)


class Querier(Protocol):
    """What ``export --verify`` needs: which SOP Instance UIDs of a series the destination holds."""

    def find_instances(self, study_instance_uid: str, series_instance_uid: str) -> set[str]: ...

    def close(self) -> None: ...


def make_querier(destination: Destination) -> Querier:
    """C-FIND (Study Root, IMAGE level) for a DIMSE destination, QIDO-RS for a DICOMweb one."""
    if destination.kind == "dicomweb":
        return DicomwebSender(destination)
    return dimse_querier(destination)
