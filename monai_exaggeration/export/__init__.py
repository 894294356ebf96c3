"""PACS export of the counterfactual series: DICOM C-STORE (pynetdicom) and DICOMweb STOW-RS, resumable.

    from monai_exaggeration.export import Destination, SendLedger, export_series

    destination = Destination(host="pacs.example.org", port=11112, called_ae="ARCHIVE", calling_ae="EXAGGERATION")
    with SendLedger("out/export_ledger.sqlite") as ledger:
        report = export_series(["out/dicom"], destination, ledger)
    report.write_csv("out/export_report.csv"); print(report.describe())

Modules: ``destinations`` (peers from flags or a YAML/JSON file), ``dimse`` (C-ECHO/C-STORE),
``dicomweb`` (STOW-RS), ``status`` (status codes, error kinds), ``ledger`` (SQLite send ledger),
``exporter`` (the loop, retries, report, ``verify=True``: ask the destination what it holds by C-FIND
or QIDO-RS).
"""

from monai_exaggeration.export.destinations import (
    Destination,
    DestinationError,
    destination_if_enabled,
    load_destinations,
    select_destination,
)
from monai_exaggeration.export.exporter import (
    REPORT_COLUMNS,
    ExportReport,
    ExportRow,
    collect_dicom_files,
    export_files,
    export_series,
)
from monai_exaggeration.export.ledger import LedgerBusyError, LedgerError, SendLedger, move_aside
from monai_exaggeration.export.senders import DicomwebSender, DimseSender, Querier, Sender, make_querier, make_sender
from monai_exaggeration.export.status import (
    PermanentSendError,
    QueryError,
    SendResult,
    TransientSendError,
    UnreachableError,
    classify_status,
)

__all__ = [
    "REPORT_COLUMNS",
    "Destination",
    "DestinationError",
    "DicomwebSender",
    "DimseSender",
    "ExportReport",
    "ExportRow",
    "LedgerBusyError",
    "LedgerError",
    "PermanentSendError",
    "Querier",
    "QueryError",
    "SendLedger",
    "SendResult",
    "Sender",
    "TransientSendError",
    "UnreachableError",
    "classify_status",
    "collect_dicom_files",
    "destination_if_enabled",
    "export_files",
    "export_series",
    "load_destinations",
    "make_querier",
    "make_sender",
    "move_aside",
    "select_destination",
]
