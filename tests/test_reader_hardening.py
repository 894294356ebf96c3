"""Security review of the reading app: no token in the server's output (A), body size and JSON depth limits (B),
"before" answers final once the explanation was served (C), security headers and cookies (D), and no spreadsheet
formula in the analysis CSVs (E)."""

from __future__ import annotations

import csv
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reader_app_helpers import ADMIN, NUM_FRAMES, TOKENS, bearer, client, free_port, make_study, put, study  # noqa: F401 (fixtures)

pytest.importorskip("fastapi", reason="the reading app needs fastapi (pip install -e .[test])")
from fastapi.testclient import TestClient  # noqa: E402

from monai_exaggeration.reader_study.routes import json_depth  # noqa: E402
from monai_exaggeration.reader_study.server import (  # noqa: E402
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    TokenRedactingFilter,
    create_app,
)
from monai_exaggeration.reader_study.store import AnswerFrozenError, ResponseStore  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
STATIC = REPO_ROOT / "monai_exaggeration" / "reader_study" / "static"


# ------------------------------------------------------------------------------------ A: tokens in logs


def test_tokens_never_reach_the_server_output(study: Path, tmp_path: Path) -> None:
    """`reader-study serve` as run by a user: readers and the administrator sign in through their links
    (fragment and older path form), and the whole stdout + stderr of the server holds no token."""
    import httpx

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "monai_exaggeration", "reader-study", "serve", str(study), "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "Uvicorn running" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        listed = dict(
            line.split("\t")
            for line in (study / "private" / "links.txt").read_text().splitlines()
            if not line.startswith("#")
        )
        base = f"http://127.0.0.1:{port}"
        for who, token, home in (("R1", TOKENS["R1"], "/read"), ("admin", ADMIN, "/admin")):
            link = listed[who].replace(f"http://localhost:{port}", base)
            assert link == f"{base}/r#{token}"
            with httpx.Client(base_url=base, timeout=30) as browser:
                page = browser.get(link)  # what a browser sends for the link: no fragment
                assert page.status_code == 200 and "/static/signin.js" in page.text
                assert browser.get(f"/r/{token}").status_code == 200  # an older /r/<token> link
                session = browser.post("/api/session", json={"token": token})  # what signin.js does
                assert session.status_code == 200 and session.json()["next"] == home
                assert browser.get(home).status_code == 200
                assert browser.get("/api/me").json()["role"] == ("admin" if who == "admin" else "reader")
                # a token pasted where it does not belong is redacted too
                assert browser.get(f"/api/readers/{TOKENS['R2']}/answers").status_code in (403, 404)
        assert httpx.post(f"{base}/api/session", json={"token": "not-a-token"}).status_code == 403
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    output = log.read_text()
    assert '"POST /api/session HTTP/1.1" 200' in output and '"GET /r HTTP/1.1" 200' in output  # the access log is on
    assert '"GET /r/[redacted] HTTP/1.1" 200' in output and "/api/readers/[redacted]/answers" in output
    for token in [*TOKENS.values(), ADMIN]:
        assert token not in output, f"a token reached the server's output:\n{output}"


def test_log_filter_keeps_uvicorn_access_records_intact() -> None:
    import logging

    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/r/secret-token-123?x=1", "1.1", 200),
        None,
    )
    assert TokenRedactingFilter(["other-token"]).filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /r/[redacted]?x=1 HTTP/1.1" 200 OK'
    assert TokenRedactingFilter(["abc-123"]).redact("GET /api/x/abc-123/y") == "GET /api/x/[redacted]/y"


# ------------------------------------------------------------------------------------ B: body limits


