"""The reading app's routes, as FastAPI routers over the study in ``app.state.study``.

:func:`~monai_exaggeration.reader_study.server.create_app` includes them: :data:`pages` (the HTML
pages), :data:`session` (sign in and out), :data:`api` (study, cases, answers, progress) and
:data:`assets` (the case images, served by arm and phase). The access rules and status codes are
described in :mod:`monai_exaggeration.reader_study.server`.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from monai_exaggeration.reader_study.store import AnswerFrozenError
from monai_exaggeration.reader_study.study import Identity, Study, validate_answer

__all__ = [
    "COOKIE",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "STATIC",
    "api",
    "assets",
    "json_depth",
    "pages",
    "read_json",
    "session",
]

#: Name of the session cookie that holds a reader's token.
COOKIE = "exaggeration_reader"
#: Largest request body accepted (an answer is a few hundred bytes; free text is capped below).
MAX_BODY_BYTES = 16 * 1024
#: Deepest nesting of arrays and objects accepted in a JSON body (an answer needs 2).
MAX_JSON_DEPTH = 16
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.png$")
#: The reading app's pages, scripts and styles (served under /static; the pages by the routes).
STATIC = resources.files("monai_exaggeration.reader_study") / "static"


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


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


def study_of(request: Request) -> Study:
    """The study the app serves."""
    return request.app.state.study


def identity(request: Request, study: Study = Depends(study_of)) -> Identity:
    """Who asks: the bearer token, else the session cookie; 401 without one, 403 for an unknown one."""
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


pages = APIRouter(include_in_schema=False)
session = APIRouter(prefix="/api/session")
api = APIRouter(prefix="/api")
assets = APIRouter(include_in_schema=False)


@pages.get("/")
def home(request: Request, study: Study = Depends(study_of)) -> Response:
    who = study.identify(request.cookies.get(COOKIE))
    if who is not None:
        return RedirectResponse("/admin" if who.is_admin else "/read", status_code=303)
    return _page("welcome.html")


@pages.get("/r")
def sign_in_page() -> HTMLResponse:
    # personal links are /r#<token>: the fragment never reaches the server; signin.js posts it to /api/session
    return _page("signin.html")


@pages.get("/r/{legacy}")
def legacy_link(legacy: str) -> HTMLResponse:
    # older links /r/<token>: the same page, which takes the token from its path (redacted in the log)
    return _page("signin.html")


@pages.get("/read")
def read_page() -> HTMLResponse:
    return _page("reader.html")


@pages.get("/admin")
def admin_page() -> HTMLResponse:
    return _page("admin.html")


@session.post("")
async def sign_in(request: Request, study: Study = Depends(study_of)) -> Response:
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
    secure = request.app.state.secure_cookies
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, max_age=90 * 24 * 3600)
    return response


@session.delete("")
def sign_out(request: Request) -> Response:
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.app.state.secure_cookies)
    return response


@api.get("/me")
def me(who: Identity = Depends(identity)) -> dict:
    return {"reader_id": who.reader_id, "role": "admin" if who.is_admin else "reader"}


@api.get("/study")
def reader_study(who: Identity = Depends(reader), study: Study = Depends(study_of)) -> dict:
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


@api.get("/cases/{case_id}")
def case(case_id: str, who: Identity = Depends(identity), study: Study = Depends(study_of)) -> dict:
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


@api.post("/cases/{case_id}/explanation")
def explanation(case_id: str, who: Identity = Depends(reader), study: Study = Depends(study_of)) -> dict:
    """The reader moves on to the explanation: recorded for good, the case's "before" answers are final from now on."""
    arm = study.arm_of(who, case_id)
    if study.choice_pending(who, case_id, arm):
        raise HTTPException(403, "answer the real-or-generated question first: the case's images are shown after it")
    shown_at = study.store.mark_explained(who.reader_id, case_id)
    visible = study.visible_assets(case_id, arm)
    return {
        "case_id": case_id,
        "explained": True,
        "shown_at": shown_at,
        **{key: visible[key] for key in ("frames", "scores", "saliency") if key in visible},
    }


@api.put("/answers/{case_id}/{question_id}")
async def answer(
    case_id: str, question_id: str, request: Request, who: Identity = Depends(reader), study: Study = Depends(study_of)
) -> dict:
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


@api.get("/readers/{reader_id}/answers")
def answers_of(reader_id: str, who: Identity = Depends(identity), study: Study = Depends(study_of)) -> list[dict]:
    if not who.is_admin and who.reader_id != reader_id:
        raise HTTPException(403, "you may read only your own answers")
    if reader_id not in study.assignments:
        raise HTTPException(404, f"unknown reader {reader_id!r}")
    return study.store.answers(reader_id)


@api.get("/progress")
def progress(_: Identity = Depends(admin), study: Study = Depends(study_of)) -> dict:
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


@assets.get("/assets/{case_id}/{name}")
def asset(case_id: str, name: str, who: Identity = Depends(identity), study: Study = Depends(study_of)) -> FileResponse:
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
    if not who.is_admin and "/" + relative in study.explanation_urls(case_id, arm):
        study.store.mark_explained(who.reader_id, case_id)  # recorded before a single byte of it is sent
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
