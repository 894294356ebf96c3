"""The web reading app: access control, arms, answer validation, limits, concurrency, and a real browser."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from reader_app_helpers import (  # noqa: F401 (fixtures)
    ADMIN,
    ASSIGNMENTS,
    NUM_FRAMES,
    TOKENS,
    bearer,
    client,
    live_server,
    make_study,
    put,
    study,
)

fastapi = pytest.importorskip("fastapi", reason="the reading app needs fastapi (pip install -e .[test])")
from fastapi.testclient import TestClient  # noqa: E402

from monai_exaggeration.reader_study.server import MAX_BODY_BYTES, create_app, personal_links  # noqa: E402


def test_tokens_are_required_and_checked(client: TestClient) -> None:
    assert client.get("/api/study").status_code == 401
    assert client.get("/api/study", headers=bearer("not-a-token")).status_code == 403
    assert client.get("/assets/C00001/image.png").status_code == 401
    assert client.get("/api/study", headers=bearer("R1")).json()["reader_id"] == "R1"
    assert client.get("/api/progress", headers=bearer("R1")).status_code == 403  # readers see no one's progress
    progress = client.get("/api/progress", headers=bearer(ADMIN)).json()
    assert {r["reader_id"] for r in progress["readers"]} == {"R1", "R2"}


def test_personal_link_signs_in_with_a_cookie(client: TestClient) -> None:
    """The link's page posts the token to /api/session, which sets the cookie; no GET sets a cookie."""
    for path in ("/r", f"/r/{TOKENS['R2']}"):  # the link /r#<token> (fragment not sent) and the older /r/<token>
        page = client.get(path, follow_redirects=False)
        assert page.status_code == 200 and "/static/signin.js" in page.text and "set-cookie" not in page.headers
    assert client.get("/api/me").status_code == 401
    response = client.post("/api/session", json={"token": TOKENS["R2"]})
    assert response.status_code == 200 and response.json() == {"reader_id": "R2", "role": "reader", "next": "/read"}
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert client.get("/api/me").json() == {"reader_id": "R2", "role": "reader"}  # the cookie is enough now
    wrong = client.post("/api/session", json={"token": "wrong-token"})
    assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
    assert client.post("/api/session", json={"nothing": 1}).status_code == 422
    form = client.post("/api/session", content=f'{{"token": "{TOKENS["R1"]}"}}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415  # JSON only: a cross-site form cannot sign a browser in
    assert client.post("/api/session", json={"token": ADMIN}).json()["next"] == "/admin"
    assert client.delete("/api/session").status_code == 200 and client.get("/api/me").status_code == 401


def test_each_arm_shows_only_its_assets(client: TestClient) -> None:
    series = client.get("/api/cases/C00001", headers=bearer("R1")).json()  # R1 reads C00001 with the series
    assert series["arm"] == "series" and len(series["frames"]) == NUM_FRAMES and not series["explained"]
    assert "saliency" not in series and "scores" not in series  # the scores come with the explanation
    image_only = client.get("/api/cases/C00002", headers=bearer("R1")).json()
    assert image_only["arm"] == "image" and not {"frames", "scores", "saliency"} & set(image_only)
    assert "understandability" not in {q["id"] for q in image_only["questions"]}  # asked only with an explanation
    saliency = client.get("/api/cases/C00003", headers=bearer("R1")).json()
    assert saliency["saliency"] == "/assets/C00003/saliency.png" and "frames" not in saliency
    # the images follow the same rules (once the forced-choice image, shown first, has been judged)
    for reader, case in (("R1", "C00001"), ("R1", "C00002"), ("R2", "C00002")):
        assert put(client, reader, case, "real_or_generated", "real").status_code == 200
    assert client.get("/assets/C00001/frame_002.png", headers=bearer("R1")).status_code == 200
    assert client.get("/assets/C00002/frame_002.png", headers=bearer("R1")).status_code == 403
    assert client.get("/assets/C00002/saliency.png", headers=bearer("R2")).status_code == 200
    assert len(client.get("/api/cases/C00001", headers=bearer("R1")).json()["scores"]) == NUM_FRAMES  # frame served
    assert len(client.get("/api/cases/C00001", headers=bearer(ADMIN)).json()["scores"]) == NUM_FRAMES
    assert client.get("/api/cases/C99999", headers=bearer("R1")).status_code == 404


def test_every_question_type_is_stored_and_validated(client: TestClient, study: Path) -> None:
    valid = {
        ("C00001", "confidence_before"): 4,
        ("C00001", "real_or_generated"): "generated",
        ("C00001", "understandability"): 5,
        ("C00001", "helpful"): True,
        ("C00001", "what_changed"): ["devices", "heart size"],
        ("C00001", "comment"): "the heart grows",
    }
    for (case, question), value in valid.items():
        response = put(client, "R1", case, question, value)
        assert response.status_code == 200, response.text
    stored = {
        row["question_id"]: row["value"] for row in client.get("/api/readers/R1/answers", headers=bearer("R1")).json()
    }
    assert stored["helpful"] == "yes" and stored["what_changed"] == ["heart size", "devices"]  # canonical forms
    assert stored["confidence_before"] == 4 and stored["comment"] == "the heart grows"
    invalid = [
        ("confidence_before", 6),
        ("confidence_before", "4"),
        ("confidence_before", True),
        ("real_or_generated", "maybe"),
        ("helpful", "perhaps"),
        ("what_changed", ["heart size", "lungs"]),
        ("what_changed", []),
        ("comment", "x" * 5000),
    ]
    for question, value in invalid:
        response = put(client, "R1", "C00001", question, value)
        assert response.status_code == 422, (question, value, response.text)
    assert (
        client.put(
            "/api/answers/C00001/helpful",
            content=b"not json",
            headers={**bearer("R1"), "Content-Type": "application/json"},
        ).status_code
        == 422
    )
    assert client.put("/api/answers/C00001/helpful", json={"answer": "yes"}, headers=bearer("R1")).status_code == 422
    assert put(client, "R1", "C99999", "helpful", "yes").status_code == 404
    assert put(client, "R1", "C00002", "understandability", 3).status_code == 404  # not asked in the image-only arm
    assert put(client, "R1", "C00001", "no_such_question", 3).status_code == 404
    big = json.dumps({"value": "x" * (MAX_BODY_BYTES + 10)})
    assert (
        client.put(
            "/api/answers/C00001/comment", content=big, headers={**bearer("R1"), "Content-Type": "application/json"}
        ).status_code
        == 413
    )
    assert put(client, ADMIN, "C00001", "helpful", "yes").status_code == 403  # the administrator does not answer


def test_forced_choice_image_comes_first_and_its_answer_is_final(client: TestClient) -> None:
    """The forced-choice image may be the case's own source: nothing else of the case is served before it is judged."""
    choice = client.get("/api/cases/C00001", headers=bearer("R1")).json()["forced_choice"]
    assert client.get(choice, headers=bearer("R1")).status_code == 200
    for name in ("image.png", "frame_000.png"):
        refused = client.get(f"/assets/C00001/{name}", headers=bearer("R1"))
        assert refused.status_code == 403 and "real-or-generated" in refused.json()["detail"]
    assert (
        client.get("/assets/C00001/image.png", headers=bearer(ADMIN)).status_code == 200
    )  # the administrator is not blinded
    assert put(client, "R1", "C00001", "real_or_generated", "generated").status_code == 200
    assert client.get("/assets/C00001/image.png", headers=bearer("R1")).status_code == 200
    assert (
        put(client, "R1", "C00001", "real_or_generated", "generated").status_code == 200
    )  # the same answer again: fine
    changed = put(client, "R1", "C00001", "real_or_generated", "real")
    assert changed.status_code == 409 and "final" in changed.json()["detail"]
    assert client.get("/assets/C00003/image.png", headers=bearer("R1")).status_code == 403  # per case
    assert client.get("/assets/C00001/image.png", headers=bearer("R2")).status_code == 403  # per reader


def test_readers_cannot_see_or_change_each_others_answers(client: TestClient) -> None:
    assert put(client, "R2", "C00003", "helpful", "no").status_code == 200
    assert put(client, "R1", "C00003", "helpful", "yes").status_code == 200  # R1's own answer, not R2's
    assert client.get("/api/readers/R2/answers", headers=bearer("R1")).status_code == 403
    own = client.get("/api/readers/R2/answers", headers=bearer("R2")).json()
    assert [(r["case_id"], r["question_id"], r["value"]) for r in own] == [("C00003", "helpful", "no")]
    assert client.get("/api/study", headers=bearer("R1")).json()["answers"] == {"C00003": {"helpful": "yes"}}
    everyone = client.get("/api/readers/R2/answers", headers=bearer(ADMIN))
    assert everyone.status_code == 200 and len(everyone.json()) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/assets/C00001/..%2F..%2Fprivate%2Freaders.json",
        "/assets/C00001/%2E%2E%2Fstudy.json",
        "/assets/..%2Fprivate/readers.json",
        "/assets/C00001/../../private/readers.json",
        "/static/../private/readers.json",
        "/static/..%2F..%2Fprivate%2Freaders.json",
        "/assets/C00001/image.png%00.json",
    ],
)
def test_no_path_traversal(client: TestClient, path: str) -> None:
    response = client.get(path, headers=bearer("R1"))
    assert response.status_code in (400, 403, 404), (path, response.status_code)
    assert TOKENS["R1"] not in response.text and ADMIN not in response.text


