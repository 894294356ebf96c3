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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from monai_exaggeration.config_models import (
    LIST,
    Flag,
    Problem,
    StrictModel,
    Text,
    UnknownKeys,
    Whole,
    at_least,
    first_problem,
)
from monai_exaggeration.findings import CARDIOMEGALY

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
    "parse_config",
]

#: What an arm may show besides the questions.
ARM_SHOWS = ("image", "saliency", "series", "scores")
#: Question types the reading app knows.
QUESTION_TYPES = ("likert", "yes_no", "choice", "text", "forced_choice")
#: ``before``: answered on the image alone, before the explanation is shown; ``after``: once it is shown.
PHASES = ("before", "after")
#: Options of the default "what changed?" question.
WHAT_CHANGED_OPTIONS = (CARDIOMEGALY.reader_change, "pleural effusion", "devices", "other")
#: Ids of arms, questions and readers (they appear in URLs and file names).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

_TOP_KEYS = (
    "title",
    "instructions",
    "seed",
    "inference_dir",
    "cases",
    "readers",
    "arms",
    "questions",
    "finding",
    "allow_burned_in",
    "max_side",
)
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


# ----------------------------------------------------------------------------------------- the file's models


def _ids(ids: list[str], what: str) -> None:
    """Ids appear in URLs and file names: a strict pattern, and unique."""
    for value in ids:
        if not ID_PATTERN.match(value):
            raise Problem(f"{what} id {value!r} is not valid -- use 1 to 40 letters, digits, '_' or '-'", place="")
    duplicates = sorted({value for value in ids if ids.count(value) > 1})
    if duplicates:
        raise Problem(f"duplicate {what} id(s) {', '.join(duplicates)} -- ids must be unique", place="")


def _shows(value: Any) -> tuple[str, ...]:
    shows = [value] if isinstance(value, str) else value
    if not isinstance(shows, list) or not shows:
        raise Problem(f"is needed, a non-empty list from {', '.join(ARM_SHOWS)}")
    unknown = [str(item) for item in shows if item not in ARM_SHOWS]
    if unknown:
        raise Problem(
            f"shows unknown {', '.join(map(repr, unknown))} -- an arm shows a subset of {', '.join(ARM_SHOWS)}",
            place="",
        )
    if "scores" in shows and "series" not in shows:
        raise Problem("shows 'scores' without 'series' -- scores belong to the series frames", place="")
    return tuple(dict.fromkeys(shows))


def _one_or_more(value: Any) -> list:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value:
        raise Problem("must be a non-empty list of arm ids (or left out: all arms)")
    return value


class ArmEntry(StrictModel):
    id: Text = ""
    label: Text | None = None
    shows: Annotated[tuple[str, ...], BeforeValidator(_shows)] = Field(default=None, validate_default=True)

    def arm(self) -> Arm:
        return Arm(self.id, self.id if self.label is None else self.label, self.shows)


def _question_type(value: Any) -> str:
    if value not in QUESTION_TYPES:
        raise Problem(f"unknown type {value!r} -- use one of {', '.join(QUESTION_TYPES)}", place="")
    return value


def _phase(value: Any) -> str:
    if value not in PHASES:
        raise Problem(
            f"phase {value!r} is unknown -- use 'before' (image alone) or 'after' (with the explanation)", place=""
        )
    return value


class QuestionEntry(StrictModel):
    id: Text = ""
    type: Annotated[str, BeforeValidator(_question_type)] = Field(default=None, validate_default=True)
    phase: Annotated[str, BeforeValidator(_phase)] = "after"
    prompt: Text = ""
    min: Whole = 1
    max: Whole = 5
    labels: Annotated[list[Any], LIST] | None = None
    options: Annotated[list[Any], LIST] | None = None
    multiple: Flag = False
    arms: Annotated[list[Text], BeforeValidator(_one_or_more)] | None = None

    @model_validator(mode="after")
    def _keys_of_its_type(self) -> QuestionEntry:
        given, kind = self.model_fields_set, self.type
        if not self.prompt.strip():
            raise Problem("a 'prompt' is needed (the text the reader sees)", place="")
        if kind == "likert":
            if self.max <= self.min or self.max - self.min > 20:
                raise Problem(
                    f"a Likert scale needs integers min < max (at most 21 points), got {self.min}..{self.max}", place=""
                )
            if self.labels is not None and len(self.labels) != self.max - self.min + 1:
                raise Problem(
                    f"'labels' must list one text per scale point ({self.max - self.min + 1}; empty strings allowed)",
                    place="",
                )
        elif given & {"min", "max", "labels"}:
            raise Problem(f"min/max/labels belong to Likert questions, not to type {kind!r}", place="")
        if kind == "choice":
            if not self.options or len({str(option) for option in self.options}) != len(self.options):
                raise Problem("a choice question needs 'options', a list of distinct texts", place="")
        elif given & {"options", "multiple"}:
            raise Problem(f"options/multiple belong to choice questions, not to type {kind!r}", place="")
        return self

    def question(self) -> Question:
        extra: dict[str, Any] = {}
        if self.type == "likert":
            labels = None if self.labels is None else tuple("" if v is None else str(v) for v in self.labels)
            extra.update(min=self.min, max=self.max, labels=labels)
        if self.type == "choice":
            extra.update(options=tuple(str(option) for option in self.options), multiple=self.multiple)
        if self.arms is not None:
            extra["arms"] = tuple(self.arms)
        return Question(id=self.id, type=self.type, prompt=self.prompt, phase=self.phase, **extra)


