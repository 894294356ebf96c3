"""The sender for a destination: :class:`~.dimse.DimseSender` (C-STORE) or :class:`~.dicomweb.DicomwebSender` (STOW-RS).

Both have ``echo() -> int``, ``ensure_open()``, ``send(dataset) -> SendResult`` and ``close()``, and
raise :class:`~.status.TransientSendError` / :class:`~.status.PermanentSendError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pydicom.dataset import Dataset

from monai_exaggeration.export.destinations import Destination
from monai_exaggeration.export.dicomweb import DicomwebSender
from monai_exaggeration.export.dimse import DimseSender
from monai_exaggeration.export.status import (
    PermanentSendError,
    SendResult,
    TransientSendError,
    classify_status,
)

__all__ = [
    "DicomwebSender",
    "DimseSender",
    "PermanentSendError",
    "SendResult",
    "Sender",
    "TransientSendError",
    "classify_status",
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