def test_concurrent_readers_lose_no_answer(study: Path) -> None:
    """Two readers answering 3 cases x 3 questions, each answer sent twice, 12 threads, over real HTTP."""
    import httpx

    jobs = [
        (reader, case, question, value)
        for reader, items in ASSIGNMENTS.items()
        for case, _ in items
        for question, value in (("confidence_before", 3), ("helpful", "yes"), ("comment", f"{reader} on {case}"))
    ] * 2
    with live_server(study) as url, ThreadPoolExecutor(max_workers=12) as pool:

        def send(job):
            reader, case, question, value = job
            return httpx.put(
                f"{url}/api/answers/{case}/{question}", json={"value": value}, headers=bearer(reader), timeout=30
            ).status_code

        statuses = list(pool.map(send, jobs))
        assert statuses == [200] * len(jobs)
        rows = {
            reader: httpx.get(f"{url}/api/readers/{reader}/answers", headers=bearer(ADMIN)).json() for reader in TOKENS
        }
    for reader, answers in rows.items():
        keys = [(r["case_id"], r["question_id"]) for r in answers]
        assert len(keys) == len(set(keys)) == 9, reader
        assert {r["value"] for r in answers if r["question_id"] == "comment"} == {
            f"{reader} on {c}" for c, _ in ASSIGNMENTS[reader]
        }


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    return path


