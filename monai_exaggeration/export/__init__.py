"""PACS export of the counterfactual series: DICOM C-STORE (pynetdicom) and DICOMweb STOW-RS, resumable."""

from monai_exaggeration.export.destinations import (
    Destination,
    DestinationError,
    destination_if_enabled,
    load_destinations,
    select_destination,
)
from monai_exaggeration.export.exporter import REPORT_COLUMNS, ExportReport, ExportRow, collect_dicom_files, export_files
from monai_exaggeration.export.ledger import SendLedger
from monai_exaggeration.export.senders import (
    DicomwebSender,
    DimseSender,
    PermanentSendError,
    SendResult,
    TransientSendError,
    classify_status,
    make_sender,
)

__all__ = [
    "REPORT_COLUMNS",
    "Destination",
    "DestinationError",
    "DicomwebSender",
    "DimseSender",
    "ExportReport",
    "ExportRow",
    "PermanentSendError",
    "SendLedger",
    "SendResult",
    "TransientSendError",
    "classify_status",
    "destination_if_enabled",
    "collect_dicom_files",
    "export_files",
    "load_destinations",
    "make_sender",
    "select_destination",
]
