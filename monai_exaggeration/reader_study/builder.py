"""Build a reader-study folder from an inference output: ``python -m monai_exaggeration reader-study build``.

Layout of the study folder ``DIR`` (the contract with the reading app, ``reader-study serve``):

``DIR/study.json`` (public: served to the readers; no ground truth, no tokens, no source paths or UIDs)::

    {"format": 1, "title": str, "instructions": str,
     "arms": [{"id": str, "label": str, "shows": [subset of "image", "saliency", "series", "scores"]}],
     "questions": [{"id": str, "type": "likert"|"yes_no"|"choice"|"text"|"forced_choice", "prompt": str,
                    "phase": "before"|"after",
                    "min": int, "max": int, "labels": [str, one per point]     (likert; labels optional)
                    "options": [str], "multiple": bool                         (choice)
                    "arms": [arm ids]                                          (optional; absent = every arm)}],
     "cases": {case_id: {"image": "assets/<case_id>/image.png",
                         "frames": ["assets/<case_id>/frame_000.png", ...],    (series order)
                         "scores": [classifier score of each frame],
                         "saliency": "assets/<case_id>/saliency.png" | null,
                         "forced_choice": "assets/<case_id>/choice.png" | null}},
     "readers": [reader ids],
     "assignments": {reader_id: [{"case_id": str, "arm": str}, ... in reading order]}}

``before`` questions are answered on the image alone, before the explanation is shown; ``after``
ones once it is shown. Cases are listed in case-id order (random, so the order reveals nothing).

``DIR/assets/<case_id>/*.png``: 8-bit PNGs re-encoded from pixel data only (no metadata chunks):
``image.png`` (the source), ``frame_XXX.png`` (the series, as written by the inference workflow),
``saliency.png`` (when the case has a saliency map) and ``choice.png`` (the forced-choice image:
the real source or the generated frame farthest from the source's bin, balanced seeded pick; when
the frames are smaller than the source, e.g. ``resolution: model``, the real pick is resized to
the frame's size so that size gives nothing away). The app should show ``choice.png`` on its own:
beside ``image.png`` a real pick would be recognisable as the same picture.

``DIR/private/`` (mode 0700, files 0600; never served):

* ``readers.json``: ``{"readers": {reader_id: token}, "admin_token": token}``, tokens from
  ``secrets.token_urlsafe(24)`` (new ones at every build);
* ``key.csv``: one row per case (case-id order) with columns :data:`KEY_COLUMNS` then
  ``score_000``, ``score_001``, ... (the frame scores): ``source`` (the source path as in
  ``sources.csv``) and ``source_uid`` (its SOP Instance UID, empty for non-DICOM sources) are the
  only identifying columns; ``series_instance_uid`` is the UID of the generated series (to find it
  in the inference output), ``ground_truth`` 0/1/empty, ``forced_choice_truth`` real/generated/empty,
  ``forced_choice_step`` the step of the generated frame used (empty for a real pick).

Reader responses are added later by the reading app to ``DIR/responses.sqlite`` (see
:mod:`.store`). Case ids are ``"C"`` + 6 upper-case hex digits from a seeded RNG (never derived
from patient data). Assignment: every reader reads every case once; arms are counter-balanced with
a Latin-square rotation (:func:`assign_arms`); each reader's reading order is shuffled; all of it
(and the case ids and forced-choice picks) is a function of the configuration and ``seed``.

The folder is built in a temporary sibling folder and renamed into place at the end: a failed
build leaves nothing behind. An existing non-empty ``DIR`` is refused unless ``force``, and a
folder holding reader responses is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_exaggeration.reader_study.config import (
    Arm,
    Question,
    ReaderStudyError,
    StudyConfig,
    check_question_arms,
    default_arms,
    default_questions,
    load_config,
)
from monai_exaggeration.reader_study.deid import (
    burned_in_annotation,
    to_uint8,
    write_png,
)

__all__ = ["KEY_COLUMNS", "STUDY_FORMAT", "BuildResult", "assign_arms", "build_study", "make_case_ids"]

#: Version of the ``study.json`` layout.
STUDY_FORMAT = 1
#: Leading columns of ``private/key.csv`` (frame score columns ``score_000``... follow).
KEY_COLUMNS = [
    "case_id",
    "source",
    "source_uid",
    "series_instance_uid",
    "ground_truth",
    "forced_choice_truth",
    "forced_choice_step",
    "source_score",
    "num_frames",
]
# The columns of the inference's logs the study reads (defined by inference.logs FRAME_COLUMNS / SOURCE_COLUMNS,
# not imported here: the reader study does not load torch; tests/test_reader_study_build.py checks the names).
_FRAME_LOG_COLUMNS = ("source", "step", "target_bin", "score", "series_instance_uid", "output_file")
_SOURCE_LOG_COLUMNS = ("source", "source_sop_instance_uid", "source_score", "source_bin", "series_instance_uid")
_INFERENCE_HINT = "run `python -m monai.bundle run inference ... --output_dir DIR` and give that DIR as inference_dir"
_PRIVATE_FILE_MODE = 0o600


@dataclass
class _Case:
    """One case before it is written (everything resolved and checked)."""

    source: str
    source_path: Path
    source_uid: str
    series_uid: str
    source_score: float
    source_bin: int
    frame_files: list[Path]
    frame_bins: list[int]
    frame_steps: list[int]
    frame_scores: list[float]
    ground_truth: str = ""
    saliency: Path | None = None
    case_id: str = ""
    forced_choice_truth: str = ""
    forced_choice_step: int | None = None


@dataclass
class BuildResult:
    """What :func:`build_study` wrote."""

    out: Path
    title: str
    case_ids: list[str]
    readers: list[str]
    arms: list[Arm]
    questions: list[Question]
    assignments: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def describe(self) -> str:
        """The summary printed by the command line."""
        return "\n".join(
            [
                (
                    f"Reader study {self.title!r}: {len(self.case_ids)} case(s), {len(self.readers)} reader(s), "
                    f"arms {', '.join(a.id for a in self.arms)}, {len(self.questions)} question(s)."
                ),
                f"  public  : {self.out / 'study.json'}, {self.out / 'assets'}/",
                (
                    f"  private : {self.out / 'private'}/readers.json (reader links), key.csv (sources, ground truth)"
                    " -- never share these"
                ),
                f"  next    : python -m monai_exaggeration reader-study serve {self.out}",
            ]
        )


# ----------------------------------------------------------------------------------------- design


def make_case_ids(count: int, seed: int) -> list[str]:
    """``count`` distinct ids ``"C"`` + 6 upper-case hex digits, a function of ``seed`` only."""
    rng = random.Random(f"{seed}/case-ids")
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        case_id = f"C{rng.getrandbits(24):06X}"
        if case_id not in seen:
            seen.add(case_id)
            ids.append(case_id)
    return ids


def assign_arms(case_ids: list[str], readers: list[str], arms: list[str], seed: int) -> dict[str, list[dict[str, str]]]:
    """Latin-square assignment: ``{reader: [{"case_id", "arm"}, ...in reading order]}``.

    The cases are shuffled once (seeded) and the case at position ``i`` is read by reader ``j`` in
    arm ``arms[(i + j) % len(arms)]``. So every reader reads every case exactly once, each reader
    reads about ``len(cases) / len(arms)`` cases per arm (exactly when it divides), and each case
    is read in each arm equally often when the number of readers is a multiple of the number of
    arms. Each reader's reading order is then shuffled with its own seeded generator.
    """
    if not arms:
        raise ValueError("assign_arms needs at least one arm")
    order = sorted(case_ids)
    random.Random(f"{seed}/latin-square").shuffle(order)
    assignments: dict[str, list[dict[str, str]]] = {}
    for j, reader in enumerate(readers):
        items = [{"case_id": case_id, "arm": arms[(i + j) % len(arms)]} for i, case_id in enumerate(order)]
        random.Random(f"{seed}/reading-order/{reader}").shuffle(items)
        assignments[reader] = items
    return assignments


def _forced_choice_truths(count: int, seed: int) -> list[str]:
    """A balanced, seeded sequence of ``real``/``generated`` picks."""
    truths = (["real", "generated"] * math.ceil(count / 2))[:count]
    random.Random(f"{seed}/forced-choice").shuffle(truths)
    return truths


# ----------------------------------------------------------------------------------------- inputs


def _read_csv(path: Path, what: str, not_found: str, unreadable: str) -> pd.DataFrame:
    """``path`` as a table of strings, or ``ReaderStudyError`` saying what is wrong and what to do."""
    if not path.is_file():
        raise ReaderStudyError(f"{what}{path} not found -- {not_found}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ReaderStudyError(f"{what}{path} is not a readable CSV ({error}){unreadable}") from None


def _read_log(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    table = _read_csv(
        path,
        "",
        f"inference_dir must be an output folder of the inference workflow; {_INFERENCE_HINT}",
        " -- run the inference again",
    )
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ReaderStudyError(
            f"{path} lacks column(s) {', '.join(missing)} -- is it an inference log? {_INFERENCE_HINT}"
        )
    return table


def _read_cases(path: Path) -> pd.DataFrame:
    table = _read_csv(path, "cases file ", "'cases' must be a CSV with a 'source' column", "")
    if "source" not in table.columns:
        raise ReaderStudyError(
            f"cases file {path} has no 'source' column (it has {', '.join(table.columns) or 'none'}) -- "
            "add one with the source paths as in the inference output's sources.csv"
        )
    table["source"] = table["source"].str.strip()
    if table.empty or (table["source"] == "").any():
        raise ReaderStudyError(f"cases file {path} has no cases or an empty 'source' -- give one source per row")
    duplicates = sorted(set(table.loc[table["source"].duplicated(), "source"]))
    if duplicates:
        raise ReaderStudyError(f"cases file {path} lists {duplicates[0]} more than once -- each case once")
    if "ground_truth" in table.columns:
        truth = table["ground_truth"].str.strip().replace({"0.0": "0", "1.0": "1"})
        bad = sorted(set(truth[~truth.isin(["0", "1", ""])]))
        if bad:
            raise ReaderStudyError(f"cases file {path}: ground_truth must be 0, 1 or empty, got {bad[0]!r}")
        table["ground_truth"] = truth
    else:
        table["ground_truth"] = ""
    if "saliency" not in table.columns:
        table["saliency"] = ""
    return table


def _existing(path_text: str, *bases: Path) -> Path | None:
    path = Path(path_text).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for base in (*bases, Path.cwd()):
        if (base / path).is_file():
            return (base / path).resolve()
    return None


def _resolve_cases(config: StudyConfig) -> tuple[list[_Case], str | None]:
    """Match the cases to the inference output and check every file; return the cases and the finding."""
    inference_dir = config.inference_dir
    if not inference_dir.is_dir():
        raise ReaderStudyError(f"inference_dir {inference_dir} is not a folder -- {_INFERENCE_HINT}")
    frames = _read_log(inference_dir / "frames.csv", _FRAME_LOG_COLUMNS)
    sources = _read_log(inference_dir / "sources.csv", _SOURCE_LOG_COLUMNS)
    cases_table = _read_cases(config.cases)
    cases_dir = config.cases.parent
    by_source: dict[str, list[int]] = {}
    for index, text in enumerate(sources["source"]):
        by_source.setdefault(text, []).append(index)
        resolved = str(Path(text).expanduser().resolve()) if text else ""
        if resolved and resolved != text:
            by_source.setdefault(resolved, []).append(index)
    cases: list[_Case] = []
    unmatched: list[str] = []
    for row in cases_table.to_dict("records"):
        text = row["source"]
        hits = by_source.get(text)
        if hits is None:
            candidate = Path(text).expanduser()
            candidate = candidate if candidate.is_absolute() else cases_dir / candidate
            hits = by_source.get(str(candidate.resolve()))
        if hits is None:
            unmatched.append(text)
            continue
        if len(set(hits)) > 1:
            raise ReaderStudyError(
                f"source {text} appears {len(set(hits))} times in {inference_dir / 'sources.csv'} -- "
                "use an inference output with one series per source"
            )
        source_row = sources.iloc[hits[0]]
        cases.append(_case_from_logs(row, source_row, frames, config, cases_dir))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise ReaderStudyError(
            f"{len(unmatched)} source(s) of {config.cases} are not in {inference_dir / 'sources.csv'}: {shown} -- "
            "run the inference on them (or fix the paths: 'source' must match sources.csv) or remove them from the cases"
        )
    findings = sorted(set(sources["finding"])) if "finding" in sources.columns else []
    return cases, (findings[0] if len(findings) == 1 and findings[0] else None)


def _case_from_logs(
    row: dict, source_row: pd.Series, frames: pd.DataFrame, config: StudyConfig, cases_dir: Path
) -> _Case:
    inference_dir = config.inference_dir
    text = str(source_row["source"])
    series_uid = str(source_row["series_instance_uid"])
    rows = frames[frames["series_instance_uid"] == series_uid]
    if rows.empty:
        raise ReaderStudyError(
            f"{inference_dir / 'frames.csv'} lists no frames of source {text} -- run the inference again"
        )
    try:
        rows = rows.assign(_step=rows["step"].astype(int)).sort_values("_step")
        frame_bins = [int(v) for v in rows["target_bin"]]
        frame_scores = [float(v) for v in rows["score"]]
        source_score = float(source_row["source_score"])
        source_bin = int(source_row["source_bin"])
    except ValueError as error:
        raise ReaderStudyError(f"{inference_dir}: malformed frame or source log entry for {text} ({error})") from None
    frame_files = []
    for name in rows["output_file"]:
        found = _existing(name, inference_dir)
        if found is None:
            raise ReaderStudyError(
                f"frame file {name} (listed in {inference_dir / 'frames.csv'}) is missing -- "
                "the inference output is incomplete or was moved; run the inference again"
            )
        frame_files.append(found)
    source_path = _existing(text, inference_dir)
    if source_path is None:
        raise ReaderStudyError(
            f"source image {text} is missing -- the study shows the original image next to its series; "
            "restore the file (or run the inference again from where the sources are)"
        )
    saliency = None
    if str(row.get("saliency", "")).strip():
        saliency = _existing(str(row["saliency"]).strip(), cases_dir)
        if saliency is None:
            raise ReaderStudyError(
                f"saliency map {row['saliency']} of source {text} not found (relative paths start at {cases_dir})"
            )
        if saliency.suffix.lower() not in (".png", ".npy"):
            raise ReaderStudyError(f"saliency map {saliency} must be a .png image or a .npy array")
    if not config.allow_burned_in:
        for path in [source_path, *frame_files]:
            if burned_in_annotation(path) == "YES":
                raise ReaderStudyError(
                    f"{path} has BurnedInAnnotation YES (text, possibly patient data, in the pixels) -- "
                    "remove it from the cases, or set 'allow_burned_in: true' after checking its pixels carry no identifiers"
                )
    return _Case(
        source=text,
        source_path=source_path,
        source_uid=str(source_row["source_sop_instance_uid"]),
        series_uid=series_uid,
        source_score=source_score,
        source_bin=source_bin,
        frame_files=frame_files,
        frame_bins=frame_bins,
        frame_steps=[int(v) for v in rows["_step"]],
        frame_scores=frame_scores,
        ground_truth=str(row.get("ground_truth", "")),
        saliency=saliency,
    )


# ----------------------------------------------------------------------------------------- images


def _pixels(path: Path) -> np.ndarray:
    """Display pixels in [0, 1] of a DICOM/PNG file (``read_cxr`` conventions): pixel data only."""
    from monai_exaggeration.errors import CXRInputError
    from monai_exaggeration.transforms import read_cxr

    try:
        return read_cxr(path).pixels
    except CXRInputError as error:
        raise ReaderStudyError(str(error)) from None


def _resize(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from skimage.transform import resize

    if tuple(image.shape[:2]) == tuple(shape[:2]):
        return image
    return resize(image, tuple(shape[:2]) + image.shape[2:], anti_aliasing=True, preserve_range=True)


def _fit(image: np.ndarray, max_side: int | None) -> np.ndarray:
    rows, columns = image.shape[:2]
    if max_side is None or max(rows, columns) <= max_side:
        return image
    scale = max_side / max(rows, columns)
    return _resize(image, (max(1, round(rows * scale)), max(1, round(columns * scale))))


def _saliency_image(path: Path, image: np.ndarray) -> np.ndarray:
    """A saliency PNG re-encoded from its pixels, or an NPY map drawn over ``image`` (uint8 grey) as a heat map.

    An NPY map covers the whole image and is resized to it; a square map over a non-square image is
    taken to cover the padded square the classifier saw (the bundle's default ``aspect: pad``) and
    the image's part of it is cut out first.
    """
    if path.suffix.lower() == ".png":
        import imageio.v3 as iio

        try:
            data = np.asarray(iio.imread(path))
        except Exception as error:  # noqa: BLE001 - imageio raises plugin-specific errors
            raise ReaderStudyError(f"saliency map {path} is not a readable PNG ({type(error).__name__})") from None
        if data.dtype != np.uint8:
            data = to_uint8((data - data.min()) / max(float(data.max() - data.min()), 1e-12))
        if data.ndim == 3 and data.shape[-1] in (1, 2):
            data = data[..., 0]
        if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4))):
            raise ReaderStudyError(f"saliency map {path} has shape {data.shape}; give a 2-D grey or RGB(A) PNG")
        return data
    try:
        heat = np.load(path, allow_pickle=False).astype(np.float64)
    except (OSError, ValueError) as error:
        raise ReaderStudyError(f"saliency map {path} is not a readable .npy array ({error})") from None
    heat = np.squeeze(heat)
    if heat.ndim != 2 or not np.all(np.isfinite(heat)):
        raise ReaderStudyError(f"saliency map {path} must be a finite 2-D array, got shape {heat.shape}")
    rows, columns = image.shape
    if heat.shape[0] == heat.shape[1] and rows != columns:
        side = heat.shape[0]
        big = max(rows, columns)
        keep_rows, keep_columns = round(side * rows / big), round(side * columns / big)
        top, left = (side - keep_rows) // 2, (side - keep_columns) // 2
        heat = heat[top : top + max(keep_rows, 1), left : left + max(keep_columns, 1)]
    heat = _resize(heat, image.shape)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    from matplotlib import colormaps

    colour = colormaps["jet"](heat)[..., :3]
    grey = np.repeat((image.astype(np.float64) / 255.0)[..., None], 3, axis=-1)
    alpha = 0.5 * heat[..., None]
    return to_uint8((1 - alpha) * grey + alpha * colour)


def _farthest_frame(case: _Case) -> int:
    """Index of the generated frame whose target bin is farthest from the source's bin (latest on ties)."""
    distances = [abs(b - case.source_bin) for b in case.frame_bins]
    best = max(distances)
    return max(i for i, d in enumerate(distances) if d == best)


def _write_assets(case: _Case, folder: Path, max_side: int | None, forced_choice: bool) -> dict[str, Any]:
    """Write the case's PNGs into ``folder`` (``assets/<case_id>``); return its ``study.json`` entry."""
    folder.mkdir(parents=True)
    prefix = f"assets/{case.case_id}"
    source = _fit(_pixels(case.source_path), max_side)
    image = to_uint8(source)
    write_png(folder / "image.png", image)
    frames: list[np.ndarray] = []
    names = []
    for index, path in enumerate(case.frame_files):
        frame = _fit(_pixels(path), max_side)
        frames.append(frame)
        name = f"frame_{index:03d}.png"
        write_png(folder / name, to_uint8(frame))
        names.append(f"{prefix}/{name}")
    entry: dict[str, Any] = {
        "image": f"{prefix}/image.png",
        "frames": names,
        "scores": [round(score, 4) for score in case.frame_scores],
        "saliency": None,
        "forced_choice": None,
    }
    if case.saliency is not None:
        write_png(folder / "saliency.png", _saliency_image(case.saliency, image))
        entry["saliency"] = f"{prefix}/saliency.png"
    if forced_choice:
        far = _farthest_frame(case)
        if case.forced_choice_truth == "real":
            choice = _resize(source, frames[far].shape)
        else:
            choice = frames[far]
            case.forced_choice_step = case.frame_steps[far]
        write_png(folder / "choice.png", to_uint8(choice))
        entry["forced_choice"] = f"{prefix}/choice.png"
    return entry


# ----------------------------------------------------------------------------------------- writing


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReaderStudyError(f"output {out} exists and is not a folder -- choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if (out / "responses.sqlite").exists():
            raise ReaderStudyError(
                f"output folder {out} holds reader responses (responses.sqlite) -- a rebuild would discard them; "
                "choose another --out (or move the old study away yourself)"
            )
        if not force:
            raise ReaderStudyError(
                f"output folder {out} is not empty -- choose a new folder, or pass --force to replace it"
            )


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def _key_table(cases: list[_Case]) -> pd.DataFrame:
    width = max(len(case.frame_scores) for case in cases)
    rows = []
    for case in sorted(cases, key=lambda c: c.case_id):
        row: dict[str, Any] = {
            "case_id": case.case_id,
            "source": case.source,
            "source_uid": case.source_uid,
            "series_instance_uid": case.series_uid,
            "ground_truth": case.ground_truth,
            "forced_choice_truth": case.forced_choice_truth,
            "forced_choice_step": "" if case.forced_choice_step is None else case.forced_choice_step,
            "source_score": case.source_score,
            "num_frames": len(case.frame_scores),
        }
        for index in range(width):
            row[f"score_{index:03d}"] = case.frame_scores[index] if index < len(case.frame_scores) else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=KEY_COLUMNS + [f"score_{i:03d}" for i in range(width)])


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    _check_output(out, force)  # again: the folder may have changed during the build
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
    if out.is_dir() and any(out.iterdir()):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(trash / out.name, out)  # put the old study back
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)  # onto a missing or empty folder


