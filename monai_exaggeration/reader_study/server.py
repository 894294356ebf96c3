"""The web reading app of a reader study: ``python -m monai_exaggeration reader-study serve DIR``.

A FastAPI application over a study folder made by ``reader-study build`` (``study.json``,
``assets/``, ``private/readers.json``); answers go to ``DIR/responses.sqlite`` through
:class:`~monai_exaggeration.reader_study.store.ResponseStore`, one row per answer, stored the
moment it is given, so a closed browser resumes where the reader stopped.

Access: each reader opens a personal link ``/r#<token>``: the token is in the URL fragment, which
browsers never send, and the sign-in page posts it to ``POST /api/session``, which sets an
HTTP-only, SameSite=strict cookie (``Secure`` with ``secure_cookies``); the page then moves to a
token-free URL. Links of the older form ``/r/<token>`` still work the same way (the page reads the
token from its path), and the uvicorn log redacts ``/r/<...>`` and every known token. API clients
may send ``Authorization: Bearer <token>`` instead. A reader sees only the cases assigned to them,
only the assets their arm shows, and only their own answers; the administrator token sees the
progress of every reader. Tokens are compared in constant time. Missing token: 401; unknown token
or a reader asking for what is not theirs: 403; unknown case or question: 404; invalid answer,
malformed JSON or JSON nested deeper than :data:`MAX_JSON_DEPTH`: 422; oversized body: 413.

Phases: the forced-choice (real versus generated) image comes first and alone: the case's other
images are refused (403) until it is judged, and that judgement cannot be changed afterwards
(409). Once a reader has been served a case's explanation (one of its frames or its saliency map,
or ``POST /api/cases/<case>/explanation``, which also returns the frame scores), the store records
it and the reader's "before" answers to that case (phase ``before`` or id ``*_before``) are final
(409 for a new or changed answer), also after a restart.

Cross-site request forgery: a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` is
not the app's own (or whose ``Sec-Fetch-Site`` names another site) is refused with 403, and one
with a body must be ``Content-Type: application/json`` (or carry ``X-Requested-With``), else 415;
so a page elsewhere cannot make a signed-in reader's browser answer, even where SameSite cookies
are not enforced (:func:`forgery_refusal`).

Every response carries ``Content-Security-Policy`` (``default-src 'self'``: no inline script or
style), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``; ``/api/*``
answers are ``Cache-Control: no-store``. Every asset (page, script, style, image) is served
locally: the app works offline.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from monai_exaggeration.reader_study.store import AnswerFrozenError, ResponseStore

__all__ = [
    "COOKIE",
    "CONTENT_SECURITY_POLICY",
    "CUSTOM_HEADER",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "STATE_CHANGING",
    "Identity",
    "Study",
    "StudyError",
    "TokenRedactingFilter",
    "create_app",
    "forgery_refusal",
    "personal_links",
    "serve",
    "validate_answer",
    "write_links",
]

#: Name of the session cookie that holds a reader's token.
COOKIE = "exaggeration_reader"
#: Largest request body accepted (an answer is a few hundred bytes; free text is capped below).
MAX_BODY_BYTES = 16 * 1024
#: Deepest nesting of arrays and objects accepted in a JSON body (an answer needs 2).
MAX_JSON_DEPTH = 16
#: Longest free-text answer in characters.
MAX_TEXT = 4000
#: Sent with every response: only this server's own scripts, styles and images; no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Loggers of uvicorn whose records go through :class:`TokenRedactingFilter` while the app runs.
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")
_LINK_PATH = re.compile(r"(/r/)[^\s\"'?#/]+")
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.png$")
_STATIC = resources.files("monai_exaggeration.reader_study") / "static"


#: Methods that change what the app stores: refused from a foreign origin, and with a body unless it is JSON.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: A request header no cross-site form or simple request can carry (a browser asks the server first, and
#: this app never agrees); API clients that send no JSON body may send it instead of Content-Type JSON.
CUSTOM_HEADER = "X-Requested-With"


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower case ("" when it has none)."""
    parts = urllib.parse.urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def forgery_refusal(request: Request, trusted_origins: Iterable[str] = ()) -> tuple[int, str] | None:
    """(status, reason) when a state-changing request may be a cross-site request forgery, else None.

    Refused with 403: an ``Origin`` other than the app's own (the ``Host`` it was asked as, or one of
    ``trusted_origins``: the public address behind a reverse proxy), ``Origin: null``, or no
    ``Origin`` but ``Sec-Fetch-Site`` saying another site. Refused with 415: a body that is not
    ``Content-Type: application/json`` without :data:`CUSTOM_HEADER` (a cross-site HTML form can
    only send form or plain-text bodies). Requests without these headers (API clients) pass.
    """
    if request.method not in STATE_CHANGING:
        return None
    origin = request.headers.get("origin")
    if origin is not None:
        own = {_origin_of(url) for url in trusted_origins}
        host = request.headers.get("host", "").lower()
        parts = urllib.parse.urlsplit(origin.strip().lower())
        if not (_origin_of(origin) in own or (parts.scheme in ("http", "https") and host and parts.netloc == host)):
            return (
                403,
                f"cross-origin request refused (Origin {origin[:100]}): answers are given on the study's own pages",
            )
    elif request.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        return 403, "cross-site request refused: answers are given on the study's own pages"
    if request.method != "DELETE" and CUSTOM_HEADER.lower() not in request.headers:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return 415, "send the request body as JSON with Content-Type: application/json"
    return None


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


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((_STATIC / name).read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (brackets inside strings do not count).

    One linear pass, no recursion: safe on any body, well-formed or not.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


async def read_json(request: Request) -> Any:
    """The request body as JSON: 413 when over :data:`MAX_BODY_BYTES`, 422 when not UTF-8 JSON or nested too deeply."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(422, "the request body is not UTF-8 text") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise HTTPException(422, f"the JSON body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise HTTPException(422, f"the request body is not valid JSON ({error})") from None


def _percent_decoded(text: str, rounds: int = 3) -> str:
    """``text`` with percent-escapes decoded, again while that changes it (a token may be encoded twice)."""
    for _ in range(rounds):
        decoded = urllib.parse.unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def _printable(text: str) -> str:
    """``text`` with control characters percent-encoded again: a decoded line break cannot forge a log line."""
    return "".join(char if char.isprintable() else urllib.parse.quote(char) for char in text)


class TokenRedactingFilter(logging.Filter):
    """Replaces ``/r/<anything>`` and every known token in log records with ``[redacted]``.

    uvicorn logs the path as the client sent it, percent-escapes included, so a token is also looked
    for after decoding them (``%74oken`` is ``token``); a line where only the decoded text holds a
    token is logged decoded and redacted (control characters kept encoded). Works on the record's
    message and its string arguments, so uvicorn's access-log formatter (which unpacks
    ``record.args``) still gets its five arguments.
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        super().__init__()
        self.tokens = sorted({str(token) for token in tokens if token}, key=len, reverse=True)

    def _redact_plain(self, text: str) -> str:
        text = _LINK_PATH.sub(r"\1[redacted]", text)
        for token in self.tokens:
            text = text.replace(token, "[redacted]")
        return text

    def redact(self, text: str) -> str:
        plain = self._redact_plain(text)
        decoded = _percent_decoded(plain)
        if decoded == plain:
            return plain
        redacted = self._redact_plain(decoded)
        return plain if redacted == decoded else _printable(redacted)

    def _clean(self, value: Any) -> Any:
        return self.redact(value) if isinstance(value, str) else value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(value) for value in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        return True


