"""The handlers package: every name importable from ``monai_exaggeration.handlers``, handlers that read an
engine's output through ``output_transform`` (MONAI's convention), and report files written by rank 0 only."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from monai_exaggeration import distributed
from monai_exaggeration.handlers import CTRReport, ScoreTableWriter, TrainingProgress, log_filter

SIZE = 32


def _score_batches() -> list[dict]:
    """Two iterations of an evaluator whose output nests the per-image dicts under ``items``."""
    batches = []
    for start in (0, 2):
        items = []
        for index in range(start, start + 2):
            image = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": f"chest_{index}.png"})
            score, label = torch.tensor([0.2 + 0.2 * index]), torch.tensor([index % 2])
            items.append({"image": image, "pred": score, "label": label})
        batches.append({"items": items, "loss": 0.0})
    return batches


def _run(handler, batches: list, output=lambda batch: batch) -> Engine:
    engine = Engine(lambda engine, batch: output(batch))
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def test_score_table_reads_the_output_through_output_transform(tmp_path: Path) -> None:
    writer = ScoreTableWriter(
        str(tmp_path), finding="cardiomegaly", name="test", output_transform=lambda output: output["items"]
    )
    _run(writer, _score_batches())
    table = pd.read_csv(tmp_path / "scores.csv")
    assert list(table["image"]) == [f"chest_{i}.png" for i in range(4)]
    assert list(table["label"]) == [0, 1, 0, 1] and set(table["finding"]) == {"cardiomegaly"}
    np.testing.assert_allclose(table["score"], [0.2, 0.4, 0.6, 0.8], atol=1e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["positives"] == 2 and metrics["roc_auc"] == pytest.approx(0.75)
    assert (tmp_path / "roc.png").stat().st_size > 1000
    with pytest.raises(TypeError):  # without the transform the nested output is not a sequence of images
        _run(ScoreTableWriter(str(tmp_path / "plain")), _score_batches())


def test_score_table_writes_nothing_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "get_rank", lambda: 1)
    writer = ScoreTableWriter(str(tmp_path / "out"), output_transform=lambda output: output["items"])
    _run(writer, _score_batches())
    assert len(writer.rows) == 4  # collected as on rank 0...
    assert not (tmp_path / "out").exists()  # ...but no file written


def test_rank_0_of_several_says_its_files_hold_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(distributed, "get_world_size", lambda: 2)
    with caplog.at_level(logging.WARNING):
        _run(ScoreTableWriter(str(tmp_path), output_transform=lambda output: output["items"]), _score_batches())
    assert (tmp_path / "scores.csv").is_file()
    assert "2 processes ran; these files hold rank 0's share only" in caplog.text


def _masks(heart_width: int) -> torch.Tensor:
    """(3, S, S): a heart of ``heart_width`` columns between two lungs spanning columns 4..27 (thorax 24)."""
    masks = torch.zeros(3, SIZE, SIZE)
    left = (SIZE - heart_width) // 2
    masks[0, 12:20, left : left + heart_width] = 1
    masks[1, 6:26, 4:14] = 1
    masks[2, 6:26, 18:28] = 1
    return masks


def _ctr_batches() -> list[dict]:
    return [
        {
            "out": [{"pred": _masks(12), "label": _masks(12)}, {"pred": _masks(18), "label": _masks(16)}],
            "meta": [{"id": "a", "ctr": 0.5}, {"id": "b", "ctr": float("nan")}],
        },
    ]


def test_ctr_report_reads_output_and_batch_through_their_transforms(tmp_path: Path) -> None:
    report = CTRReport(
        str(tmp_path), output_transform=lambda output: output["out"], batch_transform=lambda batch: batch["meta"]
    )
    _run(report, _ctr_batches())
    table = pd.read_csv(tmp_path / "ctr.csv")
    assert list(table["id"]) == ["a", "b"]
    np.testing.assert_allclose(table["ctr_predicted"], [12 / 24, 18 / 24])
    np.testing.assert_allclose(table["ctr_from_label_masks"], [12 / 24, 16 / 24])
    assert table["dice_heart"][0] == pytest.approx(1.0) and table["dice_heart"][1] < 1.0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and metrics["n_with_ctr_truth"] == 1 and metrics["ctr_mae"] == pytest.approx(0.0)


def test_ctr_report_writes_nothing_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "get_rank", lambda: 3)
    report = CTRReport(
        str(tmp_path / "out"),
        output_transform=lambda output: output["out"],
        batch_transform=lambda batch: batch["meta"],
    )
    _run(report, _ctr_batches())
    assert len(report.rows) == 2 and not (tmp_path / "out").exists()


def test_training_progress_reads_losses_through_output_transform_and_the_engines_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = TrainingProgress(
        seconds=0.0, stream=io.StringIO(), terminal=False, output_transform=lambda output: output["losses"]
    )
    engine = Engine(lambda engine, batch: {"losses": {"d_loss": 1.5, "g_loss": 2.5}})
    engine.max_iterations = 6  # what the explainer's trainer defines
    progress.attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run(range(3), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training:")]
    assert lines and lines[-1].startswith("training: 6/6 it (100 %)")
    assert "d_loss 1.5" in lines[0] and "g_loss 2.5" in lines[0]
    assert TrainingProgress(max_iterations=9).total(engine) == 9  # an explicit value wins


def test_log_filter_takes_the_last_iteration_from_the_engine() -> None:
    engine = Engine(lambda engine, batch: None)
    engine.max_iterations = 20
    should_log = log_filter(50)  # at least 10 lines in 20 iterations: every 2nd, and the 20th
    assert [i for i in range(1, 21) if should_log(engine, i)] == list(range(2, 21, 2))
    engine.max_iterations = 5
    assert [i for i in range(1, 6) if should_log(engine, i)] == [1, 2, 3, 4, 5]
    assert [i for i in range(1, 101) if log_filter(50, 1000)(engine, i)] == [50, 100]  # an explicit value wins