def _required(value: Any) -> str:
    if value in (None, ""):
        raise Problem("is missing -- see docs/reader_study.md for an example")
    if not isinstance(value, str):
        raise Problem(f"must be a path, got {value!r}")
    return value


def _readers(value: Any) -> list[str]:
    """A list of reader ids, or a count ``n`` (ids ``R01`` ... ``Rnn``)."""
    if value in (None, ""):
        raise Problem("is missing -- see docs/reader_study.md for an example")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise Problem(f"must be at least 1, got {value}")
        width = max(2, len(str(value)))
        return [f"R{number:0{width}d}" for number in range(1, value + 1)]
    if not isinstance(value, list) or not value:
        raise Problem("must be a non-empty list of reader ids or a number of readers")
    readers = [str(reader) for reader in value]
    _ids(readers, "reader")
    return readers


def _finding(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise Problem(f"must be a non-empty text, got {value!r}")
    return value.strip() if isinstance(value, str) else None


def _non_empty(what: str) -> Callable[[list], list]:
    def check(items: list) -> list:
        if not items:
            raise Problem(f"must be a non-empty list of {what}")
        return items

    return check


class StudyFile(StrictModel):
    """The whole ``study.yaml`` (see the module docstring), keys in the order of :data:`_TOP_KEYS`."""

    title: Text = "Reader study"
    instructions: Text = _DEFAULT_INSTRUCTIONS
    seed: Whole = 0
    inference_dir: Annotated[str, BeforeValidator(_required)] = Field(default=None, validate_default=True)
    cases: Annotated[str, BeforeValidator(_required)] = Field(default=None, validate_default=True)
    readers: Annotated[list[str], BeforeValidator(_readers)] = Field(default=None, validate_default=True)
    arms: Annotated[list[ArmEntry], LIST, AfterValidator(_non_empty("{id, label, shows}"))] | None = None
    questions: Annotated[list[QuestionEntry], LIST, AfterValidator(_non_empty("{id, type, prompt, ...}"))] | None = None
    finding: Annotated[str | None, BeforeValidator(_finding)] = None
    allow_burned_in: Flag = False
    max_side: Annotated[Whole, at_least(16)] | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> StudyFile:
        if self.arms is not None:
            _ids([arm.id for arm in self.arms], "arm")
        if self.questions is not None:
            _ids([question.id for question in self.questions], "question")
        return self


def _item_label(data: dict, key: str, index: int) -> str:
    """``arm 'series'``, ``question 'helpful'`` (the position when the item has no id)."""
    item = data[key][index]
    what = key[:-1]
    if not isinstance(item, dict):
        return f"{what} {index + 1}"
    return f"{what} {str(item.get('id', '')) or index + 1!r}"


def _message(error: ValidationError, data: dict, where: str) -> str:
    """The first problem of ``error`` as one line: the file, the arm or question, the key, what is wrong."""
    place, problem = first_problem(error)
    parts = [where]
    if len(place) >= 2 and place[0] in ("arms", "questions") and isinstance(place[1], int):
        parts.append(_item_label(data, str(place[0]), place[1]))
        place = place[2:]
    if isinstance(problem, UnknownKeys):
        text = f"unknown key(s) {', '.join(map(repr, problem.unknown))} -- allowed: {', '.join(problem.known)}"
    elif problem.place is None and place:
        text = f"'{place[0]}' {problem.text}"
    else:
        text = problem.text
    return ": ".join([*parts, text])


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
    try:
        study = StudyFile.model_validate(data)
    except ValidationError as error:
        raise ReaderStudyError(_message(error, data, where)) from None
    arms = None if study.arms is None else [entry.arm() for entry in study.arms]
    questions = None if study.questions is None else [entry.question() for entry in study.questions]
    if arms is not None and questions is not None:
        check_question_arms(questions, arms, where)
    return StudyConfig(
        title=study.title,
        instructions=study.instructions,
        seed=study.seed,
        inference_dir=_path(study.inference_dir, base),
        cases=_path(study.cases, base),
        readers=study.readers,
        arms=arms,
        questions=questions,
        finding=study.finding,
        allow_burned_in=study.allow_burned_in,
        max_side=study.max_side,
        source=source,
    )


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
        Question(
            "confidence_before", "likert", f"How confident are you that {finding} is present?", "before", 1, 5, scale
        ),
    ]
    if forced_choice:
        questions.append(
            Question(
                "real_or_generated",
                "forced_choice",
                "Is the image shown for this question a real radiograph or a generated one?",
                "before",
            )
        )
    questions.append(
        Question(
            "confidence_after",
            "likert",
            f"Now that you have seen the explanation: how confident are you that {finding} is present?",
            "after",
            1,
            5,
            scale,
        )
    )
    if explained:
        questions += [
            Question(
                "understandability",
                "likert",
                "How easy to understand is the explanation?",
                "after",
                1,
                5,
                ("very hard", "hard", "neutral", "easy", "very easy"),
                arms=explained,
            ),
            Question("helpful", "yes_no", "Did the explanation help you in your decision?", "after", arms=explained),
        ]
    if with_series:
        questions.append(
            Question(
                "what_changed",
                "choice",
                "What changed along the series?",
                "after",
                options=WHAT_CHANGED_OPTIONS,
                multiple=True,
                arms=with_series,
            )
        )
    questions.append(Question("comment", "text", "Comments (optional)", "after"))
    return questions


# ----------------------------------------------------------------------------------------- helpers


def _path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)
