"""The ``study.yaml`` of a reader study: loading, validation, defaults (see ``docs/reader_study.md``).

Keys (paths are relative to the folder of ``study.yaml``; unknown keys are an error, so typos are caught):

``title``, ``instructions``
    Shown to the readers (default "Reader study" and a short standard instruction).
``seed``
    Integer (default 0). Case ids, the forced-choice picks, the arm assignment and every reader's
    reading order are derived from it: the same configuration and seed give the same study.
``inference_dir``
    An output folder of the inference workflow (``frames.csv``, ``sources.csv``, ``dicom/``).
``cases``
    A CSV with a ``source`` column (as in ``sources.csv``), optional ``ground_truth`` (0, 1 or empty)
    and optional ``saliency`` (a PNG or NPY saliency map of the case; relative to the CSV's folder).
``readers``
    A list of reader ids (letters, digits, ``_`` and ``-``) or a count (ids ``R01``, ``R02``, ...).
``arms``
    A list of ``{id, label, shows}`` with ``shows`` a subset of ``image``, ``saliency``, ``series``,
    ``scores``. Default: ``image`` (image only), ``saliency`` (only when every case has a saliency
    map) and ``series`` (the exaggeration series with the classifier's scores).
``questions``
    A list of ``{id, type, prompt, phase, ...}`` (see :class:`Question`). Default: see
    :func:`default_questions`.
``finding``
    Name of the finding in the default prompts (default: the ``finding`` of ``sources.csv``).
``allow_burned_in``
    ``true`` to accept DICOM sources whose BurnedInAnnotation is ``YES`` (default ``false``: refused).
``max_side``
    Longest side in pixels of the study images (larger ones are downsized; default: as stored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ARM_SHOWS",
    "PHASES",
    "QUESTION_TYPES",
    "Arm",
    "Question",
    "ReaderStudyError",
    "StudyConfig",
    "default_arms",
    "default_questions",
    "load_config",
    "parse_arms",
    "parse_questions",
]

#: What an arm may show besides the questions.
ARM_SHOWS = ("image", "saliency", "series", "scores")
#: Question types the reading app knows.
QUESTION_TYPES = ("likert", "yes_no", "choice", "text", "forced_choice")
#: ``before``: answered on the image alone, before the explanation is shown; ``after``: once it is shown.
PHASES = ("before", "after")
#: Options of the default "what changed?" question.
WHAT_CHANGED_OPTIONS = ("heart size", "pleural effusion", "devices", "other")
#: Ids of arms, questions and readers (they appear in URLs and file names).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

_TOP_KEYS = (
    "title", "instructions", "seed", "inference_dir", "cases", "readers", "arms", "questions",
    "finding", "allow_burned_in", "max_side",
)
_ARM_KEYS = ("id", "label", "shows")
_QUESTION_KEYS = ("id", "type", "prompt", "phase", "min", "max", "labels", "options", "multiple", "arms")
_DEFAULT_INSTRUCTIONS = (
    "For each case, first answer the questions on the image alone. Then show the explanation "
    "(if your arm of the study has one for this case) and answer the remaining questions. "
    "Every answer is saved at once; you can stop and resume at any time."
)


class ReaderStudyError(ValueError):
    """A reader-study input is unusable; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Arm:
    """One arm of the study: what a reader sees for a case read in this arm."""

    id: str
    label: str
    shows: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "shows": list(self.shows)}


