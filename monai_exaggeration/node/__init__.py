"""A DICOM node: receive chest X-rays (Storage SCP), explain them, send the results to a PACS (docs/dicom_node.md).

Modules: ``config`` (the YAML file), ``queue`` (SQLite job queue), ``scp`` (pynetdicom Storage SCP
into a durable spool), ``worker`` (inference, captions, report, export), ``service`` (start/stop,
SIGTERM), ``cli`` (``python -m monai_exaggeration serve-dicom``).
"""
