"""The web reading app of a reader study: ``python -m monai_exaggeration reader-study serve DIR``.

A FastAPI application over a study folder made by ``reader-study build`` (``study.json``,
``assets/``, ``private/readers.json``); answers go to ``DIR/responses.sqlite`` through
:class:`~monai_exaggeration.reader_study.store.ResponseStore`, one row per answer, stored the
moment it is given, so a closed browser resumes where the reader stopped.

Access: each reader opens a personal link ``/r/<token>`` that sets an HTTP-only cookie (API
clients may send ``Authorization: Bearer <token>`` instead). A reader sees only the cases
assigned to them, only the assets their arm shows, and only their own answers; the administrator
token sees the progress of every reader. Tokens are compared in constant time. Missing token:
401; unknown token or a reader asking for what is not theirs: 403; unknown case or question:
404; invalid answer: 422; oversized body: 413. The forced-choice (real versus generated) image
comes first and alone: the case's other images are refused (403) until it is judged, and that
judgement cannot be changed afterwards (409). Every asset (page, script, style, image) is served
locally: the app works offline.
"""

from __future__ import annotations

import hmac
import json
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from monai_exaggeration.reader_study.store import ResponseStore

__all__ = ["COOKIE", "MAX_BODY_BYTES", "Identity", "Study", "StudyError", "create_app", "personal_links", "serve", "validate_answer"]

