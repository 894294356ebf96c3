"""Checkpoints of a training run: resuming (from the latest periodic checkpoint or the final file),
pruning after a resume, the shipped weight files that a run must never overwrite, and a lock that
keeps two runs out of one checkpoint folder."""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from monai_exaggeration.utils import path_lock, read_note, try_lock, write_note

__all__ = [
    "SHIPPED_WEIGHTS",
    "TrainingLock",
    "TrainingLockedError",
    "attach_resume",
    "check_weight_names",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)

#: Names of the explainer's and its instruments' shipped weight files: an explainer run refuses them in any
#: folder (``explainer.pt`` ships in ``bundles/cxr/models``, the others in their own bundles below).
SHIPPED_WEIGHTS = ("classifier.pt", "explainer.pt", "segmentation.pt", "encoder.pt")
#: Shipped weight files of the other bundles (bundle folder name -> file names in its ``models``; tracked by git).
OTHER_SHIPPED_WEIGHTS = {
    "cxr_classifier": ("classifier.pt",),
    "cxr_segmentation": ("segmentation.pt",),
    "cxr_encoder": ("encoder.pt",),
    "cxr_autoencoder": ("autoencoder.pt",),
}


def _checkpoints(ckpt_dir: str | os.PathLike, prefix: str) -> list[tuple[int, Path]]:
    """(iteration, path) of MONAI/ignite checkpoints ``<prefix>_checkpoint_[iteration=]<n>.pt``."""
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(?:iteration=)?(\d+)\.pt$")
    found = []
    for path in Path(ckpt_dir).glob(f"{prefix}_checkpoint_*.pt"):
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "explainer") -> Path | None:
    """The ``<prefix>_checkpoint_*.pt`` file with the highest iteration in ``ckpt_dir``, if any."""
    found = _checkpoints(ckpt_dir, prefix)
    return found[-1][1] if found else None


def _read(path: Path) -> dict | None:
    """The checkpoint's content, or None (with a warning) when it cannot be read."""
    try:  # MONAI writes checkpoints in place: one killed mid-save is damaged, so fall back to an older one
        # memory-mapped: a file cut short fails here, but a 1 GB checkpoint is not read twice
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is skipped
        logger.warning("skipping damaged checkpoint %s (%s)", path, error)
        return None
    return content if isinstance(content, dict) else None


def _trainer_key(trainer: Engine, load_dict: dict) -> str | None:
    return next((key for key, value in load_dict.items() if value is trainer), None)


def _saved_seconds(content: dict) -> float:
    state = content.get("training_state")
    return float(state.get("seconds", 0.0)) if isinstance(state, dict) else 0.0


def _newest_readable(
    ckpt_dir: Path, prefix: str, final_filename: str | None, key: str | None
) -> tuple[int, Path, dict] | None:
    """The readable checkpoint with the highest iteration: ``(iteration, path, content)``, or None.

    Candidates are the periodic checkpoints and the final file (when it holds the trainer's state under
    ``key``; on a tie it wins); a damaged one is skipped (``_read`` warns).
    """
    # (iteration, 1 for the final file so that it wins a tie, path)
    candidates: list[tuple[int, int, Path]] = [(it, 0, path) for it, path in _checkpoints(ckpt_dir, prefix)]
    final = ckpt_dir / (final_filename or f"{prefix}_final.pt")
    final_content = _read(final) if final.is_file() else None
    if final_content is not None:
        trainer_state = final_content.get(key) if key else None
        if isinstance(trainer_state, dict) and "iteration" in trainer_state:
            candidates.append((int(trainer_state["iteration"]), 1, final))
        else:
            logger.warning("%s holds no trainer state (%s): not used to resume", final, key or "no trainer to load")
    for iteration, _, path in sorted(candidates, reverse=True):
        content = final_content if path == final else _read(path)
        if content is not None:
            return iteration, path, content
    return None


def _limit_reached(iteration: int, content: dict, max_iterations: int | None, max_seconds: float | None) -> str | None:
    """Which limit a checkpoint already reached (words for the log), or None."""
    if max_iterations is not None and iteration >= max_iterations:
        return f"max_iterations {max_iterations}"
    if max_seconds is not None and _saved_seconds(content) >= max_seconds:
        return f"max_seconds {max_seconds:g}: {_saved_seconds(content):.0f} s trained"
    return None


