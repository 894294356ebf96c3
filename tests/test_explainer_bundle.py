"""The explainer bundle (train.json): properties, runs through `python -m monai.bundle`, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import REPO_ROOT, config_arg, run_bundle

CONFIGS = REPO_ROOT / "bundles" / "cxr" / "configs"
TRAIN = [str(CONFIGS / "train.json"), str(CONFIGS / "train_cpu.json")]
CLASSIFIER = str(REPO_ROOT / "bundles" / "cxr" / "models" / "classifier.pt")
TINY = [
    "--image_size", "32", "--batch_size", "4", "--num_val_images", "4",
    "--network_def#stem_channels", "8", "--network_def#encoder_channels", "[8,16]",
    "--discriminator_def#channels", "[8,16,16]", "--classifier_weights", CLASSIFIER,
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
    assert all("source_bin" in record for record in workflow.train_dataset_data)


def test_paper_defaults() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    assert (parser["image_size"], parser["batch_size"], parser["learning_rate"], parser["betas"]) == (256, 8, 2e-4, [0.0, 0.9])
    assert (parser["n_critic"], parser["num_bins"], parser["max_iterations"]) == (5, 10, 100000)
    assert (parser["lambda_gan"], parser["lambda_cls"], parser["lambda_rec"]) == (1.0, 1.0, 100.0)
    assert parser["network_def"]["encoder_channels"] == [128, 256, 512, 1024, 1024]


def test_training_smoke_run_and_outputs(tiny_dataset: Path, tmp_path: Path) -> None:
    """Plain `run` trains a few iterations, validates, checkpoints, logs to TensorBoard; `evaluating` reports."""
    root = tmp_path / "bundle"
    common = ["--bundle_root", str(root), "--dataset_dir", str(tiny_dataset), *TINY]
    result = run_bundle(
        ["run", "--config_file", config_arg(TRAIN), *common, "--max_iterations", "4", "--val_interval", "2",
         "--checkpoint_interval", "2", "--log_interval", "2"],
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    for term in ("d_loss", "g_cls", "g_identity", "g_cycle", "val_validity", "val_median_spearman", "val_flip_rate"):
        assert term in log, term
    models = root / "models"
    assert {"explainer_best.pt", "explainer_final.pt", "explainer_checkpoint_iteration=4.pt"} <= {p.name for p in models.iterdir()}
    final = torch.load(models / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert set(final) == {"generator", "discriminator", "g_optimizer", "d_optimizer", "trainer"}
    assert final["trainer"]["iteration"] == 4
    out = root / "eval" / "explainer"
    assert list(out.glob("events.out.tfevents.*")) and (out / "series_latest.png").is_file()
    assert (out / "source_posteriors.csv").is_file()

    evaluate = TRAIN + [str(CONFIGS / "validate_explainer.json")]
    result = run_bundle(["run", "evaluating", "--config_file", config_arg(evaluate), *common], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "evaluation" / "validity.json").read_text())
    assert report["num_series"] == 2 and len(report["per_bin_mae"]) == 10  # the tiny val split has 2 images
    assert (out / "evaluation" / "compatibility.png").stat().st_size > 1000


def _latest_iteration(models: Path) -> int:
    found = [int(p.stem.split("=")[-1]) for p in models.glob("explainer_checkpoint_iteration=*.pt")]
    return max(found, default=0)


def _latest_readable_iteration(models: Path) -> int:
    for path in sorted(models.glob("explainer_checkpoint_iteration=*.pt"),
                       key=lambda p: int(p.stem.split("=")[-1]), reverse=True):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a checkpoint cut short by the kill
            continue
        return int(path.stem.split("=")[-1])
    return 0


def test_resume_after_kill_9(tiny_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    models = root / "models"
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg(TRAIN),
            "--bundle_root", str(root), "--dataset_dir", str(tiny_dataset), *TINY,
            "--val_interval", "100000", "--checkpoint_interval", "2", "--log_interval", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD)
    process = subprocess.Popen([*args, "--max_iterations", "100000"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    result = subprocess.run([*args, "--max_iterations", str(killed_at + 3)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "resuming training from" in log and f"(iteration {killed_at})" in log
    final = torch.load(models / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == killed_at + 3


def test_design_card_command_without_dataset_says_what_to_do(tmp_path: Path) -> None:
    """The bare command from the design card, with no dataset prepared, stops with a clear message."""
    env = {"EXAG_DATASET_DIR": str(tmp_path / "no-such-dataset"), **ONE_THREAD}
    result = run_bundle(["run", "training", "--config_file", "bundles/cxr/configs/train.json"], env=env, timeout=300)
    assert result.returncode != 0
    assert "Dataset not found" in result.stderr and "docs/datasets.md" in result.stderr
    assert not (REPO_ROOT / "models").exists() and not (REPO_ROOT / "eval").exists()  # nothing in the repo root
