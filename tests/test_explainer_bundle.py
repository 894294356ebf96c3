"""The explainer bundle (train.json): properties, runs through `python -m monai.bundle`, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, config_arg, run_bundle

CONFIGS = REPO_ROOT / "bundles" / "cxr" / "configs"
TRAIN = [str(CONFIGS / "train.json"), str(CONFIGS / "train_cpu.json")]
CLASSIFIER = str(REPO_ROOT / "bundles" / "cxr_classifier" / "models" / "classifier.pt")
TINY = [
    "--image_size",
    "32",
    "--batch_size",
    "4",
    "--num_val_images",
    "4",
    "--network_def#stem_channels",
    "8",
    "--network_def#encoder_channels",
    "[8,16]",
    "--discriminator_def#channels",
    "[8,16,16]",
    "--classifier_weights",
    CLASSIFIER,
    "--warmup_iterations",
    "0",  # the CPU recipe's warm start would fill these few iterations
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_check_properties(tiny_dataset: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        bundle_root=str(tmp_path),
        meta_file=str(CONFIGS / "metadata.json"),
        dataset_dir=str(tiny_dataset),
        classifier_weights=CLASSIFIER,
        image_size=32,
        batch_size=4,
        **{"network_def#encoder_channels": [8, 16], "discriminator_def#channels": [8, 16, 16]},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert type(workflow.trainer).__name__ == "ExaggerationTrainer"
    assert type(workflow.evaluator).__name__ == "SeriesEvaluator"
    # the bundle's inferers are the ones that run G: the trainer's g_inferer and the evaluator's inferer
    assert workflow.trainer.g_inferer is workflow.train_inferer and workflow.evaluator.inferer is workflow.val_inferer
    assert workflow.max_epochs is None and workflow.trainer.state.max_epochs >= 1  # derived from max_iterations
    assert all("source_bin" in record for record in workflow.train_dataset_data)


def test_paper_defaults() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    assert (parser["image_size"], parser["batch_size"], parser["learning_rate"], parser["betas"]) == (
        256,
        8,
        2e-4,
        [0.0, 0.9],
    )
    assert (parser["n_critic"], parser["num_bins"], parser["max_iterations"]) == (5, 10, 100000)
    assert (parser["lambda_gan"], parser["lambda_cls"], parser["lambda_rec"]) == (1.0, 1.0, 100.0)
    assert parser["network_def"]["encoder_channels"] == [128, 256, 512, 1024, 1024]


@pytest.mark.slow
def test_training_smoke_run_and_outputs(tiny_dataset: Path, tmp_path: Path) -> None:
    """Plain `run` trains a few iterations, validates, checkpoints, logs to TensorBoard."""
    root = tmp_path / "bundle"
    common = ["--bundle_root", str(root), "--dataset_dir", str(tiny_dataset), *TINY]
    result = run_bundle(
        [
            "run",
            "--config_file",
            config_arg(TRAIN),
            *common,
            "--max_iterations",
            "4",
            "--val_interval",
            "2",
            "--checkpoint_interval",
            "2",
            "--log_interval",
            "2",
        ],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    for term in ("d_loss", "g_cls", "g_identity", "g_cycle", "val_validity", "val_median_spearman", "val_flip_rate"):
        assert term in log, term
    models = root / "models"
    assert {"explainer_best.pt", "explainer_final.pt", "explainer_checkpoint_iteration=4.pt"} <= {
        p.name for p in models.iterdir()
    }
    assert not (models / ".training.lock").exists()  # the run's lock is removed when it ends
    final = torch.load(models / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert set(final) == {
        "generator",
        "explainer",
        "training_state",
        "discriminator",
        "g_optimizer",
        "d_optimizer",
        "trainer",
    }
    assert final["explainer"]["image_size"] == 32 and final["explainer"]["args"]["encoder_channels"] == [8, 16]
    assert final["trainer"]["iteration"] == 4
    out = root / "eval" / "explainer"
    assert list(out.glob("events.out.tfevents.*")) and (out / "series_latest.png").is_file()
    assert (out / "source_posteriors.csv").is_file()
    # the trained weights are evaluated with the one evaluation recipe, inference.json + evaluate.json
    # (tests/test_first_hour_round3.py runs it as the docs write it)


@pytest.mark.slow
def test_train_json_weights_explain_with_no_architecture_flags(tiny_dataset: Path, tmp_path: Path) -> None:
    """The design card's flow: train with train.json (any widths, here 32 px), then explain with inference.json
    and nothing but the weights' path; the series is written at the trained size with its recorded composition."""
    import pandas as pd

    root = tmp_path / "bundle"
    tiny = [
        "--image_size",
        "32",
        "--batch_size",
        "4",
        "--num_val_images",
        "4",
        "--classifier_weights",
        CLASSIFIER,
        "--network_def#stem_channels",
        "8",
        "--network_def#encoder_channels",
        "[8,16,16]",
        "--discriminator_def#channels",
        "[8,16,16]",
    ]
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            str(CONFIGS / "train.json"),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(tiny_dataset),
            *tiny,
            "--max_iterations",
            "2",
            "--n_critic",
            "1",
            "--val_interval",
            "2",
            "--composition",
            "transfer",
        ],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = root / "models" / "explainer_final.pt"
    out = tmp_path / "out"
    source = next((tiny_dataset / "images").glob("*.png"))
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--bundle_root",
            str(REPO_ROOT / "bundles" / "cxr"),
            "--explainer_weights",
            str(weights),
            "--input",
            str(source),
            "--output_dir",
            str(out),
            "--quicklook",
            "false",
            "--resolution",
            "model",
        ],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    frames = pd.read_csv(out / "frames.csv")
    assert len(frames) == 10
    import pydicom

    first = pydicom.dcmread(frames["output_file"][0])
    assert (first.Rows, first.Columns) == (32, 32)  # the trained size, read from the weights
    sources = pd.read_csv(out / "sources.csv")
    step = int(sources["source_bin"][0])
    source_frame = pydicom.dcmread(frames["output_file"][step]).pixel_array.astype(np.float64)
    # transfer composition: the frame of the source's own bin is the (model-size) source itself
    from monai_exaggeration.transforms import cxr_preprocessing

    model_input = cxr_preprocessing("image", 32, "pad")({"image": str(source)})["image"][0].numpy()
    assert np.abs(source_frame - np.rint((model_input + 1) / 2 * 255)).max() <= 1


