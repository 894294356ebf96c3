"""``python -m monai_exaggeration serve-dicom [run|status|requeue] --config node.yaml``: the DICOM node's commands.

``run`` (the default) starts the node and serves until SIGTERM/SIGINT; ``status`` prints the
queue's counts (and the parked jobs with their reasons); ``requeue`` puts parked jobs (with
``--failed`` also those waiting to retry) back into the queue. Exit status: 0 done; 1 ``run``: the
worker stopped on an error, ``status``: some jobs are parked (they need attention); 2 a bad
configuration, a busy port or work_dir, missing models (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging

from monai_exaggeration.errors import fail, restore_error_logging

__all__ = ["add_dicom_node_parser", "status_text"]


def status_text(config, counts: dict, pending_bytes: int, parked: list, running_pid: int | None) -> str:
    """The ``status`` report."""
    limits = config.queue
    lines = [
        f"DICOM node {config.scp.ae_title} (port {config.scp.port}), work_dir {config.work_dir}: "
        + (f"running (pid {running_pid})" if running_pid else "not running"),
        f"  jobs: {counts['queued']} queued, {counts['running']} running, {counts['failed']} waiting to retry, "
        f"{counts['parked']} parked, {counts['done']} done; {counts['duplicates']} re-sent instance(s) acknowledged "
        "without a new job",
        f"  spool: {pending_bytes / 1e6:.1f} MB of {limits.max_spool_mb:g} MB; "
        f"{counts['queued'] + counts['running'] + counts['failed']} of {limits.max_jobs} jobs",
    ]
    for job in parked:
        lines.append(
            f"  parked job {job.id}: {job.sop_instance_uid} from {job.calling_ae or '?'} after "
            f"{job.attempts} attempt(s): {job.reason}"
        )
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> int:
    from monai_exaggeration.node.config import NodeConfigError, load_node_config
    from monai_exaggeration.node.queue import JobQueue
    from monai_exaggeration.node.service import node_running, serve

    if args.debug:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
    try:
        config = load_node_config(args.config)
        if args.action == "run":
            for handler in logging.getLogger().handlers:
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            restore_error_logging()  # a running node logs with timestamps; `error: ...` lines are for its start-up
            return serve(config)
        path = config.work_dir / "queue.sqlite"
        if args.action == "requeue":
            with JobQueue(path) as queue:
                count = queue.requeue(("parked", "failed") if args.failed else ("parked",))
            print(
                f"{count} job(s) queued again"
                + ("" if node_running(config.work_dir) else " (the node is not running: start it to process them)")
            )
            return 0
        if not path.is_file():
            print(f"no job queue yet at {path}: the node has not run with this work_dir")
            return 0
        with JobQueue(path, read_only=True) as queue:
            counts, (_, pending_bytes) = queue.counts(), queue.pending()
            parked = queue.jobs(("parked",), limit=20)
        running = node_running(config.work_dir)
        if args.json:
            print(json.dumps({**counts, "spool_bytes": pending_bytes, "running_pid": running}))
        else:
            print(status_text(config, counts, pending_bytes, parked, running))
        return 1 if counts["parked"] else 0
    except (NodeConfigError, OSError) as error:
        return fail(error)


def add_dicom_node_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve-dicom`` to the package's command line; return its parser."""
    parser = commands.add_parser(
        "serve-dicom",
        help="run a DICOM node: receive chest X-rays, explain them, send SC + captions + SR to a PACS",
        description="A DICOM node (Storage SCP): the PACS or a modality sends chest X-rays (CR, DX, SC) to it;\n"
        "each is queued durably, explained with the bundle's inference, and the Secondary Capture series,\n"
        "a presentation state with captions and a TID 1500 structured report are sent to the configured\n"
        "destination, in the source's study. Actions: run (default; stops on SIGTERM/SIGINT), status (queue\n"
        "counts; exit 1 when jobs are parked), requeue (parked jobs back into the queue). Exit status 2:\n"
        "a bad configuration, a busy port or work_dir, missing models. See docs/dicom_node.md.",
        epilog="examples:\n"
        "  python -m monai_exaggeration serve-dicom --config node.yaml\n"
        "  python -m monai_exaggeration serve-dicom status --config node.yaml\n"
        "  python -m monai_exaggeration serve-dicom requeue --config node.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("run", "status", "requeue"),
        default="run",
        help="run the node (default), print the queue's status, or requeue parked jobs",
    )
    parser.add_argument("--config", required=True, help="the node's YAML file (see docs/dicom_node.md)")
    parser.add_argument("--json", action="store_true", help="status: print the counts as one JSON object")
    parser.add_argument("--failed", action="store_true", help="requeue: also the jobs waiting to retry (now)")
    parser.add_argument("--debug", action="store_true", help="log pynetdicom's association and DIMSE messages")
    parser.set_defaults(handler=_command)
    return parser
