"""A new user's first hour: set-up, one-line errors, paths, one score per image, input checks, exit codes.

Each test guards one finding of the "new user's first hour" review (see docs/install.md and
docs/inference.md for the behaviour they pin down).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, run_bundle
from inference.helpers import chest_png, make_runner
from PIL import Image

from monai_exaggeration.cli import main as cli_main
from monai_exaggeration.errors import CXRInputError, DatasetNotFoundError, user_message
from monai_exaggeration.transforms import InputLimits, LoadCXR, read_cxr
from monai_exaggeration.utils import json_text

CONFIGS = REPO_ROOT / "bundles" / "cxr" / "configs"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------- 1. set-up


def test_setup_in_a_ready_environment_installs_nothing() -> None:
    """A second setup_env.sh call recognises the environment (no pip, no import of torch)."""
    env = {**os.environ, "VENV": sys.prefix}
    script = REPO_ROOT / "scripts" / "setup_env.sh"
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "installing" not in again.stdout + again.stderr
    assert again.stdout.strip().startswith("[setup] ready: monai_exaggeration")
    assert again.stderr == ""  # quiet: no pip or setuptools warnings


def test_packaging_declares_the_reader_app_assets() -> None:
    """setuptools warns about 'static' unless it is a declared (namespace) package."""
    setup = (REPO_ROOT / "setup.cfg").read_text()
    assert "packages = find_namespace:" in setup
    from setuptools import find_namespace_packages

    packages = find_namespace_packages(str(REPO_ROOT), include=["monai_exaggeration*"])
    assert "monai_exaggeration.reader_study.static" in packages


# ----------------------------------------------------------------------------------- 2. errors


def test_bare_design_card_command_is_one_line_exit_2(tmp_path: Path) -> None:
    """`python -m monai.bundle run training --config_file .../train.json` without a dataset."""
    args = ["run", "training", "--config_file", str(CONFIGS / "train.json"), "--dataset_dir", str(tmp_path / "none")]
    result = run_bundle(args, cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Dataset not found" in errors[0] and "docs/datasets.md" in errors[0]
    assert "shared" not in result.stderr  # the hint names the docs, not a development folder
    assert result.stderr.strip().splitlines()[-1] == errors[0]  # the error is the last line (--debug: docs)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = ["run", "training", "--config_file", str(CONFIGS / "train.json"), "--dataset_dir", str(tmp_path / "none")]
    result = run_bundle(args, cwd=tmp_path, env={**ONE_THREAD, "EXAG_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "DatasetNotFoundError" in result.stderr


def test_user_message_finds_the_cause_inside_monai_wrapping(tmp_path: Path) -> None:
    try:
        try:
            raise DatasetNotFoundError(f"Dataset not found: {tmp_path}")
        except DatasetNotFoundError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from inner
    except RuntimeError as outer:
        assert user_message(outer) == f"Dataset not found: {tmp_path}"
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError as bug:
        assert user_message(bug) is None  # program errors keep their traceback


def test_cli_user_error_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["export", str(tmp_path), "--config", str(tmp_path / "no.yaml"), "--host", "pacs"])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.out + captured.err


# ----------------------------------------------------------------------------------- 4. paths


def test_quickstart_paths_are_relative_to_the_user(tmp_path: Path, rg1_uncr: Path) -> None:
    """`bash <repo>/scripts/quickstart.sh --input one.png` from another folder: input found, output there."""
    work = tmp_path / "elsewhere"
    chest_png(work / "one.png", rg1_uncr, size=(256, 256))
    env = {**os.environ, **ONE_THREAD, "VENV": sys.prefix}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "quickstart.sh"), "--input", "one.png", "--quicklook", "false"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = work / "exaggeration_output"
    assert len(list((out / "dicom").glob("*/step_*.dcm"))) == 10
    sources = pd.read_csv(out / "sources.csv")
    assert sources["source"].tolist() == [str((work / "one.png").resolve())]
    assert str(out / "dicom") in result.stdout  # the summary names the real series folder
    assert "<SeriesInstanceUID>" not in result.stdout


# ----------------------------------------------------------------------------------- 5. one score per image


def test_inference_source_score_equals_classify(tmp_path: Path, rg1_uncr: Path) -> None:
    png = chest_png(tmp_path / "in" / "chest.png", rg1_uncr, size=(300, 240))
    shutil.copy(rg1_uncr, tmp_path / "in" / "rg1.dcm")
    assert cli_main(["classify", "--input", str(tmp_path / "in"), "--output_dir", str(tmp_path / "cls")]) == 0
    classified = pd.read_csv(tmp_path / "cls" / "scores.csv").set_index("image")["score"]
    runner = make_runner(quicklook=False)
    runner.prepare()
    for path in (png, tmp_path / "in" / "rg1.dcm"):
        result = runner.explain(path)
        assert abs(result.source_score - classified[str(path.resolve())]) < 1e-4


# ----------------------------------------------------------------------------------- 6. input checks


def _png(path: Path, rows: int, columns: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient = np.add.outer(np.arange(rows), np.arange(columns)) % 256
    Image.fromarray(gradient.astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("rows", "columns", "problem"),
    [
        (1, 1, "smaller than the minimum 64 x 64"),
        (63, 200, "smaller than the minimum"),
        (100, 400, "aspect ratio beyond 3:1"),
    ],
)
def test_tiny_or_strip_images_are_refused(tmp_path: Path, rows: int, columns: int, problem: str) -> None:
    path = _png(tmp_path / "image.png", rows, columns)
    with pytest.raises(CXRInputError, match=problem):
        read_cxr(path, InputLimits.for_sources())
    read_cxr(path)  # training data (no lower bounds) still loads


def test_limits_are_configurable(tmp_path: Path) -> None:
    path = _png(tmp_path / "small.png", 40, 40)
    assert read_cxr(path, InputLimits.for_sources(min_size=32)).pixels.shape == (40, 40)


def test_empty_file_says_empty(tmp_path: Path) -> None:
    for name in ("empty.dcm", "empty.png", "empty"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(CXRInputError, match="empty file"):
            read_cxr(tmp_path / name)


def test_oversized_image_is_refused_before_decoding(tmp_path: Path) -> None:
    """An 8000 x 8000 PNG (64 MP, 1.5 MB on disk): refused from its header, without gigabytes of memory."""
    import tracemalloc

    path = tmp_path / "huge.png"
    Image.new("L", (8000, 8000), color=128).save(path)
    tracemalloc.start()
    with pytest.raises(CXRInputError, match=r"8000 x 8000 \(64.0 MP\), above the limit of 50 MP"):
        read_cxr(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6  # nothing was decoded (the pixels alone would be 64 MB as uint8)
    with pytest.raises(CXRInputError, match="above the limit of 0.001 MB"):
        read_cxr(path, InputLimits(max_file_mb=0.001))


def test_library_warnings_go_to_the_log_not_the_console(tmp_path: Path, rg1_uncr: Path) -> None:
    import warnings

    import pydicom

    dataset = pydicom.dcmread(rg1_uncr)
    dataset.add_new((0x0009, 0x0010), "LO", "PRIVATE")  # a private creator ...
    dataset.add_new((0x0009, 0x1001), "UN", b"\x01\x02\x03")  # ... and an element pydicom cannot look up
    path = tmp_path / "odd.dcm"
    dataset.save_as(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_cxr(path)
    assert caught == []


def test_exit_codes_follow_the_table(tmp_path: Path, rg1_uncr: Path) -> None:
    """0 all written, 1 some inputs failed, 2 all inputs failed; the summary never shows placeholders."""
    runner = make_runner(quicklook=False)
    good = chest_png(tmp_path / "some" / "good.png", rg1_uncr, size=(128, 128))
    _png(tmp_path / "some" / "tiny.png", 1, 1)
    some = runner.run(tmp_path / "some", tmp_path / "out_some")
    assert (some.num_series, len(some.failures), some.exit_code) == (1, 1, 1)
    assert "<" not in some.describe() and str(Path(some.series_dirs[0])) in some.describe()
    errors = pd.read_csv(tmp_path / "out_some" / "errors.csv")
    assert "smaller than the minimum 64 x 64" in errors["error"][0]
    (tmp_path / "none").mkdir()
    _png(tmp_path / "none" / "tiny.png", 1, 1)
    none = runner.run(tmp_path / "none", tmp_path / "out_none")
    assert (none.num_series, none.exit_code) == (0, 2)
    # the header-only logs are written files: the summary lists them instead of "nothing was written"
    assert "nothing was written" not in none.describe() and "dicom" not in none.describe()
    assert "frames.csv (no series of this run)" in none.describe()
    assert not (tmp_path / "out_none" / "dicom").exists()
    assert runner.run(good, tmp_path / "out_all").exit_code == 0


def test_bundle_all_inputs_failed_exits_2(tmp_path: Path) -> None:
    _png(tmp_path / "tiny.png", 1, 1)
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--input",
            str(tmp_path / "tiny.png"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        env=ONE_THREAD,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no series of this run" in result.stdout and "nothing was written" not in result.stdout
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_json_outputs_never_contain_nan() -> None:
    text = json_text(
        {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32("nan"), "d": np.array([0.5, np.nan])}
    )
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": None, "d": [0.5, None]}
    assert "NaN" not in text and "Infinity" not in text
    assert math.isclose(json.loads(json_text({"x": np.float64(0.25)}))["x"], 0.25)


def test_series_ctr_script_writes_null_not_nan() -> None:
    source = (REPO_ROOT / "scripts" / "series_ctr.py").read_text()
    assert "json_text(" in source and "json.dumps(" not in source


# ----------------------------------------------------------------------------------- 7. docs and hygiene


def test_user_docs_do_not_point_at_the_development_folder() -> None:
    files = [
        REPO_ROOT / "README.md",
        REPO_ROOT / "bundles" / "cxr" / "docs" / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
    ]
    files += list((REPO_ROOT / "monai_exaggeration").rglob("*.py")) + list((REPO_ROOT / "scripts").glob("*"))
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ("../shared" in line or "DESIGN.md" in line) and "EXAG_SHARED_DATA" not in line:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_gitignore_covers_the_default_output_folders() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().split()
    for folder in ("exaggeration_output/", "classify_output/", "exaggeration_evaluation/", "test-artifacts/"):
        assert folder in ignored
    assert (REPO_ROOT / "docs" / "method.md").is_file()


def test_loader_keeps_the_pixel_digest(rg1_uncr: Path) -> None:
    image = LoadCXR()(rg1_uncr)
    assert len(image.meta["pixel_sha256"]) == 64