def test_old_explainer_file_gets_a_message_naming_the_override(tmp_path: Path) -> None:
    from monai_exaggeration.networks import ExaggerationGenerator

    old = tmp_path / "old_explainer.pt"
    torch.save(
        ExaggerationGenerator(
            num_bins=10, stem_channels=32, encoder_channels=[64, 128, 256, 256], image_size=64
        ).state_dict(),
        old,
    )
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--bundle_root",
            str(REPO_ROOT / "bundles" / "cxr"),
            "--explainer_weights",
            str(old),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        env=ONE_THREAD,
    )
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "legacy_explainer_v0.json" in message and "Traceback" not in message
    legacy = config_arg([str(CONFIGS / "inference.json"), str(CONFIGS / "legacy_explainer_v0.json")])
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            legacy,
            "--bundle_root",
            str(REPO_ROOT / "bundles" / "cxr"),
            "--explainer_weights",
            str(old),
            "--output_dir",
            str(tmp_path / "out2"),
            "--quicklook",
            "false",
            "--num_frames",
            "2",
        ],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def _latest_iteration(models: Path) -> int:
    found = [int(p.stem.split("=")[-1]) for p in models.glob("explainer_checkpoint_iteration=*.pt")]
    return max(found, default=0)


def _latest_readable_iteration(models: Path) -> int:
    for path in sorted(
        models.glob("explainer_checkpoint_iteration=*.pt"), key=lambda p: int(p.stem.split("=")[-1]), reverse=True
    ):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a checkpoint cut short by the kill
            continue
        return int(path.stem.split("=")[-1])
    return 0


@pytest.mark.slow
def test_resume_after_kill_9(tiny_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    models = root / "models"
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config_arg(TRAIN),
        "--bundle_root",
        str(root),
        "--dataset_dir",
        str(tiny_dataset),
        *TINY,
        "--val_interval",
        "100000",
        "--checkpoint_interval",
        "2",
        "--log_interval",
        "1",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD)
    process = subprocess.Popen(
        [*args, "--max_iterations", "100000"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while _latest_iteration(models) < 6 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert _latest_iteration(models) >= 6, "no checkpoint was written before the deadline"
    assert not (models / "explainer_final.pt").exists()
    # The kill may land while MONAI writes the newest checkpoint (in place, not atomically): resuming
    # must then fall back to the newest readable one, which n_saved=2 keeps.
    killed_at = _latest_readable_iteration(models)
    assert killed_at >= 4

    result = subprocess.run(
        [*args, "--max_iterations", str(killed_at + 3)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "resuming training from" in log and f"(iteration {killed_at})" in log
    assert "taking over a stale training lock" in log  # the killed run's lock names a dead PID
    final = torch.load(models / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == killed_at + 3


def test_design_card_command_without_dataset_says_what_to_do(tmp_path: Path) -> None:
    """The bare command from the design card, with no dataset prepared, stops with a clear message."""
    env = {"EXAG_DATASET_DIR": str(tmp_path / "no-such-dataset"), **ONE_THREAD}
    result = run_bundle(["run", "training", "--config_file", "bundles/cxr/configs/train.json"], env=env, timeout=300)
    assert result.returncode != 0
    assert "Dataset not found" in result.stderr and "docs/datasets.md" in result.stderr
    assert not (REPO_ROOT / "models").exists() and not (REPO_ROOT / "eval").exists()  # nothing in the repo root
