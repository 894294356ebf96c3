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

import json
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from monai_exaggeration.reader_study import routes
from monai_exaggeration.reader_study.routes import COOKIE, MAX_BODY_BYTES, MAX_JSON_DEPTH, STATIC
from monai_exaggeration.reader_study.study import Identity, Study, StudyError, validate_answer

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

#: Sent with every response: only this server's own scripts, styles and images; no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Loggers of uvicorn whose records go through :class:`TokenRedactingFilter` while the app runs.
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")
_LINK_PATH = re.compile(r"(/r/)[^\s\"'?#/]+")


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


def _secured(request: Request, response: Response) -> Response:
    """``response`` with the headers every answer carries (and ``no-store`` under ``/api/``)."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.url.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _refusal(request: Request, trusted: Iterable[str]) -> JSONResponse | None:
    """The answer to a request refused before any route sees it: forgery (403/415), body too large (413) or of unknown
    length (411); None for a request that may go on."""
    refusal = forgery_refusal(request, trusted)
    if refusal is not None:
        return JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
    if request.method in ("POST", "PUT", "PATCH") and length is None:
        return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
    return None


def create_app(study_dir: str | Path, secure_cookies: bool = False, trusted_origins: Iterable[str] = ()) -> FastAPI:
    """The reading app for one study folder; ``secure_cookies``: mark the session cookie ``Secure`` (behind HTTPS);
    ``trusted_origins``: addresses the study's pages are served from besides the one the app is asked as (a
    reverse proxy's public ``https://host``), from which answers are accepted (:func:`forgery_refusal`).
    The routes are :mod:`~monai_exaggeration.reader_study.routes`' routers."""
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
    app.state.secure_cookies = secure_cookies
    app.state.log_filter = redactor

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        refused = _refusal(request, trusted)
        return _secured(request, refused if refused is not None else await call_next(request))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for router in (routes.pages, routes.session, routes.api, routes.assets):
        app.include_router(router)
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