def attach_resume(
    trainer: Engine,
    ckpt_dir: str | os.PathLike,
    load_dict: dict,
    prefix: str = "explainer",
    map_location: str | torch.device | None = None,
    final_filename: str | None = None,
    saver: Any = None,
    max_iterations: int | None = None,
) -> Path | None:
    """If a checkpoint exists, attach a MONAI ``CheckpointLoader`` so ``trainer.run()`` resumes from it.

    Candidates are the periodic checkpoints ``<prefix>_checkpoint_iteration=N.pt`` and the final
    file ``final_filename`` (default ``<prefix>_final.pt``, which holds the same ``checkpoint_dict``),
    so a finished run continues when started again with a larger ``max_iterations``. The candidate
    with the highest iteration that can be read is used (a damaged one is skipped with a warning:
    keep ``n_saved >= 2``). Restores every object of ``load_dict`` (networks, optimisers, the
    trainer's iteration and epoch) and logs where training resumes.

    When that checkpoint already reached ``max_iterations`` (default: the trainer's
    ``max_iterations``) or the trainer's ``max_seconds``, it logs ``already trained to N iterations
    (FILE)`` and the trainer's ``run()`` returns without training or writing anything.

    ``saver``: the run's MONAI ``CheckpointSaver``. Its periodic checkpoints are then pruned to its
    ``n_saved`` now (keeping the newest readable ones; damaged newer ones are removed) and handed to
    it, so the resumed run keeps ``n_saved`` files in all, not ``n_saved`` more.

    Returns the checkpoint resumed from (or found complete), or None.
    """
    ckpt_dir = Path(ckpt_dir)
    if max_iterations is None:
        max_iterations = getattr(trainer, "max_iterations", None)
    found = _newest_readable(ckpt_dir, prefix, final_filename, _trainer_key(trainer, load_dict))
    if found is None:
        logger.info(
            "no usable checkpoint in %s: training starts from scratch%s",
            ckpt_dir,
            "" if max_iterations is None else f" (iteration 0; max_iterations {max_iterations})",
        )
        return None
    iteration, path, content = found
    reached = _limit_reached(iteration, content, max_iterations, getattr(trainer, "max_seconds", None))
    if reached:
        logger.info(
            "already trained to %d iterations (%s; %s): nothing to do, nothing written. "
            "Pass a larger --max_iterations (or --max_seconds) to continue training from it.",
            iteration,
            path,
            reached,
        )
        _skip_run(trainer, path)
        return path

    if saver is not None:
        _prune(saver, ckpt_dir, prefix, upto=iteration)
    logger.info(
        "resuming training from %s (iteration %d)%s",
        path,
        iteration,
        "" if max_iterations is None else f" up to iteration {max_iterations}",
    )
    CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=map_location).attach(trainer)
    return path


def _skip_run(trainer: Engine, path: Path) -> None:
    """Make ``trainer.run()`` return at once (no events fire, so no handler writes a file)."""
    if hasattr(trainer, "already_trained"):
        trainer.already_trained = path
        return

    def run(*args: Any, **kwargs: Any) -> None:
        return None

    trainer.run = run  # type: ignore[method-assign]


def _prune(saver: Any, ckpt_dir: Path, prefix: str, upto: int) -> None:
    """Keep the saver's ``n_saved`` newest periodic checkpoints up to ``upto``; tell the saver about them."""
    interval = getattr(saver, "_interval_checkpoint", None)
    if interval is None:
        return
    n_saved = getattr(interval, "n_saved", None)
    found = _checkpoints(ckpt_dir, prefix)
    newer = [(iteration, path) for iteration, path in found if iteration > upto]  # damaged (resume skipped them)
    older = [(iteration, path) for iteration, path in found if iteration <= upto]
    keep = older if n_saved is None else older[-n_saved:]  # the one resumed from is the newest of them
    removed = [path for _, path in newer] + [path for item, path in older if (item, path) not in keep]
    for path in removed:
        try:
            path.unlink()
        except OSError as error:
            logger.warning("could not remove old checkpoint %s (%s)", path, error)
    if removed:
        logger.info(
            "removed %d old checkpoint(s) to keep n_saved=%s: %s",
            len(removed),
            n_saved,
            ", ".join(p.name for p in removed),
        )
    interval.load_state_dict({"_saved": [(iteration, path.name) for iteration, path in keep]})


def check_weight_names(
    ckpt_dir: str | os.PathLike, names: Iterable[str | None], reserved: Iterable[str] = SHIPPED_WEIGHTS
) -> None:
    """Refuse file names that would overwrite, or be mistaken for, a shipped weight file.

    A name in ``reserved`` (the shipped names for the explainer's files) is refused in any folder;
    any name is refused where ``ckpt_dir/name`` is a shipped file (``bundles/<bundle>/models/<shipped
    name>`` of this source tree). Raises ``ValueError`` with what to do instead.
    """
    from monai_exaggeration.bundle import default_bundle_root

    shipped_dir = (Path(default_bundle_root("cxr")) / "models").resolve()
    shipped = {shipped_dir / name for name in SHIPPED_WEIGHTS}
    for bundle, files in OTHER_SHIPPED_WEIGHTS.items():
        shipped |= {(Path(default_bundle_root(bundle)) / "models").resolve() / name for name in files}
    reserved = set(reserved)
    for name in names:
        if not name:
            continue
        target = Path(ckpt_dir) / name
        if Path(name).name in reserved:
            raise ValueError(
                f"the checkpoint file name {name!r} is the name of a shipped weight file "
                "(bundles/*/models); a training run never writes it: choose another "
                "name (e.g. --final_filename explainer_final.pt, --best_filename explainer_best.pt)"
            )
        if target.resolve() in shipped:
            raise ValueError(
                f"refusing to overwrite the shipped weights {target.resolve()}: train into another folder "
                "with --bundle_root DIR or --ckpt_dir DIR (the shipped files are restored with "
                f"`git checkout {target.resolve().parent}`)"
            )


