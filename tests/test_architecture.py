"""The package's rooms and their layers (docs/architecture.md): no import runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_exaggeration"

#: Each room (sub-package or top-level module) and its layer; a room may import rooms of its own layer or below.
LAYERS = {
    "errors": 0,
    "utils": 0,
    "binning": 0,
    "plotting": 0,
    "retry": 0,
    "storage": 0,
    "findings": 0,
    "__init__": 0,
    "config_models": 1,
    "transforms": 1,
    "data": 1,
    "metrics": 2,
    "dicom": 2,
    "export": 2,
    "viewer": 2,
    "networks": 3,
    "losses": 3,
    "methods": 4,
    "bundle": 5,
    "handlers": 5,
    "distributed": 5,
    "engines": 6,
    "inference": 7,
    "evaluation": 8,
    "node": 9,
    "reader_study": 9,
    "viewer_demo": 9,
    "cli": 10,
    "__main__": 10,
}


def _room(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "monai_exaggeration":
                rooms.add(parts[1] if len(parts) > 1 else "__init__")
    return rooms


def test_every_room_has_a_layer() -> None:
    rooms = {_room(path) for path in PACKAGE.rglob("*.py")}
    assert rooms <= set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))}"


def test_no_import_runs_back_up() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        for target in _imported_rooms(path) - {room}:
            if LAYERS[target] > LAYERS[room]:
                upward.append(
                    f"{path.relative_to(PACKAGE)} ({room}, layer {LAYERS[room]}) imports {target} (layer {LAYERS[target]})"
                )
    assert not upward, "\n".join(upward)
