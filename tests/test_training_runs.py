"""A training run from a user's side: progress over the whole run, loss lines in short runs, the source
posterior cache (batched, incremental, resumed), re-runs after a finished run, one run per checkpoint
folder (lock), checkpoint pruning after a resume, and shipped weights that no run overwrites."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, config_arg, run_bundle
from test_explainer_bundle import CONFIGS, ONE_THREAD, TINY, TRAIN
from test_explainer_training import disc_classifier, make_trainer, tiny_networks, toy_batches

from monai_exaggeration.engines import SHIPPED_WEIGHTS, TrainingLock, TrainingLockedError, check_weight_names
from monai_exaggeration.handlers import Progress, TrainingProgress, log_filter, log_interval_for

# ------------------------------------------------------------------------------------ progress and loss log


def test_progress_bar_counts_the_whole_run_up_to_max_iterations() -> None:
    classifier = disc_classifier()
    trainer = make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, n_critic=1, max_iterations=7)
    assert len(trainer.data_loader) == 2  # 2 iterations an epoch
    stream = io.StringIO()
    TrainingProgress(max_iterations=7, stream=stream, terminal=True).attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 7
    bar = stream.getvalue()
    assert "7/7" in bar and "/2 " not in bar and "/8" not in bar  # not one epoch, not max_epochs x epoch length
    # a resumed run's bar starts where its checkpoint left off
    resumed = TrainingProgress(max_iterations=100, stream=io.StringIO(), terminal=True)
    fake = type("Engine", (), {})()
    fake.state = type("State", (), {"iteration": 41, "output": {"d_loss": 1.0, "g_loss": 2.0}})()
    resumed._update(fake)
    assert resumed.progress.n == 41 and resumed.progress.total == 100
    resumed._close(fake)


def test_progress_without_a_terminal_logs_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        progress = Progress(100, "source posteriors", unit="images", every=40, stream=io.StringIO())
        for _ in range(10):
            progress.update(10)
        progress.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("source posteriors:")]
    assert [line.split(",")[0] for line in lines] == [
        "source posteriors: 40/100 images (40 %)",
        "source posteriors: 80/100 images (80 %)",
        "source posteriors: 100/100 images (100 %)",
    ]


def test_bundle_progress_bar_total_is_max_iterations(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": str(tmp_path), "output_dir": str(tmp_path / "eval"), "max_iterations": 20})
    handlers = parser.get_parsed_content("train#handlers")
    bars = [handler for handler in handlers if isinstance(handler, TrainingProgress)]
    assert len(bars) == 1 and bars[0].max_iterations is None  # the trainer's max_iterations: the stop is set once
    trainer = type("Engine", (), {"max_iterations": parser.get_parsed_content("train#trainer#max_iterations")})()
    assert bars[0].total(trainer) == 20
    assert parser["train"]["trainer"]["max_epochs"] is None  # derived by the trainer, not a second stop
    assert not [h for h in handlers if type(h).__name__ == "ProgressBar"]  # ignite's per-epoch bar is gone


def test_loss_is_logged_in_short_runs_and_at_the_last_iteration(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    from monai.handlers import StatsHandler

    assert log_interval_for(50, 100000) == 50 and log_interval_for(25, 20) == 2 and log_interval_for(50, 5) == 1
    classifier = disc_classifier()
    for max_iterations, max_seconds, expected in ((20, None, list(range(2, 21, 2))), (1000, 1e-6, [1])):
        # 20 batches of 16: one epoch, so StatsHandler's "Iter: i/20" is the run's iteration
        trainer = make_trainer(
            toy_batches(classifier, 320),
            *tiny_networks(),
            classifier,
            n_critic=1,
            max_iterations=max_iterations,
            max_seconds=max_seconds,
        )
        StatsHandler(
            name="loss_log_test",
            iteration_log=log_filter(50),
            epoch_log=False,  # the trainer's stop
            output_transform=lambda output: output,
        ).attach(trainer)
        caplog.clear()
        capsys.readouterr()
        with caplog.at_level(logging.INFO):
            trainer.run()
        lines = capsys.readouterr().out.splitlines() + [r.getMessage() for r in caplog.records]
        logged = [int(line.split("Iter: ")[1].split("/")[0]) for line in lines if "d_loss" in line and "Iter: " in line]
        assert logged == expected, (max_iterations, max_seconds, logged)


# ------------------------------------------------------------------------------------ source posteriors


def _nih_records(nih_dir: Path, per_class: int) -> list[dict]:
    labels = pd.read_csv(nih_dir / "labels.csv")
    chosen = pd.concat([labels[labels["cardiomegaly"] == value].head(per_class) for value in (1, 0)])
    return [{"image": str(nih_dir / name)} for name in chosen["image"]]


class Killed(BaseException):
    """Stands in for kill -9 while the posteriors are scored."""


def test_source_posteriors_batched_incremental_and_resumed(
    nih_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.engines import with_source_posteriors
    from monai_exaggeration.transforms import cxr_preprocessing

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal: progress as log lines
    classifier = load_bundle_classifier(device="cpu")
    preprocessing = cxr_preprocessing("image", 128, "pad")
    records = _nih_records(nih_dir, 12)
    with torch.no_grad():
        one_by_one = [float(classifier(preprocessing(dict(r))["image"][None]).reshape(-1)[0]) for r in records]
    cache = tmp_path / "source_posteriors.csv"
    scored: list[int] = []
    kill_at_call = [3]

    def count_and_kill(module, inputs, output):
        scored.append(int(inputs[0].shape[0]))
        if len(scored) == kill_at_call[0]:
            raise Killed

    handle = classifier.register_forward_hook(count_and_kill)
    try:
        with pytest.raises(Killed):  # killed while scoring the third batch of 4: the first 8 are saved
            with_source_posteriors(records, classifier, preprocessing, cache, 10, batch_size=4, save_every=8)
        saved = pd.read_csv(cache)
        assert len(saved) == 8 and list(saved["image"]) == [r["image"] for r in records[:8]]
        assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind
        scored.clear()
        kill_at_call[0] = -1
        with caplog.at_level(logging.INFO):
            result = with_source_posteriors(records, classifier, preprocessing, cache, 10, batch_size=4, save_every=8)
    finally:
        handle.remove()
    assert sum(scored) == 16 and max(scored) == 4  # only the 16 missing images, in batches
    assert "computing source posteriors of 16 images (8 cached" in caplog.text
    assert "source posteriors: 8/16 images" in caplog.text and "source posteriors: 16/16 images" in caplog.text
    batched = [record["source_posterior"] for record in result]
    assert max(abs(a - b) for a, b in zip(batched, one_by_one)) < 1e-4
    assert len(pd.read_csv(cache)) == 24
    # the batch size changes nothing: a fresh cache with batches of 64
    again = with_source_posteriors(records, classifier, preprocessing, tmp_path / "b64.csv", 10, batch_size=64)
    assert max(abs(r["source_posterior"] - b) for r, b in zip(again, one_by_one)) < 1e-4


# ------------------------------------------------------------------------------------ lock


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = TrainingLock(tmp_path).acquire()
    holder = json.loads((tmp_path / ".training.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with pytest.raises(TrainingLockedError) as refused:
        TrainingLock(tmp_path).acquire()
    message = str(refused.value)
    assert f"PID {os.getpid()}" in message and socket.gethostname() in message and holder["started"] in message
    assert "--ckpt_dir" in message
    first.release()
    assert not (tmp_path / ".training.lock").exists()

    stale = dict(holder, pid=_dead_pid(), token="old")
    (tmp_path / ".training.lock").write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING):
        with TrainingLock(tmp_path):
            assert json.loads((tmp_path / ".training.lock").read_text())["pid"] == os.getpid()
    assert "taking over a stale training lock" in caplog.text and f"PID {stale['pid']}" in caplog.text
    assert not (tmp_path / ".training.lock").exists()

    (tmp_path / ".training.lock").write_text(json.dumps(dict(holder, host="another-machine")))
    with pytest.raises(TrainingLockedError, match="another-machine"):  # cannot be checked from here: refused
        TrainingLock(tmp_path).acquire()
    (tmp_path / ".training.lock").unlink()

    # an uncaught error releases the lock before the error is reported (even if the reporter calls os._exit)
    reported = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: reported.append(args[0]))
    TrainingLock(tmp_path).acquire()
    sys.excepthook(ValueError, ValueError("boom"), None)
    assert reported == [ValueError] and not (tmp_path / ".training.lock").exists()


# ------------------------------------------------------------------------------------ shipped weights


def test_shipped_weight_names_are_refused() -> None:
    from monai.bundle import ConfigParser

    shipped_models = REPO_ROOT / "bundles" / "cxr" / "models"
    assert {p.name for p in (REPO_ROOT / "bundles").glob("cxr*/models/*.pt")} >= set(SHIPPED_WEIGHTS)
    for overlay in (
        [],
        ["train_cpu.json"],
        ["train_cpu.json", "train_gpu.json"],
        ["multi_gpu_train.json"],
        ["train_cpu.json", "ablation_a_paper.json"],
    ):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), *(str(CONFIGS / name) for name in overlay)])
        prefix = parser["checkpoint_saver"]["file_prefix"]
        names = [parser["final_filename"], parser["best_filename"], f"{prefix}_checkpoint_"]
        assert not set(names) & set(SHIPPED_WEIGHTS)
        assert parser["checkpoint_saver"]["final_filename"] == "@final_filename"
        assert parser["validate"]["handlers"][-1]["key_metric_filename"] == "@best_filename"
        check_weight_names(shipped_models, [parser["final_filename"], parser["best_filename"]])  # fine
    for name in SHIPPED_WEIGHTS:
        with pytest.raises(ValueError, match="shipped weight file"):
            check_weight_names("/anywhere", ["explainer_final.pt", name])
    # the instruments' trainers write their shipped names, but never over the shipped files themselves
    check_weight_names("/tmp/segmentation/models", ["segmentation.pt"], reserved=[])
    with pytest.raises(ValueError, match="refusing to overwrite the shipped weights"):
        check_weight_names(REPO_ROOT / "bundles" / "cxr_segmentation" / "models", ["segmentation.pt"], reserved=[])


@pytest.mark.parametrize(
    "bundle,configs",
    [
        ("cxr_classifier", ["train.json", "classifier_cpu.json"]),
        ("cxr_segmentation", ["train.json"]),
        ("cxr_encoder", ["train.json"]),
    ],
)
def test_instrument_training_refuses_the_shipped_folder(bundle: str, configs: list[str], tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "bundles" / bundle / "configs" / name) for name in configs])
    run_id = "training" if isinstance(parser["training"], list) else "run"
    assert "check_weight_names" in parser[run_id][0]
    parser["bundle_root"] = str(REPO_ROOT / "bundles" / bundle)
    with pytest.raises(Exception) as refused:
        parser.get_parsed_content(f"{run_id}#0")
    chain, error = [], refused.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("refusing to overwrite the shipped weights" in text for text in chain), chain
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "bundles" / bundle / "configs" / name) for name in configs])
    parser["bundle_root"] = str(tmp_path)
    parser.get_parsed_content(f"{run_id}#0")  # another folder: fine


def test_checkpoints_are_git_ignored_and_shipped_weights_are_not() -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    models = "bundles/cxr/models"
    written = ["explainer_final.pt", "explainer_best.pt", "explainer_checkpoint_iteration=500.pt"]
    shipped = [
        f"{models}/explainer.pt",
        "bundles/cxr_classifier/models/classifier.pt",
        "bundles/cxr_segmentation/models/segmentation.pt",
        "bundles/cxr_encoder/models/encoder.pt",
    ]
    result = subprocess.run(
        ["git", "check-ignore", *(f"{models}/{n}" for n in written), *shipped],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    ignored = {Path(line).name for line in result.stdout.split()}
    assert ignored == set(written)


# ------------------------------------------------------------------------------------ whole runs (bundle)


def _train(root: Path, dataset: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "run",
        "training",
        "--config_file",
        config_arg(TRAIN),
        "--bundle_root",
        str(root),
        "--dataset_dir",
        str(dataset),
        *TINY,
        "--val_interval",
        "100000",
        *extra,
    ]
    return run_bundle(args, env=ONE_THREAD)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.slow
def test_rerun_after_a_finished_run_continues_or_says_already_trained(tiny_dataset: Path, tmp_path: Path) -> None:
    root, models = tmp_path / "bundle", tmp_path / "bundle" / "models"
    first = _train(root, tiny_dataset, "--max_iterations", "3", "--checkpoint_interval", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(models)
    assert set(before) == {"explainer_checkpoint_iteration=2.pt", "explainer_final.pt"}  # no lock left behind

    same = _train(root, tiny_dataset, "--max_iterations", "3", "--checkpoint_interval", "2")
    assert same.returncode == 0, same.stderr[-3000:]
    log = same.stdout + same.stderr
    assert "already trained to 3 iterations" in log and "explainer_final.pt" in log
    assert "Engine run" not in log and "from scratch" not in log
    assert _snapshot(models) == before  # nothing written, nothing removed

    more = _train(root, tiny_dataset, "--max_iterations", "5", "--checkpoint_interval", "2")
    assert more.returncode == 0, more.stderr[-3000:]
    log = more.stdout + more.stderr
    assert f"resuming training from {models / 'explainer_final.pt'} (iteration 3)" in log
    final = torch.load(models / "explainer_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 5
    assert sorted(p.name for p in models.glob("explainer_checkpoint_*.pt")) == [
        "explainer_checkpoint_iteration=2.pt",
        "explainer_checkpoint_iteration=4.pt",
    ]


def _checkpoint_iterations(models: Path) -> list[int]:
    return sorted(int(p.stem.split("=")[-1]) for p in models.glob("explainer_checkpoint_iteration=*.pt"))


@pytest.mark.slow
def test_one_run_per_folder_and_a_resumed_run_keeps_n_saved(tiny_dataset: Path, tmp_path: Path) -> None:
    root, models = tmp_path / "bundle", tmp_path / "bundle" / "models"
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
        "1",
        "--log_interval",
        "1",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD)
    first = subprocess.Popen(
        [*args, "--max_iterations", "100000"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (models / ".training.lock").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        second = subprocess.run(
            [*args, "--max_iterations", "5"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        while (
            (not _checkpoint_iterations(models) or _checkpoint_iterations(models)[-1] < 4)
            and time.monotonic() < deadline
            and first.poll() is None
        ):
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode != 0
    refusal = second.stdout + second.stderr
    assert "another training run is writing to" in refusal
    assert f"PID {first.pid} on host {socket.gethostname()}" in refusal
    assert "started" in refusal and "Traceback" not in refusal
    assert (models / ".training.lock").exists()  # the killed run's lock is left behind...
    killed_at = _checkpoint_iterations(models)[-1]
    assert len(_checkpoint_iterations(models)) == 2  # n_saved within one run

    resumed = subprocess.run(
        [*args, "--max_iterations", str(killed_at + 3)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "taking over a stale training lock" in log and f"PID {first.pid}" in log  # ...and taken over
    assert "resuming training from" in log
    # n_saved = 2 over both sittings (the killed run's checkpoints are pruned too), plus the final file
    assert _checkpoint_iterations(models) == [killed_at + 2, killed_at + 3]
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [
            "explainer_final.pt",
            f"explainer_checkpoint_iteration={killed_at + 2}.pt",
            f"explainer_checkpoint_iteration={killed_at + 3}.pt",
        ]
    )