def create_app(study_dir: str | Path, secure_cookies: bool = False, trusted_origins: Iterable[str] = ()) -> FastAPI:
    """The reading app for one study folder; ``secure_cookies``: mark the session cookie ``Secure`` (behind HTTPS);
    ``trusted_origins``: addresses the study's pages are served from besides the one the app is asked as (a
    reverse proxy's public ``https://host``), from which answers are accepted (:func:`forgery_refusal`)."""
    study = Study(study_dir)
    trusted = tuple(trusted_origins)
    redactor = TokenRedactingFilter(study.tokens)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # uvicorn has configured its loggers by now: tokens never reach its log, whatever the request
        loggers = [logging.getLogger(name) for name in REDACTED_LOGGERS]
        for logger in loggers:
            logger.addFilter(redactor)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(redactor)

    app = FastAPI(
        title=study.definition.get("title", "Reader study"),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.study = study
    app.state.log_filter = redactor

    def secured(request: Request, response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        refusal = forgery_refusal(request, trusted)
        if refusal is not None:
            return secured(request, JSONResponse({"detail": refusal[1]}, status_code=refusal[0]))
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return secured(
                request, JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
            )
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            return secured(request, JSONResponse({"detail": "a Content-Length header is required"}, status_code=411))
        return secured(request, await call_next(request))

    def identity(request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if not token:
            raise HTTPException(
                401, "no access token: open your personal study link", headers={"WWW-Authenticate": "Bearer"}
            )
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

    @app.get("/r", include_in_schema=False)
    def sign_in_page() -> HTMLResponse:
        # personal links are /r#<token>: the fragment never reaches the server; signin.js posts it to /api/session
        return _page("signin.html")

    @app.get("/r/{legacy}", include_in_schema=False)
    def legacy_link(legacy: str) -> HTMLResponse:
        # older links /r/<token>: the same page, which takes the token from its path (redacted in the log)
        return _page("signin.html")

    @app.post("/api/session")
    async def sign_in(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, 'send the token as JSON {"token": "..."} with Content-Type: application/json')
        payload = await read_json(request)
        token = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise HTTPException(422, 'send a JSON object {"token": "..."}')
        who = study.identify(token)
        if who is None:
            raise HTTPException(403, "unknown access token: check your personal study link")
        response = JSONResponse(
            {
                "reader_id": who.reader_id,
                "role": "admin" if who.is_admin else "reader",
                "next": "/admin" if who.is_admin else "/read",
            }
        )
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies, max_age=90 * 24 * 3600
        )
        return response

    @app.delete("/api/session")
    def sign_out() -> Response:
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=secure_cookies)
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
        visible = study.visible_assets(case_id, arm)
        explained = who.is_admin or bool(study.store.explained(who.reader_id, case_id))
        if not explained:
            visible.pop("scores", None)  # the frame scores are part of the explanation: see POST .../explanation
        return {
            "case_id": case_id,
            "arm": arm,
            "arm_label": study.arms.get(arm, {}).get("label", arm),
            "shows": study.arms.get(arm, {}).get("shows", []),
            "questions": study.questions_for(arm) if arm else list(study.questions.values()),
            "explained": explained,
            **visible,
        }

    @app.post("/api/cases/{case_id}/explanation")
    def explanation(case_id: str, who: Identity = Depends(reader)) -> dict:
        """The reader moves on to the explanation: recorded for good, the case's "before" answers are final from now on."""
        arm = study.arm_of(who, case_id)
        if study.choice_pending(who, case_id, arm):
            raise HTTPException(
                403, "answer the real-or-generated question first: the case's images are shown after it"
            )
        shown_at = study.store.mark_explained(who.reader_id, case_id)
        visible = study.visible_assets(case_id, arm)
        return {
            "case_id": case_id,
            "explained": True,
            "shown_at": shown_at,
            **{key: visible[key] for key in ("frames", "scores", "saliency") if key in visible},
        }

    @app.put("/api/answers/{case_id}/{question_id}")
    async def answer(case_id: str, question_id: str, request: Request, who: Identity = Depends(reader)) -> dict:
        arm = study.arm_of(who, case_id)
        question = study.questions.get(question_id)
        if question is None or question not in study.questions_for(arm):
            raise HTTPException(404, f"question {question_id!r} is not asked for this case")
        payload = await read_json(request)
        try:
            if not isinstance(payload, dict) or "value" not in payload:
                raise ValueError('send a JSON object {"value": ...}')
            value = validate_answer(question, payload["value"])
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        if question["type"] == "forced_choice":
            given = [
                row["value"] for row in study.store.answers(who.reader_id, case_id) if row["question_id"] == question_id
            ]
            if given and given[0] != value:
                raise HTTPException(
                    409, "the real-or-generated answer is final once given (the case's images have been shown since)"
                )
        try:
            study.store.save(
                who.reader_id,
                case_id,
                question_id,
                arm,
                question.get("phase", "after"),
                value,
                final_once_explained=study.is_before(question),
            )
        except AnswerFrozenError as error:
            raise HTTPException(
                409,
                f"question {question_id!r} is answered before the explanation and is final once "
                f"the explanation has been shown ({error})",
            ) from None
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
            readers.append(
                {"reader_id": reader_id, "cases": len(cases), "complete": complete, "answers": sum(done.values())}
            )
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
            raise HTTPException(
                403, "answer the real-or-generated question first: the case's images are shown after it"
            )
        root = (study.folder / "assets").resolve()
        path = (study.folder / relative).resolve()
        if root not in path.parents or not path.is_file():
            raise HTTPException(404, "no such image")
        if not who.is_admin and "/" + relative in study.explanation_urls(case_id, arm):
            study.store.mark_explained(who.reader_id, case_id)  # recorded before a single byte of it is sent
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return app


def personal_links(study_dir: str | Path, base_url: str) -> dict[str, str]:
    """``{reader_id: link}`` plus ``"admin"`` for a study served at ``base_url``: ``BASE/r#<token>``.

    The token is in the fragment, which browsers never send to a server (nor to a proxy's log).
    """
    try:
        secrets = json.loads((Path(study_dir) / "private" / "readers.json").read_text())
    except FileNotFoundError:
        raise StudyError(f"{study_dir} is not a study folder (private/readers.json is missing)") from None
    base = base_url.rstrip("/")
    links = {reader: f"{base}/r#{token}" for reader, token in secrets.get("readers", {}).items()}
    if secrets.get("admin_token"):
        links["admin"] = f"{base}/r#{secrets['admin_token']}"
    return links


def default_base_url(host: str, port: int) -> str:
    """The address the printed links use when ``--base-url`` is not given."""
    return f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}"


