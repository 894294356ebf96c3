"""A reader study's folder as the reading app sees it: definition, tokens, assignments, answers.

:class:`Study` reads ``study.json`` and ``private/readers.json`` (written by ``reader-study build``)
and opens the response store; it says who a token belongs to, which arm a reader reads a case in,
what that arm may see, and whether the forced-choice image must be judged first.
:func:`validate_answer` puts an answer in canonical form or says what a valid one is.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from monai_exaggeration.reader_study.store import ResponseStore

__all__ = ["MAX_TEXT", "Identity", "Study", "StudyError", "validate_answer"]

#: Longest free-text answer in characters.
MAX_TEXT = 4000


class StudyError(ValueError):
    """The study folder cannot be served (missing or malformed files)."""


@dataclass(frozen=True)
class Identity:
    """Who is asking: a reader (``reader_id``) or the administrator (``reader_id`` None)."""

    reader_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.reader_id is None


class Study:
    """A study folder: definition, tokens, assignments and the response store."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.definition = json.loads((self.folder / "study.json").read_text())
            secrets = json.loads((self.folder / "private" / "readers.json").read_text())
        except FileNotFoundError as error:
            raise StudyError(
                f"{self.folder} is not a study folder ({error.filename} is missing): build one with "
                "`python -m monai_exaggeration reader-study build`"
            ) from None
        except json.JSONDecodeError as error:
            raise StudyError(f"{self.folder}: a study file is not valid JSON ({error})") from None
        self.questions = {q["id"]: q for q in self.definition.get("questions", [])}
        self.arms = {a["id"]: a for a in self.definition.get("arms", [])}
        self.cases = self.definition.get("cases", {})
        self.assignments = {
            reader: {item["case_id"]: item["arm"] for item in items}
            for reader, items in self.definition.get("assignments", {}).items()
        }
        self._tokens = [(str(token), reader) for reader, token in secrets.get("readers", {}).items()]
        admin = secrets.get("admin_token")
        if admin:
            self._tokens.append((str(admin), None))
        if not self._tokens:
            raise StudyError(f"{self.folder / 'private' / 'readers.json'} holds no reader token")
        self.store = ResponseStore(self.folder / "responses.sqlite")

    def identify(self, token: str | None) -> Identity | None:
        """The identity of ``token``, comparing against every known token in constant time."""
        if not token:
            return None
        found: Identity | None = None
        supplied = token.encode()
        for known, reader in self._tokens:  # no early exit: timing does not reveal which token matched
            if hmac.compare_digest(known.encode(), supplied):
                found = Identity(reader)
        return found

    def questions_for(self, arm: str) -> list[dict]:
        """The questions asked in ``arm``, in study order."""
        return [q for q in self.questions.values() if not q.get("arms") or arm in q["arms"]]

    def arm_of(self, identity: Identity, case_id: str) -> str:
        """The arm in which ``identity`` reads ``case_id``; 404 if the case does not exist, 403 if not theirs."""
        if case_id not in self.cases:
            raise HTTPException(404, f"unknown case {case_id!r}")
        if identity.is_admin:
            return ""
        arm = self.assignments.get(identity.reader_id, {}).get(case_id)
        if arm is None:
            raise HTTPException(403, f"case {case_id!r} is not assigned to you")
        return arm

    @property
    def tokens(self) -> list[str]:
        """Every reader and administrator token (for log redaction)."""
        return [token for token, _ in self._tokens]

    @staticmethod
    def is_before(question: dict) -> bool:
        """Whether ``question`` is answered on the image alone, before the explanation (phase or ``*_before`` id)."""
        return question.get("phase") == "before" or str(question["id"]).endswith("_before")

    def explanation_urls(self, case_id: str, arm: str) -> set[str]:
        """URLs of the case's explanation images (frames, saliency map) shown in ``arm``."""
        visible = self.visible_assets(case_id, arm)
        return {*visible.get("frames", []), *([visible["saliency"]] if "saliency" in visible else [])}

    def choice_questions(self, arm: str) -> list[dict]:
        """The real-versus-generated (forced choice) questions asked in ``arm``."""
        return [q for q in self.questions_for(arm) if q["type"] == "forced_choice"]

    def choice_pending(self, identity: Identity, case_id: str, arm: str) -> bool:
        """Whether ``identity`` must still judge the case's forced-choice image before seeing its other images.

        The forced-choice image may be the case's own source: seen after ``image.png`` it would be
        recognised, so the reading app shows it first and on its own, and serves nothing else of
        the case until every forced-choice question of the arm is answered.
        """
        if identity.is_admin or not self.cases[case_id].get("forced_choice"):
            return False
        asked = {q["id"] for q in self.choice_questions(arm)}
        if not asked:
            return False
        answered = {row["question_id"] for row in self.store.answers(identity.reader_id, case_id)}
        return not asked <= answered

    def visible_assets(self, case_id: str, arm: str) -> dict[str, Any]:
        """The asset URLs (and scores) a reader of ``arm`` may see for ``case_id``; the administrator sees all."""
        case = self.cases[case_id]
        shows = set(self.arms.get(arm, {}).get("shows", [])) if arm else {"image", "series", "scores", "saliency"}
        url = lambda path: "/" + str(path)  # noqa: E731 - asset paths are relative to the study folder
        visible: dict[str, Any] = {"image": url(case["image"])}
        if "series" in shows and case.get("frames"):
            visible["frames"] = [url(frame) for frame in case["frames"]]
            if "scores" in shows and case.get("scores") is not None:
                visible["scores"] = case["scores"]
        if "saliency" in shows and case.get("saliency"):
            visible["saliency"] = url(case["saliency"])
        asks_choice = any(q["type"] == "forced_choice" for q in self.questions_for(arm)) if arm else True
        if asks_choice and case.get("forced_choice"):
            visible["forced_choice"] = url(case["forced_choice"])
        return visible


def validate_answer(question: dict, value: Any) -> Any:
    """The answer in canonical form, or ``ValueError`` saying what a valid answer is."""
    kind = question["type"]
    if kind == "likert":
        low, high = int(question.get("min", 1)), int(question.get("max", 5))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"question {question['id']!r} takes an integer from {low} to {high}")
        return value
    if kind == "yes_no":
        if value in (True, "yes"):
            return "yes"
        if value in (False, "no"):
            return "no"
        raise ValueError(f"question {question['id']!r} takes yes or no")
    if kind == "forced_choice":
        if value not in ("real", "generated"):
            raise ValueError(f"question {question['id']!r} takes 'real' or 'generated'")
        return value
    if kind == "choice":
        options = list(question.get("options", []))
        if question.get("multiple"):
            if (
                not isinstance(value, list)
                or not value
                or any(item not in options for item in value)
                or len(set(value)) != len(value)
            ):
                raise ValueError(
                    f"question {question['id']!r} takes a non-empty list of distinct options from {options}"
                )
            return [option for option in options if option in value]
        if value not in options:
            raise ValueError(f"question {question['id']!r} takes one of {options}")
        return value
    if kind == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ValueError(f"question {question['id']!r} takes text of at most {MAX_TEXT} characters")
        return value
    raise ValueError(f"question {question['id']!r} has an unknown type {kind!r}")
