"""The bundle's inference end to end: ``python -m monai.bundle run inference`` and inference.json through ConfigParser.

The default run, exit codes (0, 1 with bad files, 2 with one-line messages for unusable input,
weights or settings), the bundle properties, writers swapped or added from the config, and the
evaluator's ``val_handlers``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import run_bundle
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from PIL import Image

from inference.helpers import (
    BUNDLE,
    EVALUATE,
    INFERENCE,
    METADATA,
    ONE_THREAD,
    all_files,
    dicom_dir,
    inference_args,
    parsed_inference,
    png_chest,
    read_errors,
    read_frames,
    read_sources,
)
from monai_exaggeration.data.streaming import LoadFailure
from monai_exaggeration.inference import (
    ERROR_COLUMNS,
    FRAME_COLUMNS,
    SOURCE_COLUMNS,
    SeriesEngine,
    SeriesResult,
    SourceDataset,
)

# ----------------------------------------------------------------------------------- the default run


def test_default_run_writes_series_logs_and_quicklooks(default_run, rg1_uncr: Path) -> None:
    out, _ = default_run
    series = dicom_dir(out)
    assert len(series) == 1
    assert [p.name for p in all_files(series[0])] == [f"step_{i:03d}.dcm" for i in range(10)]
    frames, sources = read_frames(out), read_sources(out)
    assert list(frames.columns) == FRAME_COLUMNS and len(frames) == 10
    assert list(sources.columns) == SOURCE_COLUMNS and len(sources) == 1
    assert Path(frames["source"][0]).samefile(rg1_uncr)
    assert not (out / "errors.csv").exists()
    looks = [p for p in (out / "quicklook").iterdir()]
    assert len(looks) == 1 and looks[0].name.startswith("RG1_UNCR-")
    assert {p.name for p in looks[0].iterdir()} == {"series.gif", "montage.png", "scores.png"}
    with Image.open(sources["gif"][0]) as gif:
        assert gif.format == "GIF" and gif.is_animated and gif.n_frames >= 10
        assert gif.width <= 512 and gif.height < 1955 / 2  # a preview (plus caption), not the full matrix
    for key in ("montage", "score_plot"):
        assert Path(sources[key][0]).parent == looks[0]
        with Image.open(sources[key][0]) as image:
            image.load()
            assert image.format == "PNG" and image.width > 300 and min(image.size) > 100


def test_default_run_prints_the_summary_with_the_paths(default_run) -> None:
    out, result = default_run
    assert "1 input(s): 1 series written (10 DICOM files), 0 failed" in result.stdout
    for path in (out / "dicom", out / "frames.csv", out / "sources.csv", out / "quicklook"):
        assert str(path) in result.stdout
    assert "errors.csv" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_bundle_plain_run_with_options(tmp_path: Path, rg1_uncr: Path) -> None:
    """Plain ``run`` (no run id), 5 frames at model resolution, 16 bit, no quick-looks."""
    out = tmp_path / "out"
    args = inference_args(
        out,
        "--input",
        str(rg1_uncr),
        "--num_frames",
        "5",
        "--resolution",
        "model",
        "--bits",
        "16",
        "--quicklook",
        "false",
        run_id="",
    )
    result = run_bundle(args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    frames = read_frames(out)
    assert frames["target_bin"].tolist() == [0, 2, 4, 7, 9]
    ds = pydicom.dcmread(frames["output_file"][0])
    assert (ds.Rows, ds.Columns) == (128, 128) and ds.BitsAllocated == 16 and ds.pixel_array.dtype == np.uint16
    assert float(ds.WindowWidth) == 65536
    assert not (out / "quicklook").exists()


def test_bundle_plain_run_with_bad_files_exits_1_and_writes_the_good_one(plain_run_bad_folder) -> None:
    _, out, result = plain_run_bad_folder
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 input(s): 1 series written (5 DICOM files), 3 failed" in result.stdout
    assert str(out / "errors.csv") in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    errors = read_errors(out)
    assert list(errors.columns) == ERROR_COLUMNS
    assert sorted(Path(p).name for p in errors["source"]) == ["ct.dcm", "notes.png", "truncated.dcm"]
    frames = read_frames(out)
    assert {Path(p).name for p in frames["source"]} == {"chest.dcm"}
    assert frames["target_bin"].tolist() == [0, 2, 4, 7, 9] and frames["step"].tolist() == list(range(5))
    assert np.allclose(frames["target_centre"], [0.05, 0.25, 0.45, 0.75, 0.95])
    assert len(dicom_dir(out)) == 1 and len(all_files(out / "dicom")) == 5
    assert len(list((out / "quicklook").iterdir())) == 1


# ----------------------------------------------------------------------------------- unusable input or settings: exit 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/no_such_dir/chest.dcm"], "input not found: {tmp}/no_such_dir/chest.dcm"),
        (["--explainer_weights", "/no/such/explainer.pt"], "weights not found: /no/such/explainer.pt"),
        (["--num_frames", "50"], "num_frames must be an integer from 2 to 10"),
    ],
    ids=["input", "weights", "num_frames"],
)
def test_unusable_input_or_settings_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """One error line naming the problem, no traceback, nothing written."""
    out = tmp_path / "out"
    result = run_bundle(inference_args(out, *[a.format(tmp=tmp_path) for a in args]), env=ONE_THREAD)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    error_lines = [line for line in output.splitlines() if line.startswith("error: ") or " - ERROR - " in line]
    assert len(error_lines) == 1 and message.format(tmp=tmp_path) in error_lines[0], output[-3000:]
    assert result.stderr.strip().splitlines()[-1] == error_lines[0]  # `error: ...`, the last line on stderr
    assert "Traceback" not in output
    assert not out.exists()


def test_missing_explainer_weights_exit_2_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nonexistent.pt"
    parser = parsed_inference(tmp_path, explainer_weights=str(missing))
    with pytest.raises(SystemExit) as exit_info:
        parser.get_parsed_content("inference")
    assert exit_info.value.code == 2
    assert f"weights not found: {missing}" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"bits": 12}, "bits must be 8 or 16"),
        ({"resolution": "full"}, "resolution must be one of"),
        ({"num_frames": 50}, "num_frames must be an integer from 2 to 10"),
    ],
)
def test_bad_settings_exit_2_with_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, setting: dict, message: str
) -> None:
    parser = parsed_inference(tmp_path, **setting)
    with pytest.raises(SystemExit) as exit_info:
        parser.get_parsed_content("inference")
    assert exit_info.value.code == 2 and message in caplog.text
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- the bundle's structure


@pytest.mark.parametrize("configs", [[INFERENCE], [INFERENCE, EVALUATE]], ids=["inference", "inference+evaluate"])
def test_bundle_has_the_properties_of_an_inference_workflow(tmp_path: Path, configs: list[str]) -> None:
    """MONAI's ``infer`` workflow properties (bundle_root, device, dataset_dir, inferer, ...) are all defined."""
    workflow = ConfigWorkflow(
        config_file=configs,
        workflow_type="infer",
        meta_file=METADATA,
        bundle_root=BUNDLE,
        dataset_dir=str(tmp_path),
        logging_file=False,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_dicom_writer_alone_from_the_command_line_writes_no_quicklooks(tmp_path: Path) -> None:
    """``--writers`` replaces the writers: the DICOM writer alone writes the series and logs, no quick-look folder."""
    png_chest(tmp_path / "inbox" / "chest.png")
    out = tmp_path / "out"
    writers = "[{'_target_': 'monai_exaggeration.inference.DicomSeriesWriter', 'series_number': '@series_number'}]"
    args = inference_args(out, "--input", str(tmp_path / "inbox"), "--num_frames", "2", "--writers", writers)
    result = run_bundle(args, env=ONE_THREAD)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (out / "quicklook").exists()
    frames, sources = read_frames(out), read_sources(out)
    assert len(frames) == 2 and sorted(all_files(out / "dicom")) == sorted(Path(p) for p in frames["output_file"])
    assert (sources[["gif", "montage", "score_plot"]] == "").all().all()
    assert pydicom.dcmread(frames["output_file"][0]).SeriesNumber == 900


def test_extra_writer_from_the_config_is_called_once_per_series(tmp_path: Path) -> None:
    """A writer class of one's own, appended to inference.json's ``writers``, sees every written series once."""
    inbox = tmp_path / "inbox"
    for seed in (1, 2):
        png_chest(inbox / f"chest_{seed}.png", seed=seed)
    (inbox / "notes.png").write_text("not an image\n")  # a failed input reaches no writer
    log_file = tmp_path / "series.txt"
    parser = parsed_inference(tmp_path, input=str(inbox), num_frames=2, quicklook=False)
    counting = {"_target_": "inference.helpers.CountingWriter", "log_file": str(log_file)}
    parser["writers"] = [*parser["writers"], counting]
    with pytest.raises(SystemExit) as exit_info:  # one input failed: status 1, the others written
        parser.get_parsed_content("inference")
    assert exit_info.value.code == 1
    seen = log_file.read_text().split()
    sources = read_sources(tmp_path / "out")
    assert sorted(seen) == sorted(sources["series_instance_uid"]) and len(seen) == 2


# ----------------------------------------------------------------------------------- the evaluator


class OutputRecorder:
    """A handler for ``val_handlers``: keeps ``engine.state.output`` of every iteration."""

    def __init__(self) -> None:
        self.outputs: list[tuple[int, list]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        self.outputs.append((engine.state.iteration, list(engine.state.output)))


def test_the_series_engine_feeds_every_result_to_its_sinks_and_writes_nothing(tmp_path: Path, runner_factory) -> None:
    """The one batch loop on its own: each source's result reaches every sink once, in input order, and a
    sink that is not a writer leaves no file (the evaluation's measures and the faithfulness checks run so)."""
    inbox = tmp_path / "inbox"
    png_chest(inbox / "a.png", seed=1)
    (inbox / "b.png").write_text("not an image\n")
    png_chest(inbox / "c.png", seed=2)
    runner = runner_factory(num_frames=3, batch_size=2).prepare()
    seen, scores = [], []
    engine = SeriesEngine(runner.inferer, SourceDataset(str(inbox), runner.reading), sinks=[seen.append])
    engine.sinks.append(lambda explained: scores.append(explained.outcome.scores if explained.ok else None))
    engine.run()
    assert engine.state.iteration == 2  # batches [a, b] and [c]
    assert [Path(explained.path).name for explained in seen] == ["a.png", "b.png", "c.png"]
    assert [explained.ok for explained in seen] == [True, False, True]
    assert isinstance(seen[1].outcome, LoadFailure)
    assert [len(frames) for frames in scores if frames is not None] == [3, 3]
    assert seen[0].outcome.frames.shape[0] == 3 and seen[0].seconds > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inbox"]


def test_val_handlers_see_every_iteration_output(tmp_path: Path, runner_factory) -> None:
    """``engine.state.output`` of an iteration is its batch's :class:`Explained` results (record and SeriesResult
    or failure), in input order."""
    inbox = tmp_path / "inbox"
    png_chest(inbox / "a.png", seed=1)
    (inbox / "b.png").write_text("not an image\n")
    png_chest(inbox / "c.png", seed=2)
    recorder = OutputRecorder()
    evaluator = runner_factory(num_frames=2, batch_size=1).evaluator(inbox, tmp_path / "out", val_handlers=[recorder])
    summary = evaluator.run()
    assert summary.num_series == 2 and len(summary.failures) == 1
    iterations = [iteration for iteration, _ in recorder.outputs]
    assert iterations == [1, 2, 3] == list(range(1, evaluator.state.iteration + 1))
    outcomes = [item for _, output in recorder.outputs for item in output]
    assert [Path(explained.record["image"]).name for explained in outcomes] == ["a.png", "b.png", "c.png"]
    assert [type(explained.outcome) for explained in outcomes] == [SeriesResult, LoadFailure, SeriesResult]
    assert [explained.ok for explained in outcomes] == [True, False, True]
    frames = pd.read_csv(tmp_path / "out" / "frames.csv")
    assert sorted({Path(p).name for p in frames["source"]}) == ["a.png", "c.png"]
    assert [outcomes[i].outcome.source_score for i in (0, 2)] == pytest.approx(
        read_sources(tmp_path / "out").sort_values("source")["source_score"].tolist(), abs=1e-4
    )