def test_reader_session_in_a_real_browser(study: Path, tmp_path: Path) -> None:
    """Log in with the personal link, answer every question type, step with the keyboard, close, resume."""
    import httpx
    from playwright.sync_api import expect, sync_playwright

    artifacts = Path(os.environ.get("EXAG_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with live_server(study) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(personal_links(study, url)["R1"])  # /r#<token>, as `reader-study links` prints it
        expect(page.locator("#case-title")).to_contain_text("Case 1 of 3")  # R1's first case: the series arm
        assert page.url == f"{url}/read"  # no token left in the address bar
        expect(page.locator("#who")).to_have_text("reader R1")
        # first the real-vs-generated image alone, nothing else of the case
        expect(page.locator("#choice-step")).to_be_visible()
        expect(page.locator("#frame-label")).to_have_text("real or generated?")
        assert page.locator("#before").is_hidden() and page.locator("#series-controls").is_hidden()
        expect(page.locator("#confirm-choice")).to_be_disabled()
        page.locator("fieldset[data-question=real_or_generated] input[value='real']").check()
        page.locator("#confirm-choice").click()
        expect(page.locator("#before")).to_be_visible()
        expect(page.locator("fieldset[data-question=real_or_generated] input[value='real']")).to_be_disabled()  # final
        expect(page.locator("#frame-label")).to_have_text("image")
        # before the explanation: confidence on the image alone
        page.locator("fieldset[data-question=confidence_before] input[value='2']").check()
        expect(page.locator("#saved")).to_have_text("saved")
        assert page.locator("#series-controls").is_hidden()
        page.locator("#reveal").click()
        expect(
            page.locator("fieldset[data-question=confidence_before] input[value='3']")
        ).to_be_disabled()  # final once explained
        frozen = httpx.put(
            f"{url}/api/answers/C00001/confidence_before", json={"value": 3}, headers=bearer("R1"), timeout=30
        )
        assert frozen.status_code == 409  # the server keeps it final too: the page fetched the explanation
        # the series: keyboard stepping and playing
        expect(page.locator("#series-controls")).to_be_visible()
        expect(page.locator("#step-label")).to_have_text(f"frame 1 / {NUM_FRAMES}")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#step-label")).to_have_text(f"frame 3 / {NUM_FRAMES}")
        expect(page.locator("#frame-label")).to_contain_text("classifier score 0.50")
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#step-label")).to_have_text(f"frame 2 / {NUM_FRAMES}")
        page.keyboard.press(" ")
        expect(page.locator("#play")).to_contain_text("pause")
        page.keyboard.press(" ")
        expect(page.locator("#play")).to_contain_text("play")
        page.locator("#window").fill("120")  # window/level redraws without error
        # after the explanation: Likert, yes/no, multiple choice, free text
        page.locator("fieldset[data-question=understandability] input[value='4']").check()
        expect(page.locator("#saved")).to_have_text("saved")
        page.locator("fieldset[data-question=helpful] input[value='yes']").check()
        expect(page.locator("#saved")).to_have_text("saved")
        page.locator("fieldset[data-question=what_changed] input[value='heart size']").check()
        expect(page.locator("#saved")).to_have_text("saved")
        page.locator("fieldset[data-question=comment] textarea").fill("bigger heart")
        page.locator("fieldset[data-question=comment] textarea").blur()
        expect(page.locator("#saved")).to_have_text("saved")
        expect(page.locator("#cases button.complete")).to_have_count(1)
        page.screenshot(path=str(artifacts / "reader_app.png"), full_page=True)
        # the second case (image only) gets one answer, then the browser is closed
        page.locator("#next").click()
        expect(page.locator("#case-title")).to_contain_text("Case 2 of 3")
        assert page.locator("#saliency-panel").is_hidden() and page.locator("#series-controls").is_hidden()
        page.locator("fieldset[data-question=real_or_generated] input[value='generated']").check()
        page.locator("#confirm-choice").click()
        page.locator("fieldset[data-question=confidence_before] input[value='5']").check()
        expect(page.locator("#saved")).to_have_text("saved")
        context.close()
        # a fresh browser: the personal link (here in its older /r/<token> form) resumes at the first unfinished case
        context = browser.new_context()
        page = context.new_page()
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{url}/r/{TOKENS['R1']}")
        expect(page.locator("#case-title")).to_contain_text("Case 2 of 3")
        expect(page.locator("fieldset[data-question=confidence_before] input[value='5']")).to_be_checked()
        expect(page.locator("#progress")).to_have_text("1 of 3 cases complete")
        # the administrator's progress page
        admin = context.new_page()
        admin.on("console", lambda message: console.append(message.text))
        admin.goto(personal_links(study, url)["admin"])
        expect(admin.locator("tr[data-reader=R1] td").nth(1)).to_have_text("1")
        assert admin.url == f"{url}/admin"
        browser.close()
    assert not [text for text in console if "Content Security Policy" in text], console  # nothing inline was blocked
    stored = {
        (r["case_id"], r["question_id"]): r["value"]
        for r in TestClient(create_app(study)).get("/api/readers/R1/answers", headers=bearer(ADMIN)).json()
    }
    assert stored[("C00001", "comment")] == "bigger heart" and stored[("C00001", "what_changed")] == ["heart size"]
    assert stored[("C00002", "confidence_before")] == 5 and stored[("C00002", "real_or_generated")] == "generated"
    assert len(stored) == 8
    assert (artifacts / "reader_app.png").stat().st_size > 10_000


def test_personal_links_and_bad_folders(study: Path, tmp_path: Path) -> None:
    from monai_exaggeration.reader_study.server import StudyError, personal_links

    links = personal_links(study, "http://localhost:8765/")
    assert (
        links["R1"] == f"http://localhost:8765/r#{TOKENS['R1']}"
        and links["admin"] == f"http://localhost:8765/r#{ADMIN}"
    )
    with pytest.raises(StudyError, match="not a study folder"):
        create_app(tmp_path / "empty")


def test_serve_command_prints_links_and_serves(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`reader-study serve` as a user runs it: personal links in private/links.txt (not printed), the app answering
    on loopback, Ctrl-C stops it; `reader-study links` prints the links."""
    import signal
    import subprocess
    import sys
    import time

    import httpx
    from conftest import REPO_ROOT
    from reader_app_helpers import free_port

    bad = subprocess.run(
        [sys.executable, "-m", "monai_exaggeration", "reader-study", "serve", str(tmp_path / "nothing")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "not a study folder" in bad.stderr and "Traceback" not in bad.stderr
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "monai_exaggeration", "reader-study", "serve", str(study), "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Uvicorn running" in line or "Application startup complete" in line or not line:
                break
        printed = "".join(lines)
        links_file = study / "private" / "links.txt"
        assert str(links_file.resolve()) in printed and TOKENS["R1"] not in printed and ADMIN not in printed, printed
        listed = dict(line.split("\t") for line in links_file.read_text().splitlines() if not line.startswith("#"))
        assert listed == personal_links(study, f"http://localhost:{port}") and listed["R1"].endswith(
            f"/r#{TOKENS['R1']}"
        )
        assert links_file.stat().st_mode & 0o077 == 0  # the owner's only
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as browser:
            assert browser.post("/api/session", json={"token": TOKENS["R2"]}).status_code == 200
            response = browser.get("/read")
            assert response.status_code == 200 and "reader.js" in response.text
            assert browser.get("/api/me").json()["reader_id"] == "R2"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    from monai_exaggeration.cli import main

    assert main(["reader-study", "links", str(study), "--base-url", "https://study.example.org/"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert (
        f"R1\thttps://study.example.org/r#{TOKENS['R1']}" in shown
        and f"admin\thttps://study.example.org/r#{ADMIN}" in shown
    )
    assert main(["reader-study", "links", str(tmp_path / "nothing")]) == 2