def resolve_design(config: StudyConfig, cases: list[_Case], finding: str | None) -> tuple[list[Arm], list[Question]]:
    """The study's arms and questions: the configured ones or the defaults, checked against the cases."""
    with_saliency = all(case.saliency is not None for case in cases)
    arms = config.arms if config.arms is not None else default_arms(with_saliency)
    if config.questions is not None:
        questions = config.questions
    else:
        questions = default_questions(arms, config.finding or finding or "the finding")
    where = str(config.source or "study config")
    check_question_arms(questions, arms, where)
    for arm in arms:
        if "saliency" in arm.shows and not with_saliency:
            missing = [case.source for case in cases if case.saliency is None]
            raise ReaderStudyError(
                f"{where}: arm {arm.id!r} shows saliency maps but {len(missing)} case(s) have none (e.g. {missing[0]}) -- "
                "add a 'saliency' column to the cases CSV for every case, or remove the arm"
            )
    return arms, questions


def build_study(config: StudyConfig | str | os.PathLike, out: str | os.PathLike, force: bool = False) -> BuildResult:
    """Build the study folder ``out`` (see the module docstring); raise :class:`ReaderStudyError` on bad input."""
    if not isinstance(config, StudyConfig):
        config = load_config(config)
    out = Path(out).expanduser().absolute()
    _check_output(out, force)
    cases, finding = _resolve_cases(config)
    arms, questions = resolve_design(config, cases, finding)
    forced_choice = any(q.type == "forced_choice" for q in questions)
    for case, case_id in zip(cases, make_case_ids(len(cases), config.seed)):
        case.case_id = case_id
    if forced_choice:
        for case, truth in zip(sorted(cases, key=lambda c: c.case_id), _forced_choice_truths(len(cases), config.seed)):
            case.forced_choice_truth = truth
    case_ids = sorted(case.case_id for case in cases)
    assignments = assign_arms(case_ids, config.readers, [arm.id for arm in arms], config.seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        entries = {}
        for case in sorted(cases, key=lambda c: c.case_id):
            entries[case.case_id] = _write_assets(case, tmp / "assets" / case.case_id, config.max_side, forced_choice)
        study = {
            "format": STUDY_FORMAT,
            "title": config.title,
            "instructions": config.instructions,
            "arms": [arm.to_json() for arm in arms],
            "questions": [question.to_json() for question in questions],
            "cases": entries,
            "readers": list(config.readers),
            "assignments": assignments,
        }
        (tmp / "study.json").write_text(json.dumps(study, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        private = tmp / "private"
        private.mkdir(mode=0o700)
        os.chmod(private, 0o700)
        tokens = {
            "readers": {reader: secrets.token_urlsafe(24) for reader in config.readers},
            "admin_token": secrets.token_urlsafe(24),
        }
        _write_private(private / "readers.json", json.dumps(tokens, indent=2) + "\n")
        _write_private(private / "key.csv", _key_table(cases).to_csv(index=False))
        _move_into_place(tmp, out, force)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReaderStudyError(f"cannot write the study to {out}: {error}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out, config.title, case_ids, list(config.readers), arms, questions, assignments)