@dataclass(frozen=True)
class Question:
    """One question. ``likert``: integer ``min``..``max`` (``labels``: one per value, may be empty
    strings); ``choice``: one of ``options`` (a non-empty list of them with ``multiple``); ``yes_no``;
    ``text``; ``forced_choice``: is the case's forced-choice image ``real`` or ``generated``.
    ``arms``: the arms it is asked in (None: all)."""

    id: str
    type: str
    prompt: str
    phase: str = "after"
    min: int | None = None
    max: int | None = None
    labels: tuple[str, ...] | None = None
    options: tuple[str, ...] | None = None
    multiple: bool = False
    arms: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The question as ``study.json`` holds it (only the keys its type uses)."""
        data: dict[str, Any] = {"id": self.id, "type": self.type, "prompt": self.prompt, "phase": self.phase}
        if self.type == "likert":
            data.update(min=self.min, max=self.max)
            if self.labels is not None:
                data["labels"] = list(self.labels)
        if self.type == "choice":
            data.update(options=list(self.options or ()), multiple=self.multiple)
        if self.arms is not None:
            data["arms"] = list(self.arms)
        return data

    def asked_in(self, arm: str) -> bool:
        return self.arms is None or arm in self.arms


@dataclass
class StudyConfig:
    """A validated ``study.yaml``. ``arms``/``questions`` None: the defaults, resolved by the builder."""

    title: str
    instructions: str
    seed: int
    inference_dir: Path
    cases: Path
    readers: list[str]
    arms: list[Arm] | None = None
    questions: list[Question] | None = None
    finding: str | None = None
    allow_burned_in: bool = False
    max_side: int | None = None
    source: Path | None = field(default=None, compare=False)  # the study.yaml it came from


# ----------------------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate ``study.yaml``; raise :class:`ReaderStudyError` naming the problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReaderStudyError(f"study config {path} not found -- give the path of your study.yaml with --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ReaderStudyError(f"{path} is not valid YAML ({problem}{where}) -- fix the syntax there") from None
    except UnicodeDecodeError:
        raise ReaderStudyError(f"{path} is not a UTF-8 text file -- give a YAML study configuration") from None
    if not isinstance(data, dict):
        raise ReaderStudyError(f"{path} must be a YAML mapping of keys ({', '.join(_TOP_KEYS)})")
    return parse_config(data, base=path.parent, source=path)


def parse_config(data: dict[str, Any], base: Path, source: Path | None = None) -> StudyConfig:
    """Validate a configuration mapping; relative paths are taken from ``base``."""
    where = str(source) if source else "study config"
    _check_keys(data, _TOP_KEYS, where)
    for key in ("inference_dir", "cases", "readers"):
        if data.get(key) in (None, ""):
            raise ReaderStudyError(f"{where}: '{key}' is missing -- see docs/reader_study.md for an example")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReaderStudyError(f"{where}: 'seed' must be an integer, got {seed!r}")
    max_side = data.get("max_side")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16):
        raise ReaderStudyError(f"{where}: 'max_side' must be an integer of at least 16 pixels, got {max_side!r}")
    allow = data.get("allow_burned_in", False)
    if not isinstance(allow, bool):
        raise ReaderStudyError(f"{where}: 'allow_burned_in' must be true or false, got {allow!r}")
    arms = parse_arms(data["arms"], where) if data.get("arms") is not None else None
    questions = parse_questions(data["questions"], where) if data.get("questions") is not None else None
    if arms is not None and questions is not None:
        check_question_arms(questions, arms, where)
    finding = data.get("finding")
    if finding is not None and (not isinstance(finding, str) or not finding.strip()):
        raise ReaderStudyError(f"{where}: 'finding' must be a non-empty text, got {finding!r}")
    return StudyConfig(
        title=_text(data.get("title", "Reader study"), "title", where),
        instructions=_text(data.get("instructions", _DEFAULT_INSTRUCTIONS), "instructions", where),
        seed=int(seed),
        inference_dir=_path(data["inference_dir"], base, "inference_dir", where),
        cases=_path(data["cases"], base, "cases", where),
        readers=parse_readers(data["readers"], where),
        arms=arms,
        questions=questions,
        finding=finding.strip() if isinstance(finding, str) else None,
        allow_burned_in=allow,
        max_side=max_side,
        source=source,
    )


def parse_readers(value: Any, where: str = "study config") -> list[str]:
    """A list of reader ids, or a count ``n`` (ids ``R01`` ... ``Rnn``)."""
    if isinstance(value, bool):
        raise ReaderStudyError(f"{where}: 'readers' must be a list of reader ids or a number of readers")
    if isinstance(value, int):
        if value < 1:
            raise ReaderStudyError(f"{where}: 'readers' must be at least 1, got {value}")
        width = max(2, len(str(value)))
        return [f"R{number:0{width}d}" for number in range(1, value + 1)]
    if not isinstance(value, list) or not value:
        raise ReaderStudyError(f"{where}: 'readers' must be a non-empty list of reader ids or a number of readers")
    readers = [str(reader) for reader in value]
    _check_ids(readers, "reader", where)
    return readers


def parse_arms(value: Any, where: str = "study config") -> list[Arm]:
    """Validate the ``arms`` list."""
    if not isinstance(value, list) or not value:
        raise ReaderStudyError(f"{where}: 'arms' must be a non-empty list of {{id, label, shows}}")
    arms = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ReaderStudyError(f"{where}: arm {index + 1} must be a mapping with id, label and shows")
        _check_keys(item, _ARM_KEYS, f"{where}: arm {item.get('id', index + 1)!r}")
        arm_id = str(item.get("id", ""))
        shows = item.get("shows")
        if isinstance(shows, str):
            shows = [shows]
        if not isinstance(shows, list) or not shows:
            raise ReaderStudyError(
                f"{where}: arm {arm_id!r} needs 'shows', a non-empty list from {', '.join(ARM_SHOWS)}"
            )
        unknown = [str(s) for s in shows if s not in ARM_SHOWS]
        if unknown:
            raise ReaderStudyError(
                f"{where}: arm {arm_id!r} shows unknown {', '.join(map(repr, unknown))} -- "
                f"an arm shows a subset of {', '.join(ARM_SHOWS)}"
            )
        if "scores" in shows and "series" not in shows:
            raise ReaderStudyError(f"{where}: arm {arm_id!r} shows 'scores' without 'series' -- scores belong to the series frames")
        arms.append(Arm(arm_id, _text(item.get("label", arm_id), "label", where), tuple(dict.fromkeys(shows))))
    _check_ids([arm.id for arm in arms], "arm", where)
    return arms


def parse_questions(value: Any, where: str = "study config") -> list[Question]:
    """Validate the ``questions`` list."""
    if not isinstance(value, list) or not value:
        raise ReaderStudyError(f"{where}: 'questions' must be a non-empty list of {{id, type, prompt, ...}}")
    questions = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ReaderStudyError(f"{where}: question {index + 1} must be a mapping with id, type and prompt")
        qid = str(item.get("id", ""))
        label = f"{where}: question {qid or index + 1!r}"
        _check_keys(item, _QUESTION_KEYS, label)
        kind = item.get("type")
        if kind not in QUESTION_TYPES:
            raise ReaderStudyError(f"{label} has unknown type {kind!r} -- use one of {', '.join(QUESTION_TYPES)}")
        phase = item.get("phase", "after")
        if phase not in PHASES:
            raise ReaderStudyError(f"{label} has phase {phase!r} -- use 'before' (image alone) or 'after' (with the explanation)")
        prompt = _text(item.get("prompt", ""), "prompt", label)
        if not prompt.strip():
            raise ReaderStudyError(f"{label} needs a 'prompt' (the text the reader sees)")
        kwargs: dict[str, Any] = {}
        if kind == "likert":
            low, high = item.get("min", 1), item.get("max", 5)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in (low, high)) or high <= low or high - low > 20:
                raise ReaderStudyError(f"{label}: a Likert scale needs integers min < max (at most 21 points), got {low!r}..{high!r}")
            labels = item.get("labels")
            if labels is not None:
                if not isinstance(labels, list) or len(labels) != high - low + 1:
                    raise ReaderStudyError(
                        f"{label}: 'labels' must list one text per scale point ({high - low + 1}; empty strings allowed)"
                    )
                labels = tuple("" if v is None else str(v) for v in labels)
            kwargs.update(min=low, max=high, labels=labels)
        elif any(key in item for key in ("min", "max", "labels")):
            raise ReaderStudyError(f"{label}: min/max/labels belong to Likert questions, not to type {kind!r}")
        if kind == "choice":
            options = item.get("options")
            if not isinstance(options, list) or not options or len({str(o) for o in options}) != len(options):
                raise ReaderStudyError(f"{label}: a choice question needs 'options', a list of distinct texts")
            multiple = item.get("multiple", False)
            if not isinstance(multiple, bool):
                raise ReaderStudyError(f"{label}: 'multiple' must be true or false")
            kwargs.update(options=tuple(str(o) for o in options), multiple=multiple)
        elif "options" in item or "multiple" in item:
            raise ReaderStudyError(f"{label}: options/multiple belong to choice questions, not to type {kind!r}")
        arms = item.get("arms")
        if arms is not None:
            if isinstance(arms, str):
                arms = [arms]
            if not isinstance(arms, list) or not arms:
                raise ReaderStudyError(f"{label}: 'arms' must be a non-empty list of arm ids (or left out: all arms)")
            kwargs["arms"] = tuple(str(a) for a in arms)
        questions.append(Question(id=qid, type=kind, prompt=prompt, phase=phase, **kwargs))
    _check_ids([q.id for q in questions], "question", where)
    return questions


def check_question_arms(questions: list[Question], arms: list[Arm], where: str = "study config") -> None:
    """Every arm a question names must exist, and every arm must be asked something."""
    known = {arm.id for arm in arms}
    for question in questions:
        unknown = [a for a in question.arms or () if a not in known]
        if unknown:
            raise ReaderStudyError(
                f"{where}: question {question.id!r} names unknown arm(s) {', '.join(map(repr, unknown))} "
                f"-- the arms are {', '.join(sorted(known))}"
            )
    for arm in arms:
        if not any(q.asked_in(arm.id) for q in questions):
            raise ReaderStudyError(f"{where}: no question is asked in arm {arm.id!r} -- add one or remove the arm")


# ----------------------------------------------------------------------------------------- defaults


def default_arms(with_saliency: bool) -> list[Arm]:
    """Image only; saliency map (only when every case has one); exaggeration series with scores."""
    arms = [Arm("image", "Image only", ("image",))]
    if with_saliency:
        arms.append(Arm("saliency", "Saliency map", ("image", "saliency")))
    arms.append(Arm("series", "Exaggeration series", ("image", "series", "scores")))
    return arms


def default_questions(arms: list[Arm], finding: str = "the finding", forced_choice: bool = True) -> list[Question]:
    """The standard questions (ids are what the analysis looks for: ``confidence_before``/``_after`` pair up).

    Understandability and helpfulness are asked in the arms that show an explanation (saliency or
    series), "what changed?" in the arms that show the series; the rest in every arm.
    """
    explained = tuple(a.id for a in arms if {"saliency", "series"} & set(a.shows)) or None
    with_series = tuple(a.id for a in arms if "series" in a.shows) or None
    scale = ("definitely absent", "probably absent", "unsure", "probably present", "definitely present")
    questions = [
        Question("confidence_before", "likert", f"How confident are you that {finding} is present?", "before", 1, 5, scale),
    ]
    if forced_choice:
        questions.append(
            Question("real_or_generated", "forced_choice",
                     "Is the image shown for this question a real radiograph or a generated one?", "before")
        )
    questions.append(
        Question("confidence_after", "likert",
                 f"Now that you have seen the explanation: how confident are you that {finding} is present?",
                 "after", 1, 5, scale)
    )
    if explained:
        questions += [
            Question("understandability", "likert", "How easy to understand is the explanation?", "after", 1, 5,
                     ("very hard", "hard", "neutral", "easy", "very easy"), arms=explained),
            Question("helpful", "yes_no", "Did the explanation help you in your decision?", "after", arms=explained),
        ]
    if with_series:
        questions.append(
            Question("what_changed", "choice", "What changed along the series?", "after",
                     options=WHAT_CHANGED_OPTIONS, multiple=True, arms=with_series)
        )
    questions.append(Question("comment", "text", "Comments (optional)", "after"))
    return questions


# ----------------------------------------------------------------------------------------- helpers


def _check_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [str(key) for key in data if key not in allowed]
    if unknown:
        raise ReaderStudyError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} -- allowed: {', '.join(allowed)}")


def _check_ids(ids: list[str], what: str, where: str) -> None:
    for value in ids:
        if not ID_PATTERN.match(value):
            raise ReaderStudyError(
                f"{where}: {what} id {value!r} is not valid -- use 1 to 40 letters, digits, '_' or '-'"
            )
    duplicates = sorted({value for value in ids if ids.count(value) > 1})
    if duplicates:
        raise ReaderStudyError(f"{where}: duplicate {what} id(s) {', '.join(duplicates)} -- ids must be unique")


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise ReaderStudyError(f"{where}: '{key}' must be a text, got {value!r}")
    return value


def _path(value: Any, base: Path, key: str, where: str) -> Path:
    if not isinstance(value, str):
        raise ReaderStudyError(f"{where}: '{key}' must be a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)
