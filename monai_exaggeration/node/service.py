"""Start and stop the DICOM node: models, queue, worker and Storage SCP; SIGTERM stops it gracefully.

:meth:`DicomNode.start` locks ``work_dir`` (one node per folder), forks the report-and-send process
(:mod:`.reporter`, before any model is loaded or thread started), opens the queue, loads the models
(the bundle's ``inference.json`` with the YAML's ``inference:`` overrides), hands jobs a crash left
running back to the queue, removes spool files no job owns, starts explaining, checks the
destination with C-ECHO (a warning only) and then listens. :meth:`DicomNode.stop` stops listening
first (an instance in transit is not acknowledged, so its sender sends it again), lets both stages
finish the jobs they hold, and releases the folder.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path

from filelock import FileLock

from monai_exaggeration.findings import finding_profile
from monai_exaggeration.node.config import NodeConfig, NodeConfigError, bundle_root
from monai_exaggeration.node.queue import PENDING, JobQueue
from monai_exaggeration.node.scp import StorageSCP
from monai_exaggeration.node.worker import Worker
from monai_exaggeration.utils import read_note, try_lock, write_note

__all__ = ["DicomNode", "build_runner", "node_running", "serve"]

logger = logging.getLogger("monai_exaggeration.node")


def build_runner(config: NodeConfig):
    """The bundle's inference runner (``configs/inference.json`` + the YAML's ``inference:`` settings), prepared."""
    from monai.bundle import ConfigParser

    settings = dict(config.inference)
    root = str(bundle_root(config.path, settings))
    settings.pop("bundle_root", None)
    inference_json = Path(root) / "configs" / "inference.json"
    if not inference_json.is_file():
        raise NodeConfigError(f"{config.path}: inference.bundle_root: no configs/inference.json in {root}")
    parser = ConfigParser()
    parser.read_config(str(inference_json))
    parser["bundle_root"] = root
    parser["quicklook"] = False  # GIFs and montages are not sent; set inference.quicklook to keep them
    known = set(parser.get())
    for key, value in settings.items():
        if key not in known:
            raise NodeConfigError(f"{config.path}: inference.{key}: not a setting of {inference_json}")
        if key.endswith("_weights") and isinstance(value, str):
            value = str(config.path.parent / Path(value).expanduser())
        parser[key] = value
    try:
        runner = parser.get_parsed_content("runner")
        runner = runner() if callable(runner) and not hasattr(runner, "prepare") else runner
        return runner.prepare()
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        text = " ".join(str(error).split())
        raise NodeConfigError(f"{config.path}: the inference cannot be set up: {text[:400]}") from None


#: ``work_dir/node.lock``: the lock (:mod:`filelock`) one node holds; ``node.lock.json``: its pid, for the messages.
LOCK_FILE, HOLDER_FILE = "node.lock", "node.lock.json"


def _lock(work_dir: Path) -> FileLock:
    """The exclusive lock on ``work_dir`` (our pid noted beside it); NodeConfigError when another node holds it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(work_dir / LOCK_FILE, thread_local=False)
    if not try_lock(lock):
        pid = (read_note(work_dir / HOLDER_FILE) or {}).get("pid", "?")
        raise NodeConfigError(f"another node (pid {pid}) is running with work_dir {work_dir}")
    write_note(work_dir / HOLDER_FILE, {"pid": os.getpid()})
    return lock


def node_running(work_dir: Path) -> int | None:
    """The pid of the node running with ``work_dir`` (-1 when it cannot be told), or None."""
    path = Path(work_dir) / LOCK_FILE
    if not path.is_file():
        return None
    probe = FileLock(path, thread_local=False)
    if try_lock(probe):
        probe.release()
        return None
    pid = (read_note(Path(work_dir) / HOLDER_FILE) or {}).get("pid")
    return pid if isinstance(pid, int) else -1


