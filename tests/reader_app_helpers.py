"""A small hand-made study folder (the ``reader-study build`` layout) and a live server for the reading-app tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

TOKENS = {"R1": "token-reader-one-0123456789abcdef", "R2": "token-reader-two-0123456789abcdef"}
ADMIN = "token-admin-0123456789abcdef-admin"
NUM_FRAMES = 5

QUESTIONS = [
    {
        "id": "confidence_before",
        "type": "likert",
        "prompt": "Cardiomegaly: how confident are you?",
        "phase": "before",
        "min": 1,
        "max": 5,
        "labels": ["absent", "", "unsure", "", "present"],
    },
    {
        "id": "real_or_generated",
        "type": "forced_choice",
        "prompt": "Is the right image real or generated?",
        "phase": "before",
    },
    {
        "id": "understandability",
        "type": "likert",
        "prompt": "How understandable is the explanation?",
        "phase": "after",
        "min": 1,
        "max": 5,
        "arms": ["saliency", "series"],
    },
    {"id": "helpful", "type": "yes_no", "prompt": "Did the explanation help?", "phase": "after"},
    {
        "id": "what_changed",
        "type": "choice",
        "prompt": "What changed?",
        "phase": "after",
        "multiple": True,
        "options": ["heart size", "pleural effusion", "devices", "other"],
    },
    {"id": "comment", "type": "text", "prompt": "Comments", "phase": "after"},
]
ARMS = [
    {"id": "image", "label": "Image only", "shows": ["image"]},
    {"id": "saliency", "label": "Saliency map", "shows": ["image", "saliency"]},
    {"id": "series", "label": "Exaggeration series", "shows": ["image", "series", "scores"]},
]
ASSIGNMENTS = {
    "R1": [("C00001", "series"), ("C00002", "image"), ("C00003", "saliency")],
    "R2": [("C00002", "saliency"), ("C00003", "series"), ("C00001", "image")],
}


def _png(path: Path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.clip(pixels, 0, 255).astype(np.uint8))
    return path.as_posix()


def make_study(folder: Path) -> Path:
    """Write a three-case, two-reader study in the builder's layout; return the folder."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    cases = {}
    for number, (case_id, _) in enumerate(ASSIGNMENTS["R1"]):
        base = 60 + 100 * np.exp(-((xx - 48) ** 2 + (yy - 52) ** 2) / (300 + 40 * number)) + rng.normal(0, 3, (96, 96))
        assets = Path("assets") / case_id
        image = _png(folder / assets / "image.png", base)
        frames = [
            _png(
                folder / assets / f"frame_{step:03d}.png",
                base + 25 * step * np.exp(-((xx - 48) ** 2 + (yy - 52) ** 2) / 200),
            )
            for step in range(NUM_FRAMES)
        ]
        saliency = _png(folder / assets / "saliency.png", 255 * np.exp(-((xx - 40) ** 2 + (yy - 50) ** 2) / 150))
        choice = _png(folder / assets / "choice.png", base[::-1])
        cases[case_id] = {
            "image": Path(image).relative_to(folder).as_posix(),
            "frames": [Path(f).relative_to(folder).as_posix() for f in frames],
            "scores": [round(0.1 + 0.2 * step, 2) for step in range(NUM_FRAMES)],
            "saliency": Path(saliency).relative_to(folder).as_posix(),
            "forced_choice": Path(choice).relative_to(folder).as_posix(),
        }
    study = {
        "format": 1,
        "title": "Test study",
        "instructions": "Read each case.",
        "arms": ARMS,
        "questions": QUESTIONS,
        "cases": cases,
        "readers": list(TOKENS),
        "assignments": {reader: [{"case_id": c, "arm": a} for c, a in items] for reader, items in ASSIGNMENTS.items()},
    }
    (folder / "study.json").write_text(json.dumps(study, indent=2))
    (folder / "private").mkdir(exist_ok=True)
    (folder / "private" / "readers.json").write_text(json.dumps({"readers": TOKENS, "admin_token": ADMIN}))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(study_dir: Path) -> Iterator[str]:
    """Serve the reading app with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    from monai_exaggeration.reader_study.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(study_dir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the reading app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def bearer(reader: str) -> dict:
    """The Authorization header of a reader (by name, or a raw token)."""
    return {"Authorization": f"Bearer {TOKENS.get(reader, reader)}"}


def put(client, reader: str, case: str, question: str, value) -> object:
    """Answer one question of one case as ``reader``."""
    return client.put(f"/api/answers/{case}/{question}", json={"value": value}, headers=bearer(reader))


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    return make_study(tmp_path / "study")


@pytest.fixture()
def client(study: Path):
    from fastapi.testclient import TestClient

    from monai_exaggeration.reader_study.server import create_app

    return TestClient(create_app(study))