def write_links(study_dir: str | Path, base_url: str) -> Path:
    """Write every personal link to ``STUDY_DIR/private/links.txt`` (readable by the owner only); return its path."""
    path = Path(study_dir) / "private" / "links.txt"
    lines = [
        "# Personal links of the reader study: send each reader only their own; anyone with a link can answer",
        "# as that reader. Written by `reader-study serve` (or print them with `reader-study links STUDY_DIR`).",
    ]
    lines += [f"{who}\t{link}" for who, link in personal_links(study_dir, base_url).items()]
    temporary = path.with_name(".links.txt.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return path


def serve(
    study_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    base_url: str | None = None,
    secure_cookies: bool = False,
) -> None:
    """Serve the reading app until interrupted. The personal links go to ``private/links.txt``, never to the output.

    Nothing this prints or logs holds a token: the output of a server often ends up in a log file.
    """
    import uvicorn

    base_url = base_url or default_base_url(host, port)
    # raises StudyError for a folder that is not a study
    app = create_app(study_dir, secure_cookies=secure_cookies, trusted_origins=[base_url])
    links = write_links(study_dir, base_url)
    print(f"Reader study {app.title!r} from {Path(study_dir).resolve()}; answers in responses.sqlite there.")
    print(
        f"Personal links (send each reader only their own): {links.resolve()}; "
        f"or run `python -m monai_exaggeration reader-study links {study_dir}`."
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            "Serving beyond this machine: put it behind HTTPS (a reverse proxy) so tokens are not sent in clear text"
            + ("." if secure_cookies else ", and add --secure-cookies.")
        )
    sys.stdout.flush()  # before uvicorn's log, also when stdout is a pipe
    uvicorn.run(app, host=host, port=port, log_level="info")
