"""The node's Storage SCP (pynetdicom): C-ECHO and C-STORE into a durable spool and the job queue.

For each C-STORE the handler

1. refuses SOP classes outside ``node.accept`` with 0x0122 (SOP class not supported) and an
   ErrorComment; every storage SOP class is negotiated, so a PACS forwarding a whole study gets a
   per-instance status instead of a failed association;
   refuses, when ``node.refuse_unusable`` (the default), what the inference would refuse from the
   header alone (:func:`~monai_exaggeration.transforms.readers.check_dicom_header`: a modality that is
   no radiograph, no pixel data, several frames, a size outside the inference's ``input_limits``)
   with a failure status and the reason as ErrorComment: 0xA900 (data set does not match the SOP
   class) without pixel data, else 0xC000 (cannot understand); nothing is spooled or queued;
2. acknowledges an instance already in the queue for this model version (a re-send) with 0x0000
   without a second job (the queue counts it as a duplicate);
3. refuses with 0xA700 (out of resources) when the queue holds ``max_jobs`` jobs, the spool would
   exceed ``max_spool_mb`` or the disk would keep less than ``min_free_mb``;
4. writes the instance as received (DICOM file format, the negotiated transfer syntax) to
   ``spool/<hash>.dcm``: temporary file, ``fsync``, ``os.replace``, ``fsync`` of the folder;
5. inserts the job (SQLite, ``synchronous=FULL``) and only then answers 0x0000.

So an acknowledged instance is on disk and in the queue; an instance whose transfer was cut before
the answer is not acknowledged, and the sender sends it again. Associations from calling AE titles
outside ``node.allowed_calling_aes`` (when set) or to another called AE title are rejected, with a
WARNING line naming the calling and called AE titles, the peer's address and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.node.config import NodeConfig
from monai_exaggeration.node.queue import JobQueue

__all__ = ["TRANSFER_SYNTAXES", "StorageSCP", "spool_name"]

logger = logging.getLogger("monai_exaggeration.node")

#: Transfer syntaxes accepted (those the input reader decodes, docs/input.md).
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
SUCCESS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, PROCESSING_FAILURE = 0x0000, 0xA700, 0x0122, 0x0110
#: C-STORE failure statuses of PS3.4 (Storage Service Class) for instances refused from their header.
DATA_SET_MISMATCH, CANNOT_UNDERSTAND = 0xA900, 0xC000
#: Why an association was rejected, by (result source, diagnostic) of the A-ASSOCIATE-RJ (PS3.8).
_REJECTIONS = {
    (1, 3): "calling AE title not allowed (node.allowed_calling_aes)",
    (1, 7): "called AE title is not ours (node.ae_title)",
    (1, 2): "application context not supported",
    (2, 1): "user identity not accepted",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "too many associations (node.max_associations)",
}


def spool_name(sop_instance_uid: str, model_version: str) -> str:
    """File name of a spooled instance (a hash: the UID comes from the network and is not trusted as a path)."""
    return hashlib.sha256(f"{sop_instance_uid}\n{model_version}".encode()).hexdigest()[:40] + ".dcm"


def _status(code: int, comment: str = "") -> Dataset:
    answer = Dataset()
    answer.Status = code
    if comment:
        answer.ErrorComment = comment[:64]
    return answer


def _fsync_dir(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class StorageSCP:
    """Accept instances into ``config.work_dir/spool`` and ``queue`` (jobs keyed with ``model_version``)."""

    def __init__(self, config: NodeConfig, queue: JobQueue, model_version: str) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.config = config
        self.queue = queue
        self.model_version = model_version
        self.spool = config.work_dir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        scp = config.scp
        self.accepted = scp.accepted_sop_classes
        self.ae = AE(ae_title=scp.ae_title)
        self.ae.maximum_associations = scp.max_associations
        self.ae.network_timeout = scp.network_timeout
        self.ae.require_called_aet = True
        if scp.allowed_calling_aes:
            self.ae.require_calling_aet = list(scp.allowed_calling_aes)
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self.limits = config.input_limits() if scp.refuse_unusable else None
        if self.limits is not None:
            from monai_exaggeration.transforms.readers import check_dicom_header  # now, not in the first C-STORE

            self._check_header = check_dicom_header
        self.handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.server = None
        self.received = 0

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server is not None else self.config.scp.port

    def start(self) -> StorageSCP:
        """Listen (non-blocking). Raises ``OSError`` when the port cannot be bound."""
        scp = self.config.scp
        self.server = self.ae.start_server(
            (scp.host, scp.port), block=False, evt_handlers=self.handlers, ssl_context=scp.ssl_context()
        )
        logger.info(
            "listening as %s on %s:%d%s; accepting %s from %s",
            scp.ae_title,
            scp.host,
            self.port,
            " (TLS)" if scp.tls_cert else "",
            ", ".join(scp.accept),
            ", ".join(scp.allowed_calling_aes) or "any calling AE title",
        )
        return self

    def stop(self) -> None:
        """Stop listening and close the open associations (an unacknowledged instance is sent again by its sender)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    # ----------------------------------------------------------------------------------- handlers

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_rejected(self, event) -> None:
        """One log line per rejected association: who called, from where, and why."""
        assoc = event.assoc
        requestor, answer = assoc.requestor, assoc.acceptor.primitive
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        source, diagnostic = getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)
        reason = _REJECTIONS.get((source, diagnostic), f"result source {source}, diagnostic {diagnostic}")
        logger.warning(
            "rejected an association from %s at %s:%s to %s: %s",
            str(requestor.ae_title).strip() or "?",
            requestor.address,
            requestor.port,
            called or "?",
            reason,
        )

    def _refusal(self, event, uid: str) -> tuple[int, str] | None:
        """(failure status, reason) of an instance the inference would refuse from its header (None: keep it)."""
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            self._check_header(uid, dataset, self.limits)
        except CXRInputError as error:
            return (DATA_SET_MISMATCH if "no pixel data" in error.problem else CANNOT_UNDERSTAND), error.problem
        except Exception as error:  # noqa: BLE001 - a data set pydicom cannot decode
            return CANNOT_UNDERSTAND, f"cannot decode the data set ({type(error).__name__})"
        return None

    def _free_mb(self) -> float:
        return shutil.disk_usage(self.spool).free / 1e6

    def _on_store(self, event) -> int | Dataset:
        request = event.request
        sop_class, uid = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
        calling = str(event.assoc.requestor.ae_title).strip()
        if sop_class not in self.accepted:
            logger.warning(
                "refused %s from %s: SOP class %s is not accepted (accept: %s)",
                uid,
                calling,
                sop_class,
                ", ".join(self.config.scp.accept),
            )
            return _status(SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted: CR, DX or SC chest X-rays only")
        refusal = self._refusal(event, uid) if self.limits is not None else None
        if refusal is not None:
            logger.warning("refused %s from %s with 0x%04X: %s", uid, calling, *refusal)
            return _status(*refusal)
        existing = self.queue.find(uid, self.model_version)
        if existing is not None:
            self.queue.note_duplicate(existing.id)
            logger.info(
                "%s from %s: already received (job %d, %s), acknowledged without a new job",
                uid,
                calling,
                existing.id,
                existing.state,
            )
            return SUCCESS
        try:
            data = event.encoded_dataset(include_meta=True)
        except (ValueError, AttributeError) as error:
            logger.error("%s from %s: cannot encode the received data set: %s", uid, calling, error)
            return _status(PROCESSING_FAILURE, "cannot store the data set")
        limits = self.config.queue
        jobs, spooled = self.queue.pending()
        full = self._full(jobs, spooled, len(data))
        if full:
            logger.warning("refused %s from %s with 0xA700: %s", uid, calling, full)
            return _status(OUT_OF_RESOURCES, full)
        path = self.spool / spool_name(uid, self.model_version)
        try:
            self._write(path, data)
        except OSError as error:
            logger.error("%s from %s: cannot write the spool file %s: %s", uid, calling, path, error)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return _status(OUT_OF_RESOURCES, "spool disk full")
            return _status(PROCESSING_FAILURE, "cannot write the spool file")
        outcome, job = self.queue.enqueue(
            uid,
            self.model_version,
            sop_class,
            calling,
            str(path),
            len(data),
            max_jobs=limits.max_jobs,
            max_spool_bytes=limits.max_spool_mb * 1e6,
        )
        if outcome == "full":  # another association filled the queue meanwhile
            path.unlink(missing_ok=True)
            logger.warning("refused %s from %s with 0xA700: the queue is full", uid, calling)
            return _status(OUT_OF_RESOURCES, f"queue full ({limits.max_jobs} jobs)")
        if outcome == "duplicate":  # the same instance arrived on another association meanwhile
            if job.spool_file != str(path):
                path.unlink(missing_ok=True)
            return SUCCESS
        self.received += 1
        logger.info("received %s (%s) from %s: job %d queued", uid, self.accepted[sop_class], calling, job.id)
        return SUCCESS

    def _full(self, jobs: int, spooled: int, incoming: int) -> str:
        """Why the instance cannot be taken now ("" when it can)."""
        limits = self.config.queue
        if jobs >= limits.max_jobs:
            return f"queue full ({jobs} jobs, max_jobs {limits.max_jobs})"
        if spooled + incoming > limits.max_spool_mb * 1e6:
            return f"spool full ({spooled / 1e6:.0f} MB, max_spool_mb {limits.max_spool_mb:g})"
        if self._free_mb() - incoming / 1e6 < limits.min_free_mb:
            return f"disk nearly full (min_free_mb {limits.min_free_mb:g})"
        return ""

    def _write(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` durably: temporary file, fsync, rename, fsync of the folder."""
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