try:  # shown as one line (no traceback) by the bundle's error hook
    from monai_exaggeration.errors import UserError as _UserError
except ImportError:  # pragma: no cover - older package layout
    _UserError = RuntimeError  # type: ignore[misc,assignment]


class TrainingLockedError(_UserError):
    """Another training run holds the checkpoint folder's lock."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def _user() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


class TrainingLock:
    """One training run per checkpoint folder: a :mod:`filelock` lock; ``<folder>/.training.lock`` names its holder.

    ``acquire()`` takes the folder's lock (:func:`~monai_exaggeration.utils.path_lock`; the system
    releases it when the process ends, however it ends) and writes the note, JSON with PID, host,
    user, start time and command. When another run holds the lock, or the note names a run on
    another host (which cannot be checked from here) or a live run of another user, it raises
    :class:`TrainingLockedError` naming that run. A note left by a run that was killed is taken over
    with a warning. ``release()`` removes the note and the lock (only our own); it also runs at
    interpreter exit and before an uncaught error is reported, so a run that fails leaves no note
    behind. Use as a context manager, or from a bundle's ``run`` list (first ``acquire()``, last ``release()``).
    """

    NAME = ".training.lock"

    def __init__(self, folder: str | os.PathLike, name: str = NAME) -> None:
        self.path = Path(folder) / name
        self.token: str | None = None
        self._lock: Any = None
        self._previous_hook: Any = None

    def __enter__(self) -> TrainingLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "token": self.token,
        }

    def holder(self) -> dict[str, Any] | None:
        """What the note says, None if there is none, ``{}`` if it cannot be read."""
        return read_note(self.path)

    @staticmethod
    def describe(holder: dict[str, Any]) -> str:
        if not holder:
            return "an unreadable lock"
        return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"

    def _refused(self, holder: dict[str, Any] | None) -> TrainingLockedError:
        return TrainingLockedError(
            f"another training run is writing to {self.path.parent}: {self.describe(holder or {})} "
            f"(lock file {self.path}). Wait for it to finish or stop it, or train into another "
            f"folder with --ckpt_dir DIR. If that run no longer exists, delete {self.path}."
        )

    def _holder_when_busy(self) -> dict[str, Any] | None:
        """The note of the run holding the lock (it may be writing it this instant: wait a moment for it)."""
        for _ in range(20):
            holder = self.holder()
            if holder:
                return holder
            time.sleep(0.1)
        return holder

    def _clear_stale(self) -> None:
        """With the lock taken: refuse a note that may belong to a live run, remove one left by a killed run."""
        holder = self.holder()
        if holder is None:
            return
        if holder and holder.get("host") != socket.gethostname():
            raise self._refused(holder)  # another machine's process cannot be checked from here
        if holder and holder.get("user") != _user() and _alive(int(holder.get("pid", -1))):
            raise self._refused(holder)  # another user's run holds another lock file
        logger.warning(
            "taking over a stale training lock %s (%s; that process is no longer running)",
            self.path,
            self.describe(holder),
        )
        self.path.unlink(missing_ok=True)

    def acquire(self) -> TrainingLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = path_lock(self.path, thread_local=False)
        if not try_lock(lock):
            raise self._refused(self._holder_when_busy())
        try:
            self._clear_stale()
            self.token = uuid.uuid4().hex
            if not write_note(self.path, self._info(), exclusive=True):  # a run on another host came first
                raise self._refused(self._holder_when_busy())
        except BaseException:
            self.token = None
            lock.release()
            raise
        self._lock = lock
        atexit.register(self.release)
        # An uncaught error may end the process without running atexit (a bundle error hook that
        # calls os._exit): release the lock first, then report as before.
        self._previous_hook = sys.excepthook
        sys.excepthook = self._excepthook
        return self

    def _excepthook(self, exc_type: type[BaseException], error: BaseException, tb: Any) -> None:
        previous = self._previous_hook or sys.__excepthook__
        self.release()
        previous(exc_type, error, tb)

    def release(self) -> None:
        """Remove the note and the lock if they are ours (idempotent)."""
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_hook or sys.__excepthook__
        self._previous_hook = None
        if self.token is None:
            return
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        try:
            atexit.unregister(self.release)
        except Exception:  # noqa: BLE001 - nothing to unregister
            pass
