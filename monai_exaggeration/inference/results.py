"""What the inference produces in memory: one source's series (:class:`SeriesResult`) and a run's
summary (:class:`InferenceSummary`), plus the per-stage timer they report."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from monai_exaggeration.methods.registry import DEFAULT_METHOD

__all__ = ["STAGES", "InferenceSummary", "SeriesResult", "StageTimer"]

#: Timed stages of one source (seconds are summed over sources in :class:`InferenceSummary`).
STAGES = ("read", "classifier", "generator", "frames", "write", "quicklook")


@dataclass
class SeriesResult:
    """One source's series in memory (before anything is written)."""

    source: str
    meta: dict
    bins: list[int]
    centres: list[float]
    frames: np.ndarray  # (K, rows, columns) grey levels exactly as written: uint8 (8 bits) or uint16 (16 bits)
    scores: list[float]  # f of each written frame
    generator_frame_scores: list[float]  # f of the generator's model-size frame
    source_score: float
    source_bin: int
    method: str = DEFAULT_METHOD  # the registered method that made the series
    details: dict = field(default_factory=dict)  # the method's per-source facts (e.g. Latent Shift's shifts)
    detail_texts: list[str] = field(default_factory=list)  # per frame, the method's words for frames.csv
    frame_notes: list[str] = field(default_factory=list)  # per frame, what the DICOM ImageComments add

    @property
    def dicom(self) -> dict:
        return self.meta.get("dicom", {})

    @property
    def unit_frames(self) -> np.ndarray:
        """The written frames as float32 display values in [0, 1] (K, rows, columns)."""
        return self.frames.astype(np.float32) / np.float32(np.iinfo(self.frames.dtype).max)


@dataclass
class InferenceSummary:
    """What a run produced."""

    output_dir: Path
    num_inputs: int = 0
    num_series: int = 0
    num_files: int = 0
    failures: list[dict] = field(default_factory=list)
    series_dirs: list[str] = field(default_factory=list)
    quicklook_dirs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def exit_code(self) -> int:
        """0 when every input produced its series, 1 when some failed, 2 when all of them failed."""
        if not self.failures:
            return 0
        return 2 if self.num_series == 0 else 1

    def add(self, source_row: dict) -> None:
        """Count one written series (its ``sources.csv`` row)."""
        self.num_series += 1
        self.num_files += int(source_row["num_frames"])
        self.series_dirs.append(source_row["series_dir"])
        if source_row.get("gif"):
            self.quicklook_dirs.append(str(Path(source_row["gif"]).parent))

    def describe(self) -> str:
        """The final summary printed for the user: the paths that exist, or that nothing was written.

        A run whose inputs all failed still leaves the logs (``frames.csv``/``sources.csv``, header only
        or with earlier runs' rows, and ``errors.csv``): they are listed as such, and "nothing was
        written" is said only when the output folder holds none of them.
        """
        out = self.output_dir
        lines = [
            f"{self.num_inputs} input(s): {self.num_series} series written ({self.num_files} DICOM files), "
            f"{len(self.failures)} failed, in {self.seconds:.1f} s."
        ]
        logs = [("frame log", "frames.csv"), ("source log", "sources.csv")]
        errors = bool(self.failures) and (out / "errors.csv").is_file()
        if self.num_series:
            lines.append(f"  DICOM series : {_one_or_many(self.series_dirs, out / 'dicom')}")
            lines += [f"  {what:<13}: {out / name}" for what, name in logs]
            if self.quicklook_dirs:
                lines.append(
                    f"  quick-looks  : {_one_or_many(self.quicklook_dirs, out / 'quicklook')} "
                    "(series.gif, montage.png, scores.png)"
                )
        else:
            present = [(what, name) for what, name in logs if (out / name).is_file()]
            if not present and not errors:
                lines.append("  nothing was written.")
            else:
                lines.append("  DICOM series : none written by this run")
                lines += [f"  {what:<13}: {out / name} (no series of this run)" for what, name in present]
        if errors:
            lines.append(f"  errors       : {out / 'errors.csv'}")
        return "\n".join(lines)


def _one_or_many(folders: Sequence[str], parent: Path) -> str:
    """The folder itself when there is one, else how many there are under ``parent``."""
    return f"{folders[0]}/" if len(folders) == 1 else f"{len(folders)} folders under {parent}/"


class StageTimer:
    """Wall-clock seconds per stage (synchronising CUDA so GPU work is charged to its stage)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        """Seconds of every stage in :data:`STAGES` (0 for those not run)."""
        return {stage: self.seconds.get(stage, 0.0) for stage in STAGES}
