"""The inference tests' shared fixtures, session-scoped: the heavy paths run once and many tests read their outputs.

* ``classifier``: the shipped classifier, loaded once;
* ``runner_factory``: ``runner_factory(**settings)`` -> an ExaggerationInference with the shipped models
  (that classifier), configured as inference.json; ``runner``: one such runner, prepared, no quick-looks;
* ``default_run``: ONE ``python -m monai.bundle run inference`` on the default input (RG1_UNCR.dcm);
* ``plain_run_bad_folder``: one plain ``run`` (5 frames, model resolution) on RG1 plus three bad files;
* ``png_runs``: a PNG run with inference.json's settings, the same again elsewhere, bits=16 and resolution=model.

Tests that only read these outputs must not change them (except by re-running the same settings).
The fixtures of ``tests/conftest.py`` (``rg1_uncr``, ...) are available here too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_bundle
from pydicom.data import get_testdata_file

from inference.helpers import ONE_THREAD, inference_args, png_chest, shipped_runner, truncated_dicom
from monai_exaggeration.bundle import load_bundle_classifier


@pytest.fixture(scope="session")
def classifier():
    """The shipped classifier, loaded once and shared by the in-process runners."""
    return load_bundle_classifier()


@pytest.fixture(scope="session")
def runner_factory(classifier):
    """``runner_factory(**settings)``: the shipped models with ``settings`` (see ``helpers.shipped_runner``)."""
    return lambda **settings: shipped_runner(classifier, **settings)


@pytest.fixture(scope="session")
def runner(runner_factory):
    """One prepared shipped-model runner without quick-looks (for tests that do not care about other settings)."""
    return runner_factory().prepare()


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory):
    """The README's main job: ``run inference`` on the default input (RG1_UNCR.dcm), 10 frames at source resolution."""
    out = tmp_path_factory.mktemp("default_run") / "out"
    result = run_bundle(inference_args(out), env=ONE_THREAD)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="session")
def plain_run_bad_folder(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path):
    """Plain ``run`` (no run id), 5 frames at model resolution, on RG1 plus three bad files."""
    root = tmp_path_factory.mktemp("plain_run")
    inbox = root / "inbox"
    inbox.mkdir()
    shutil.copy(rg1_uncr, inbox / "chest.dcm")
    truncated_dicom(inbox / "truncated.dcm", rg1_uncr)
    (inbox / "notes.png").write_text("not an image at all\n")
    shutil.copy(get_testdata_file("CT_small.dcm"), inbox / "ct.dcm")
    out = root / "out"
    args = inference_args(out, "--input", str(inbox), "--num_frames", "5", "--resolution", "model", run_id="")
    return inbox, out, run_bundle(args, env=ONE_THREAD)


@pytest.fixture(scope="session")
def png_runs(tmp_path_factory: pytest.TempPathFactory, runner_factory) -> dict:
    """One PNG run with inference.json's settings ("a"), the same again elsewhere ("b"), with bits=16 ("bits16")
    and with resolution=model ("model"); ``summaries`` holds their InferenceSummary, ``input`` the PNG."""
    root = tmp_path_factory.mktemp("png_runs")
    png = png_chest(root / "input" / "chest.png")
    outs: dict = {"input": png, "summaries": {}}
    for name, settings in [("a", {}), ("b", {}), ("bits16", {"bits": 16}), ("model", {"resolution": "model"})]:
        outs[name] = root / name
        summary = runner_factory(**settings).run(png, outs[name])
        assert summary.exit_code == 0 and summary.num_files == 10
        outs["summaries"][name] = summary
    return outs