class DicomNode:
    """The node of one configuration (see docs/dicom_node.md)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.queue: JobQueue | None = None
        self.scp: StorageSCP | None = None
        self.worker: Worker | None = None
        self.runner = None
        self._lock: FileLock | None = None

    def start(self) -> DicomNode:
        config = self.config
        self._lock = _lock(config.work_dir)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        config = self.config
        destination = config.destination()
        self.worker = Worker(config, destination=destination)
        self.worker.start_reporter()  # forked first: before the models are loaded and any thread runs
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        self.queue = JobQueue(config.work_dir / "queue.sqlite")
        started = time.perf_counter()
        self.runner = build_runner(config)
        segmenter = None
        if config.outputs.ctr and finding_profile(self.runner.finding).measure == "ctr":  # CTR: cardiomegaly's measure
            from monai_exaggeration.bundle import load_bundle_segmenter

            segmenter = load_bundle_segmenter(device=self.runner.device)
        try:
            self.worker.wait_reporter()
        except RuntimeError as error:
            raise NodeConfigError(str(error)) from None
        logger.info(
            "models loaded in %.1f s: %s, model version %r",
            time.perf_counter() - started,
            self.runner.finding,
            self.runner.model_version,
        )
        for job in self.queue.recover(config.queue.max_attempts):
            logger.warning(
                "job %d (%s) was interrupted while running: %s",
                job.id,
                job.sop_instance_uid,
                "queued again" if job.attempts < config.queue.max_attempts else "parked",
            )
        moved = self.queue.adopt_model_version(self.runner.model_version)
        if moved:
            logger.info(
                "%d waiting job(s) of an earlier model version will run with %s", moved, self.runner.model_version
            )
        self._clean_spool()
        self.worker.queue = self.queue
        self.worker.start(self.runner, segmenter)
        self.scp = StorageSCP(config, self.queue, self.runner.model_version)
        try:
            self.scp.start()
        except OSError as error:
            raise NodeConfigError(
                f"cannot listen on {config.scp.host}:{config.scp.port}: {error.strerror or error}"
            ) from None
        self._check_destination(destination)
        counts = self.queue.counts()
        logger.info(
            "node ready: %d queued, %d waiting to retry, %d parked, %d done; results go to %s",
            counts["queued"],
            counts["failed"],
            counts["parked"],
            counts["done"],
            destination.label,
        )

    @staticmethod
    def _check_destination(destination) -> None:
        """Warn (without stopping) when the destination does not answer: results then wait in the queue."""
        from monai_exaggeration.export import PermanentSendError, TransientSendError, make_sender

        sender = None
        try:
            sender = make_sender(destination)
            status = sender.echo()
            if status:
                logger.warning("%s answers C-ECHO with status 0x%04X", destination.label, status)
        except (PermanentSendError, TransientSendError, OSError) as error:
            logger.warning(
                "the destination %s does not answer (%s): results wait in the queue and are retried",
                destination.label,
                error,
            )
        finally:
            if sender is not None:
                sender.close()

    def _clean_spool(self) -> None:
        """Remove spool files no pending or parked job owns (a crash between writing and queueing leaves them)."""
        spool = self.config.work_dir / "spool"
        if not spool.is_dir():
            return
        owned = {job.spool_file for job in self.queue.jobs((*PENDING, "parked"))}
        for path in spool.iterdir():
            if str(path) not in owned and path.is_file():
                path.unlink(missing_ok=True)
                logger.info("removed %s: received but never acknowledged (the sender sends it again)", path.name)

    def stop(self) -> None:
        """Stop listening, let the worker finish its job, close the queue and release ``work_dir``."""
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        if self.worker is not None:
            self.worker.stop()
            if self.worker.current is not None:
                logger.info("stopping: waiting for job %d to finish", self.worker.current.id)
            self.worker.join()
            self.worker = None
        if self.queue is not None:
            self.queue.close()
            self.queue = None
        if self._lock is not None:
            (self.config.work_dir / HOLDER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


def serve(config: NodeConfig) -> int:
    """Run the node until SIGTERM or SIGINT; 0 after a clean stop, 1 when the worker (or the reporter) died."""
    stop = threading.Event()
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every copied module at INFO
    # Single-component patient names of the sources (e.g. "Anonymized") are copied as they are; no need to warn per job.
    warnings.filterwarnings("ignore", message=r'The string ".*" is unlikely to represent the intended person name')

    def request_stop(signum, _frame) -> None:
        logger.info("%s received: stopping (the current job is finished first)", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    node = DicomNode(config)
    try:
        node.start()
        while not stop.wait(1.0):
            if node.worker is not None and not node.worker.is_alive():
                break
        failed = node.worker is not None and not node.worker.is_alive()
        if failed:
            logger.error("the worker stopped (see the messages above): stopping the node")
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("node stopped")
    return 1 if failed else 0
