"""A sink added from outside the package (issue 27): one module (``tests/plugins/toy_sink.py``) plus its entry
in ``writers`` of a config merged last; it gets the in-memory series and its files follow the run's clean-up."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_bundle
from inference.helpers import BUNDLE, INFERENCE, ONE_THREAD, png_chest

PLUGINS = Path(__file__).resolve().parent / "plugins"


def _with_sink(folder: Path, fail: bool) -> str:
    """An override merged last: the config's own imports plus the toy sink's module, and the sink after the DICOM writer."""
    config = json.loads(Path(INFERENCE).read_text())
    sink = {"_target_": "toy_sink.ScoreSheetWriter", "fail": fail}
    path = folder / f"sink_{'failing' if fail else 'ok'}.json"
    path.write_text(
        json.dumps({"imports": [*config["imports"], "$import toy_sink"], "writers": [*config["writers"], sink]})
    )
    return str(path)


def _run(tmp_path: Path, source: Path, name: str, fail: bool):
    configs = f"['{INFERENCE}','{_with_sink(tmp_path, fail)}']"
    args = ["run", "inference", "--config_file", configs, "--bundle_root", BUNDLE, "--input", str(source)]
    args += ["--output_dir", str(tmp_path / name), "--num_frames", "3", "--quicklook", "false"]
    return run_bundle(args, env=dict(ONE_THREAD, PYTHONPATH=str(PLUGINS)))


def test_a_writer_from_outside_the_package_gets_each_series_and_its_files_are_cleaned_up_on_failure(
    tmp_path: Path,
) -> None:
    source = png_chest(tmp_path / "in" / "chest.png")
    result = _run(tmp_path, source, "ok", fail=False)
    assert result.returncode == 0, result.stderr[-3000:]
    frames = pd.read_csv(tmp_path / "ok" / "frames.csv")
    sheets = list((tmp_path / "ok" / "scores").glob("*.json"))
    assert [sheet.stem for sheet in sheets] == [str(frames["series_instance_uid"].iloc[0])]
    sheet = json.loads(sheets[0].read_text())
    assert sheet["scores"] == pytest.approx(frames["score"].tolist(), abs=1e-6)  # the in-memory scores, as logged
    assert len(sheet["targets"]) == 3 and sheet["method"] == "progressive_exaggeration"

    result = _run(tmp_path, source, "failing", fail=True)
    assert result.returncode != 0  # the only input failed
    errors = pd.read_csv(tmp_path / "failing" / "errors.csv")
    assert "the toy sink failed on purpose" in errors.to_string()
    assert not list((tmp_path / "failing").rglob("*.json")) and not list((tmp_path / "failing").rglob("*.dcm"))
