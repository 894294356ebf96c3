"""Checkpoints of a training run: resuming (from the latest periodic checkpoint or the final file),
pruning after a resume, the shipped weight files that a run must never overwrite, and a lock that
keeps two runs out of one checkpoint folder."""

from __future__ import annotations

import atexit
import json
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
    key = _trainer_key(trainer, load_dict)
    # (iteration, 1 for the final file so that it wins a tie, path)
    candidates: list[tuple[int, int, Path]] = [(it, 0, path) for it, path in _checkpoints(ckpt_dir, prefix)]
    final = ckpt_dir / (final_filename or f"{prefix}_final.pt")
    final_content = _read(final) if final.is_file() else None
    if final_content is not None:
        trainer_state = final_content.get(key) if key else None
        if isinstance(trainer_state, dict) and "iteration" in trainer_state:
            candidates.append((int(trainer_state["iteration"]), 1, final))  # on a tie the final file wins
        else:
            logger.warning("%s holds no trainer state (%s): not used to resume", final, key or "no trainer to load")
    content: dict | None = None
    for iteration, _, path in sorted(candidates, reverse=True):
        content = final_content if path == final else _read(path)
        if content is not None:
            break
    else:
        total = max_iterations if max_iterations is not None else getattr(trainer, "max_iterations", None)
        logger.info("no usable checkpoint in %s: training starts from scratch%s", ckpt_dir,
                    "" if total is None else f" (iteration 0; max_iterations {total})")
        return None

    if max_iterations is None:
        max_iterations = getattr(trainer, "max_iterations", None)
    max_seconds = getattr(trainer, "max_seconds", None)
    if max_iterations is not None and iteration >= max_iterations:
        reached = f"max_iterations {max_iterations}"
    elif max_seconds is not None and _saved_seconds(content) >= max_seconds:
        reached = f"max_seconds {max_seconds:g}: {_saved_seconds(content):.0f} s trained"
    else:
        reached = None
    if reached:
        logger.info(
            "already trained to %d iterations (%s; %s): nothing to do, nothing written. "
            "Pass a larger --max_iterations (or --max_seconds) to continue training from it.",
            iteration, path, reached,
        )
        _skip_run(trainer, path)
        return path

    if saver is not None:
        _prune(saver, ckpt_dir, prefix, upto=iteration)
    logger.info("resuming training from %s (iteration %d)%s", path, iteration,
                "" if max_iterations is None else f" up to iteration {max_iterations}")
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
            len(removed), n_saved, ", ".join(p.name for p in removed),
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


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


class TrainingLock:
    """A lock file in the checkpoint folder (``<folder>/.training.lock``) held for a training run.

    ``acquire()`` creates it atomically (``O_CREAT | O_EXCL``) holding JSON: PID, host, start time,
    command. If it exists and its process is still running (or runs on another host), it raises
    :class:`TrainingLockedError` naming that run. A stale lock (its PID is dead on this host, or now
    belongs to a newer process) is taken over with a warning. ``release()`` removes it (only our own);
    it is also removed at interpreter exit, so a run that fails still leaves no lock behind. Use as
    a context manager, or from a bundle's ``run`` list (first ``acquire()``, last ``release()``).
    """

    NAME = ".training.lock"

    def __init__(self, folder: str | os.PathLike, name: str = NAME) -> None:
        self.path = Path(folder) / name
        self.token: str | None = None
        self._previous_hook: Any = None

    def __enter__(self) -> TrainingLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": _process_start(os.getpid()),
            "command": " ".join(sys.argv),
            "token": self.token,
        }

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says, None if there is none, ``{}`` if it cannot be read."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            info = json.loads(text)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # unreadable: a writer may be between create and write, so only an old file is stale
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except OSError:
                return True
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process cannot be checked from here
        pid = int(holder.get("pid", -1))
        if pid <= 0 or not _alive(pid):
            return True
        recorded, now = holder.get("process_start"), _process_start(pid)
        return recorded is not None and now is not None and recorded != now  # the PID was reused

    @staticmethod
    def describe(holder: dict[str, Any]) -> str:
        if not holder:
            return "an unreadable lock"
        return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"

    def acquire(self) -> TrainingLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        for _ in range(5):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if not self._stale(holder):
                    self.token = None
                    raise TrainingLockedError(
                        f"another training run is writing to {self.path.parent}: {self.describe(holder)} "
                        f"(lock file {self.path}). Wait for it to finish or stop it, or train into another "
                        f"folder with --ckpt_dir DIR. If that run no longer exists, delete {self.path}."
                    ) from None
                self._take_over(holder)
                continue
            with os.fdopen(handle, "w") as file:
                json.dump(self._info(), file)
            atexit.register(self.release)
            # An uncaught error may end the process without running atexit (a bundle error hook that
            # calls os._exit): release the lock first, then report as before.
            self._previous_hook = sys.excepthook
            sys.excepthook = self._excepthook
            return self
        raise TrainingLockedError(f"could not take the training lock {self.path}: it keeps changing; try again")

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)  # atomic: of two runs taking over, one gets it
        except FileNotFoundError:
            return
        try:
            taken = json.loads(aside.read_text()) if aside.stat().st_size else {}
        except (OSError, ValueError):
            taken = {}
        if taken.get("token") != holder.get("token"):  # a fresh lock of another run: give it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        else:
            logger.warning(
                "taking over a stale training lock %s (%s; that process is no longer running)",
                self.path, self.describe(holder),
            )
        aside.unlink(missing_ok=True)

    def _excepthook(self, exc_type: type[BaseException], error: BaseException, tb: Any) -> None:
        previous = self._previous_hook or sys.__excepthook__
        self.release()
        previous(exc_type, error, tb)

    def release(self) -> None:
        """Remove the lock if it is ours (idempotent)."""
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_hook or sys.__excepthook__
        self._previous_hook = None
        if self.token is None:
            return
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None
        try:
            atexit.unregister(self.release)
        except Exception:  # noqa: BLE001 - nothing to unregister
            pass