def test_deeply_nested_json_is_refused_with_422(client: TestClient) -> None:
    headers = {**bearer("R1"), "Content-Type": "application/json"}
    deep = '{"value": ' + "[" * 5000 + "]" * 5000 + "}"  # ~10 KB: within the size limit, past Python's recursion limit
    assert len(deep) < MAX_BODY_BYTES
    response = client.put("/api/answers/C00001/what_changed", content=deep, headers=headers)
    assert response.status_code == 422 and f"more than {MAX_JSON_DEPTH} levels" in response.json()["detail"]
    just_too_deep = '{"value": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    assert client.put("/api/answers/C00001/what_changed", content=just_too_deep, headers=headers).status_code == 422
    session = client.post(
        "/api/session",
        content='{"token": ' + "{" * 3000 + "}" * 3000 + "}",
        headers={"Content-Type": "application/json"},
    )
    assert session.status_code == 422 and "levels" in session.json()["detail"]
    # brackets inside text do not count, and ordinary answers pass
    assert put(client, "R1", "C00001", "comment", "[[[[{{{{" * 50).status_code == 200
    assert put(client, "R1", "C00001", "what_changed", ["heart size"]).status_code == 200
    assert json_depth('{"a": "[[[{\\"", "b": [[1]]}') == 3 and json_depth('["\\\\", [1]]') == 2
    # a body the depth check itself could choke on (escaped quotes, no end): refused at once
    pathological = '"' + '\\"' * ((MAX_BODY_BYTES - 10) // 2)
    started = time.perf_counter()
    assert client.put("/api/answers/C00001/comment", content=pathological, headers=headers).status_code == 422
    assert time.perf_counter() - started < 1.0


def test_oversized_body_is_refused(client: TestClient) -> None:
    big = json.dumps({"value": "x" * (MAX_BODY_BYTES + 10)})
    for method, path, headers in (("PUT", "/api/answers/C00001/comment", bearer("R1")), ("POST", "/api/session", {})):
        response = client.request(method, path, content=big, headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 413 and f"larger than {MAX_BODY_BYTES} bytes" in response.json()["detail"]
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert (
        client.put(
            "/api/answers/C00001/comment",
            content=b'{"value": "\xff"}',
            headers={**bearer("R1"), "Content-Type": "application/json"},
        ).status_code
        == 422
    )


# ------------------------------------------------------------------------------------ C: phases on the server


def _judge(client: TestClient, reader: str, case: str) -> None:
    assert put(client, reader, case, "real_or_generated", "real").status_code == 200


def test_before_answers_are_final_once_the_explanation_was_served(study: Path) -> None:
    client = TestClient(create_app(study))
    _judge(client, "R1", "C00001")  # R1 reads C00001 with the series
    assert put(client, "R1", "C00001", "confidence_before", 2).status_code == 200
    assert put(client, "R1", "C00001", "confidence_before", 3).status_code == 200  # changes are fine before
    assert client.get("/assets/C00001/image.png", headers=bearer("R1")).status_code == 200  # not the explanation
    assert put(client, "R1", "C00001", "confidence_before", 4).status_code == 200
    assert client.get("/assets/C00001/frame_002.png", headers=bearer("R1")).status_code == 200  # explanation served
    changed = put(client, "R1", "C00001", "confidence_before", 1)
    assert changed.status_code == 409 and "final once the explanation has been shown" in changed.json()["detail"]
    assert put(client, "R1", "C00001", "confidence_before", 4).status_code == 200  # the same answer again: no change
    assert put(client, "R1", "C00001", "helpful", "yes").status_code == 200  # "after" answers are open
    assert client.get("/api/cases/C00001", headers=bearer("R1")).json()["explained"] is True
    # per reader and per case; the administrator's viewing changes nothing
    assert client.get("/assets/C00003/frame_000.png", headers=bearer(ADMIN)).status_code == 200
    _judge(client, "R2", "C00003")
    assert put(client, "R2", "C00003", "confidence_before", 5).status_code == 200
    _judge(client, "R1", "C00003")  # saliency arm: the saliency map is its explanation
    assert client.get("/assets/C00003/saliency.png", headers=bearer("R1")).status_code == 200
    assert put(client, "R1", "C00003", "confidence_before", 2).status_code == 409  # not answered before: too late now
    # durable: recorded in responses.sqlite, still enforced after a restart
    with sqlite3.connect(study / "responses.sqlite") as database:
        rows = set(database.execute("SELECT reader_id, case_id FROM explanations").fetchall())
    assert rows == {("R1", "C00001"), ("R1", "C00003")}
    restarted = TestClient(create_app(study))
    assert put(restarted, "R1", "C00001", "confidence_before", 1).status_code == 409
    stored = {
        r["question_id"]: r["value"]
        for r in restarted.get("/api/readers/R1/answers", headers=bearer("R1")).json()
        if r["case_id"] == "C00001"
    }
    assert stored["confidence_before"] == 4


def test_explanation_step_records_and_returns_the_explanation(client: TestClient) -> None:
    case = client.get("/api/cases/C00003", headers=bearer("R2")).json()  # R2 reads C00003 with the series
    assert case["explained"] is False and "scores" not in case
    assert (
        client.post("/api/cases/C00003/explanation", json={}, headers=bearer("R2")).status_code == 403
    )  # choice first
    _judge(client, "R2", "C00003")
    assert put(client, "R2", "C00003", "confidence_before", 3).status_code == 200
    shown = client.post("/api/cases/C00003/explanation", json={}, headers=bearer("R2"))
    assert shown.status_code == 200 and len(shown.json()["scores"]) == len(shown.json()["frames"]) == NUM_FRAMES
    again = client.post("/api/cases/C00003/explanation", json={}, headers=bearer("R2")).json()
    assert again["shown_at"] == shown.json()["shown_at"]  # the first time is kept
    assert put(client, "R2", "C00003", "confidence_before", 4).status_code == 409
    assert client.post("/api/cases/C00003/explanation", json={}, headers=bearer(ADMIN)).status_code == 403
    assert (
        client.post("/api/cases/C00001/explanation", json={}, headers=bearer("R2")).status_code == 403
    )  # choice first
    assert client.post("/api/cases/C99999/explanation", json={}, headers=bearer("R2")).status_code == 404


def test_store_freezes_answers_after_the_explanation(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "responses.sqlite")
    store.save("R1", "C1", "confidence_before", "series", "before", 3, final_once_explained=True)
    assert store.explained("R1") == {}
    first = store.mark_explained("R1", "C1")
    assert store.mark_explained("R1", "C1") == first
    with pytest.raises(AnswerFrozenError, match="explanation of this case was shown") as error:
        store.save("R1", "C1", "confidence_before", "series", "before", 4, final_once_explained=True)
    assert error.value.shown_at == first
    with pytest.raises(AnswerFrozenError):
        store.save("R1", "C1", "other_before", "series", "before", 1, final_once_explained=True)
    kept = store.answers("R1", "C1")[0]
    assert (
        store.save("R1", "C1", "confidence_before", "series", "before", 3, final_once_explained=True)
        == kept["answered_at"]
    )
    store.save("R1", "C2", "confidence_before", "series", "before", 5, final_once_explained=True)  # other case: open
    store.save("R1", "C1", "helpful", "series", "after", "yes")  # not frozen
    reopened = ResponseStore(tmp_path / "responses.sqlite")
    assert reopened.explained("R1") == {"C1": first} and reopened.explained("R1", "C2") == {}
    assert {(r["question_id"], r["value"]) for r in reopened.answers("R1", "C1")} == {
        ("confidence_before", 3),
        ("helpful", "yes"),
    }


# ------------------------------------------------------------------------------------ D: headers and cookies


def test_security_headers_everywhere(client: TestClient, study: Path) -> None:
    _judge(client, "R1", "C00001")
    responses = {
        "/": client.get("/"),
        "/r": client.get("/r"),
        "/read": client.get("/read"),
        "/admin": client.get("/admin"),
        "/static/reader.js": client.get("/static/reader.js"),
        "/api/me (401)": client.get("/api/me"),
        "/api/study": client.get("/api/study", headers=bearer("R1")),
        "/api/cases": client.get("/api/cases/C00001", headers=bearer("R1")),
        "/assets": client.get("/assets/C00001/image.png", headers=bearer("R1")),
        "404": client.get("/no/such/page"),
    }
    for name, response in responses.items():
        headers = response.headers
        assert "default-src 'self'" in headers["content-security-policy"], name
        assert "frame-ancestors 'none'" in headers["content-security-policy"], name
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["referrer-policy"] == "no-referrer", name
        if name.startswith("/api/"):
            assert headers["cache-control"] == "no-store", name
    assert responses["/api/study"].status_code == responses["/assets"].status_code == 200


def test_static_pages_need_nothing_inline() -> None:
    """default-src 'self' blocks inline scripts, styles and event handlers: the pages use none."""
    pages = sorted(STATIC.glob("*.html"))
    assert {p.name for p in pages} >= {"reader.html", "admin.html", "welcome.html", "signin.html"}
    for page in pages:
        text = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), page.name
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", text, re.IGNORECASE), page.name
        assert not re.search(r"(src|href)=\"(https?:)?//", text), page.name  # nothing from elsewhere
    for script in STATIC.glob("*.js"):
        assert not re.search(r"\beval\(|new Function\(|setAttribute\(\"on|\.style\s*=", script.read_text()), script.name


def test_secure_cookies_mark_the_session_cookie_secure(study: Path) -> None:
    plain = TestClient(create_app(study)).post("/api/session", json={"token": TOKENS["R1"]})
    assert "secure" not in plain.headers["set-cookie"].lower()
    secure = TestClient(create_app(study, secure_cookies=True), base_url="https://testserver")
    cookie = secure.post("/api/session", json={"token": TOKENS["R1"]}).headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert secure.get("/api/me").json()["reader_id"] == "R1"  # sent back over https


def test_serve_command_passes_secure_cookies(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monai_exaggeration.reader_study.server as server
    from monai_exaggeration.cli import main

    calls: list[dict] = []
    monkeypatch.setattr(server, "serve", lambda study_dir, **options: calls.append(options))
    assert main(["reader-study", "serve", str(study), "--secure-cookies"]) == 0
    assert main(["reader-study", "serve", str(study)]) == 0
    assert [call["secure_cookies"] for call in calls] == [True, False]


# ------------------------------------------------------------------------------------ E: CSV injection


def test_analysis_csv_cells_cannot_start_a_formula(study: Path, tmp_path: Path) -> None:
    import pandas as pd

    from monai_exaggeration.reader_study.analysis import analyze_study, csv_safe

    store = ResponseStore(study / "responses.sqlite")
    comments = {
        "C00001": '=HYPERLINK("http://evil.example","click")',
        "C00002": "+1+cmd|' /C calc'!A0",
        "C00003": "@SUM(1,2)",
    }
    for case, comment in comments.items():
        store.save("R1", case, "comment", "series", "after", comment)
        store.save("R1", case, "confidence_before", "series", "before", 3)
    store.save("R2", "C00001", "comment", "image", "after", "-2+3")
    store.save("R2", "C00002", "comment", "saliency", "after", "\tindented")
    store.save("R2", "C00003", "comment", "series", "after", "-3")  # text that is a plain number: harmless, kept
    store.save("R2", "C00003", "confidence_before", "series", "before", -2)  # a negative number stays a number
    result = analyze_study(study, tmp_path / "analysis")
    with (tmp_path / "analysis" / "responses.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    values = {(row["reader_id"], row["case_id"], row["question_id"]): row["value"] for row in rows}
    for case, comment in comments.items():
        assert values[("R1", case, "comment")] == "'" + comment
        assert values[("R1", case, "confidence_before")] == "3"
    assert values[("R2", "C00001", "comment")] == "'-2+3" and values[("R2", "C00002", "comment")] == "'\tindented"
    assert values[("R2", "C00003", "comment")] == "-3" and values[("R2", "C00003", "confidence_before")] == "-2"
    for path in (tmp_path / "analysis").glob("*.csv"):  # no cell of any CSV starts a formula
        with path.open(newline="") as handle:
            for row in csv.reader(handle):
                assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), (path.name, row)
    raw = result.tables["responses"]
    assert comments["C00001"] in set(raw["value"])  # the tables in memory keep the readers' text as given
    numbers = pd.DataFrame({"x": [-1.5, 2.0], "n": [-3, 4], "text": ["-1.5", "=1+1"]})
    safe = csv_safe(numbers)
    assert safe["x"].tolist() == [-1.5, 2.0] and safe["n"].tolist() == [-3, 4]
    assert safe["text"].tolist() == ["-1.5", "'=1+1"] and numbers["text"].tolist() == ["-1.5", "=1+1"]