#: Name of the session cookie that holds a reader's token.
COOKIE = "exaggeration_reader"
#: Largest request body accepted (an answer is a few hundred bytes; free text is capped below).
MAX_BODY_BYTES = 16 * 1024
#: Longest free-text answer in characters.
MAX_TEXT = 4000
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.png$")
_STATIC = resources.files("monai_exaggeration.reader_study") / "static"


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
            raise StudyError(f"{self.folder} is not a study folder ({error.filename} is missing): build one with "
                             "`python -m monai_exaggeration reader-study build`") from None
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
            if not isinstance(value, list) or not value or any(item not in options for item in value) or len(set(value)) != len(value):
                raise ValueError(f"question {question['id']!r} takes a non-empty list of distinct options from {options}")
            return [option for option in options if option in value]
        if value not in options:
            raise ValueError(f"question {question['id']!r} takes one of {options}")
        return value
    if kind == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ValueError(f"question {question['id']!r} takes text of at most {MAX_TEXT} characters")
        return value
    raise ValueError(f"question {question['id']!r} has an unknown type {kind!r}")


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((_STATIC / name).read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


def create_app(study_dir: str | Path) -> FastAPI:
    """The reading app for one study folder."""
    study = Study(study_dir)
    app = FastAPI(title=study.definition.get("title", "Reader study"), docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study = study

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def identity(request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if not token:
            raise HTTPException(401, "no access token: open your personal study link", headers={"WWW-Authenticate": "Bearer"})
        who = study.identify(token)
        if who is None:
            raise HTTPException(403, "unknown access token: check your personal study link")
        return who

    def admin(who: Identity = Depends(identity)) -> Identity:
        if not who.is_admin:
            raise HTTPException(403, "administrators only")
        return who

    def reader(who: Identity = Depends(identity)) -> Identity:
        if who.is_admin:
            raise HTTPException(403, "this is a reader's page: the administrator sees /admin")
        return who

    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        who = study.identify(request.cookies.get(COOKIE))
        if who is not None:
            return RedirectResponse("/admin" if who.is_admin else "/read", status_code=303)
        return _page("welcome.html")

    @app.get("/r/{token}", include_in_schema=False)
    def personal_link(token: str) -> Response:
        who = study.identify(token)
        if who is None:
            raise HTTPException(403, "unknown access token: check your personal study link")
        response = RedirectResponse("/admin" if who.is_admin else "/read", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=90 * 24 * 3600)
        return response

    @app.get("/read", include_in_schema=False)
    def read_page() -> HTMLResponse:
        return _page("reader.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> HTMLResponse:
        return _page("admin.html")

    @app.get("/api/me")
    def me(who: Identity = Depends(identity)) -> dict:
        return {"reader_id": who.reader_id, "role": "admin" if who.is_admin else "reader"}

    @app.get("/api/study")
    def reader_study(who: Identity = Depends(reader)) -> dict:
        items = study.definition["assignments"].get(who.reader_id, [])
        answers: dict[str, dict] = {}
        for row in study.store.answers(who.reader_id):
            answers.setdefault(row["case_id"], {})[row["question_id"]] = row["value"]
        return {
            "title": study.definition.get("title", "Reader study"),
            "instructions": study.definition.get("instructions", ""),
            "reader_id": who.reader_id,
            "arms": list(study.arms.values()),
            "questions": list(study.questions.values()),
            "cases": [{"case_id": item["case_id"], "arm": item["arm"]} for item in items],
            "answers": answers,
        }

    @app.get("/api/cases/{case_id}")
    def case(case_id: str, who: Identity = Depends(identity)) -> dict:
        arm = study.arm_of(who, case_id)
        return {
            "case_id": case_id,
            "arm": arm,
            "arm_label": study.arms.get(arm, {}).get("label", arm),
            "shows": study.arms.get(arm, {}).get("shows", []),
            "questions": study.questions_for(arm) if arm else list(study.questions.values()),
            **study.visible_assets(case_id, arm),
        }

    @app.put("/api/answers/{case_id}/{question_id}")
    async def answer(case_id: str, question_id: str, request: Request, who: Identity = Depends(reader)) -> dict:
        arm = study.arm_of(who, case_id)
        question = study.questions.get(question_id)
        if question is None or question not in study.questions_for(arm):
            raise HTTPException(404, f"question {question_id!r} is not asked for this case")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict) or "value" not in payload:
                raise ValueError('send a JSON object {"value": ...}')
            value = validate_answer(question, payload["value"])
        except (ValueError, UnicodeDecodeError) as error:
            raise HTTPException(422, str(error)) from None
        if question["type"] == "forced_choice":
            given = [row["value"] for row in study.store.answers(who.reader_id, case_id) if row["question_id"] == question_id]
            if given and given[0] != value:
                raise HTTPException(409, "the real-or-generated answer is final once given (the case's images have been shown since)")
        study.store.save(who.reader_id, case_id, question_id, arm, question.get("phase", "after"), value)
        return {"case_id": case_id, "question_id": question_id, "value": value}

    @app.get("/api/readers/{reader_id}/answers")
    def answers_of(reader_id: str, who: Identity = Depends(identity)) -> list[dict]:
        if not who.is_admin and who.reader_id != reader_id:
            raise HTTPException(403, "you may read only your own answers")
        if reader_id not in study.assignments:
            raise HTTPException(404, f"unknown reader {reader_id!r}")
        return study.store.answers(reader_id)

    @app.get("/api/progress")
    def progress(_: Identity = Depends(admin)) -> dict:
        questions = {arm: len(study.questions_for(arm)) for arm in study.arms}
        readers = []
        for reader_id, cases in study.assignments.items():
            done: dict[str, int] = {}
            for row in study.store.answers(reader_id):
                done[row["case_id"]] = done.get(row["case_id"], 0) + 1
            complete = sum(1 for case_id, arm in cases.items() if done.get(case_id, 0) >= questions.get(arm, 0))
            readers.append({"reader_id": reader_id, "cases": len(cases), "complete": complete,
                            "answers": sum(done.values())})
        return {"title": study.definition.get("title", ""), "readers": readers}

    @app.get("/assets/{case_id}/{name}", include_in_schema=False)
    def asset(case_id: str, name: str, who: Identity = Depends(identity)) -> FileResponse:
        if not _ASSET_NAME.match(name):
            raise HTTPException(400, "invalid asset name")
        arm = study.arm_of(who, case_id)
        relative = f"assets/{case_id}/{name}"
        allowed = study.visible_assets(case_id, arm)
        urls = {allowed.get("image"), allowed.get("saliency"), allowed.get("forced_choice"), *allowed.get("frames", [])}
        if "/" + relative not in urls:
            raise HTTPException(403, "this image is not shown in your arm of the study")
        if "/" + relative != allowed.get("forced_choice") and study.choice_pending(who, case_id, arm):
            raise HTTPException(403, "answer the real-or-generated question first: the case's images are shown after it")
        root = (study.folder / "assets").resolve()
        path = (study.folder / relative).resolve()
        if root not in path.parents or not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return app


def personal_links(study_dir: str | Path, base_url: str) -> dict[str, str]:
    """``{reader_id: link}`` plus ``"admin"`` for a study served at ``base_url``."""
    secrets = json.loads((Path(study_dir) / "private" / "readers.json").read_text())
    base = base_url.rstrip("/")
    links = {reader: f"{base}/r/{token}" for reader, token in secrets.get("readers", {}).items()}
    if secrets.get("admin_token"):
        links["admin"] = f"{base}/r/{secrets['admin_token']}"
    return links


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, base_url: str | None = None) -> None:
    """Serve the reading app until interrupted, after printing every reader's personal link."""
    import uvicorn

    app = create_app(study_dir)  # raises StudyError for a folder that is not a study
    shown = base_url or f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}"
    print(f"Reader study {app.title!r} from {Path(study_dir).resolve()}; answers in responses.sqlite there.")
    print("Personal links (send each reader only their own; anyone with a link can answer as that reader):")
    for who, link in personal_links(study_dir, shown).items():
        print(f"  {who:>8}: {link}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("Serving beyond this machine: put it behind HTTPS (a reverse proxy) so tokens are not sent in clear text.")
    sys.stdout.flush()  # the links before uvicorn's log, also when stdout is a pipe
    uvicorn.run(app, host=host, port=port, log_level="info")
