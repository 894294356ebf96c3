"""A new user's first hour, round three (issue 26): settings that cannot be mistyped, one error format,
fast help, documented commands that run as written, a first training without labels, truthful summaries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, config_arg, run_bundle
from PIL import Image

from monai_exaggeration.bundle import check_overrides, command_line_overrides
from monai_exaggeration.cli import main as cli_main
from monai_exaggeration.errors import UserError, restore_error_logging, show_errors_as_lines

CONFIGS = REPO_ROOT / "bundles" / "cxr" / "configs"
BUNDLES = REPO_ROOT / "bundles"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CLASSIFIER = str(BUNDLES / "cxr_classifier" / "models" / "classifier.pt")
TINY_EXPLAINER = [  # a 32 px explainer with tiny widths: a training of 2 iterations takes seconds
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
    "[8,16]",
    "--discriminator_def#channels",
    "[8,16,16]",
]

#: Every bundle workflow: the config files a documented command merges (the checked keys are theirs).
WORKFLOWS = {
    "cxr training": ["cxr/configs/train.json"],
    "cxr training, CPU": ["cxr/configs/train.json", "cxr/configs/train_cpu.json"],
    "cxr training, GPU": ["cxr/configs/train.json", "cxr/configs/train_gpu.json"],
    "cxr training, torchrun": ["cxr/configs/train.json", "cxr/configs/multi_gpu_train.json"],
    "cxr inference": ["cxr/configs/inference.json"],
    "cxr evaluating": ["cxr/configs/inference.json", "cxr/configs/evaluate.json"],
    "cxr inference, 0.5 explainer": ["cxr/configs/inference.json", "cxr/configs/legacy_explainer_v0.json"],
    "classifier training": ["cxr_classifier/configs/train.json", "cxr_classifier/configs/classifier_cpu.json"],
    "classifier evaluating": ["cxr_classifier/configs/train.json", "cxr_classifier/configs/evaluate.json"],
    "classifier torchrun": ["cxr_classifier/configs/train.json", "cxr_classifier/configs/multi_gpu_train.json"],
    "segmentation training": ["cxr_segmentation/configs/train.json"],
    "segmentation evaluating": ["cxr_segmentation/configs/train.json", "cxr_segmentation/configs/evaluate.json"],
    "encoder training": ["cxr_encoder/configs/train.json"],
    "autoencoder training": ["cxr_autoencoder/configs/train.json"],
}


def _argv(files: list[str], *pairs: str) -> list[str]:
    return ["run", "--config_file", config_arg([str(BUNDLES / name) for name in files]), *pairs]


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("error: "), lines[-3:]
    assert " -- " in lines[-1], lines[-1]  # what is wrong -- what to do
    return lines[-1]


# ------------------------------------------------------------------------------- 1. settings


def test_a_mistyped_setting_is_refused_with_the_closest_key() -> None:
    with pytest.raises(UserError) as error:
        check_overrides(_argv(["cxr/configs/inference.json"], "--num_frame", "5"))
    assert "unknown setting --num_frame" in str(error.value) and "did you mean --num_frames?" in str(error.value)
    with pytest.raises(UserError, match="did you mean --max_iterations"):
        check_overrides(_argv(WORKFLOWS["cxr training, CPU"], "--max_iteration", "20"))
    with pytest.raises(UserError, match="did you mean --network_def#stem_channels"):
        check_overrides(_argv(["cxr/configs/train.json"], "--network_def#stem_channel", "32"))
    with pytest.raises(UserError, match="did you mean --num_images"):  # a key of the second file of the list
        check_overrides(_argv(WORKFLOWS["cxr evaluating"], "--num_image=4"))
    with pytest.raises(UserError, match="check the spelling"):  # nothing close: no guess
        check_overrides(_argv(["cxr/configs/inference.json"], "--zzzqqq", "1"))


def test_existing_keys_paths_and_new_keys_are_accepted() -> None:
    check_overrides(
        _argv(
            WORKFLOWS["cxr training, CPU"],
            "--max_iterations",
            "20",
            "--network_def#stem_channels",
            "32",
            "--discriminator_def#channels=[8,16]",
            "--train#dataloader#num_workers",
            "0",
            "--debug",
        )
    )
    check_overrides(_argv(["cxr/configs/inference.json"], "--input-limits#min_size", "32", "--quicklook"))
    check_overrides(
        _argv(
            ["cxr/configs/train.json"],
            "--new_keys",
            "['train#dataloader#pin_memory']",
            "--train#dataloader#pin_memory",
            "True",
        )
    )
    check_overrides(_argv(["cxr/configs/train.json"], "--new_keys", "my_key,other", "--my_key", "1", "--other", "2"))
    check_overrides(
        ["run", "--config_file", str(CONFIGS / "inference.json"), "--tracking", "mlflow", "--experiment_name", "x"]
    )  # MONAI's tracking settings
    check_overrides(_argv(["cxr/configs/inference.json"], "--", "--num_frame", "5"))  # after "--": not fire's flags


def test_args_file_pairs_are_checked_too(tmp_path: Path) -> None:
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": str(CONFIGS / "inference.json"), "num_frame": 5}))
    with pytest.raises(UserError, match="did you mean --num_frames"):
        check_overrides(["run", "--args_file", str(args)])


def test_command_line_overrides_are_read_as_fire_reads_them() -> None:
    pairs = command_line_overrides(
        [
            "run",
            "inference",
            "--config_file",
            "c.json",
            "--num-frames",
            "5",
            "--bits=16",
            "--quicklook",
            "--nodebug",
            "--first_bin",
            "-1",
            "-k",
            "v",
        ]
    )
    assert pairs == {
        "config_file": "c.json",
        "num_frames": "5",
        "bits": "16",
        "quicklook": "True",
        "debug": "False",
        "first_bin": "-1",
        "k": "v",
    }


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_every_bundle_workflow_checks_its_settings_first(workflow: str) -> None:
    """The check is the first item of the merged config's `initialize` list, and it refuses a typo there."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / name) for name in WORKFLOWS[workflow]])
    assert parser["initialize"][0] == "$monai_exaggeration.bundle.check_overrides()", workflow
    with pytest.raises(UserError, match="unknown setting --dataset_dri.*did you mean --dataset_dir"):
        check_overrides(_argv(WORKFLOWS[workflow], "--dataset_dri", "x"))


def test_every_config_of_a_workflow_keeps_the_check() -> None:
    """No shipped config replaces `initialize` without the check (a merge would lose it)."""
    for path in BUNDLES.glob("*/configs/*.json"):
        content = json.loads(path.read_text())
        if isinstance(content, dict) and "initialize" in content:
            assert content["initialize"][0] == "$monai_exaggeration.bundle.check_overrides()", path


def test_typo_in_a_bundle_command_is_one_line_exit_2_and_nothing_runs(tmp_path: Path) -> None:
    """`--num_frame 5` would have written 10 frames; now: one line, exit 2, no output folder. MONAI's security
    notice is quieted by the documented warning filter."""
    out = tmp_path / "out"
    args = [
        "run",
        "inference",
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--output_dir",
        str(out),
        "--num_frame",
        "5",
    ]
    result = run_bundle(args, cwd=tmp_path, env={**ONE_THREAD, "PYTHONWARNINGS": "ignore:parsing config_file"})
    assert result.returncode == 2, result.stderr[-2000:]
    line = _last_error(result.stderr)
    assert line.startswith(
        "error: unknown setting --num_frame: not a key of inference.json -- did you mean --num_frames?"
    )
    assert "Traceback" not in result.stdout + result.stderr and not out.exists()
    assert "parsing config_file" not in result.stderr  # PYTHONWARNINGS="ignore:parsing config_file" (docs/install.md)
    install = (REPO_ROOT / "docs" / "install.md").read_text()
    assert 'PYTHONWARNINGS="ignore:parsing config_file"' in install and "GHSA-873f-pvrv-4x83" in install


def test_docs_no_longer_invite_any_key() -> None:
    for name in (
        "docs/inference.md",
        "docs/training.md",
        "docs/evaluation.md",
        "README.md",
        "bundles/cxr/docs/README.md",
    ):
        text = (REPO_ROOT / name).read_text().lower()
        assert "any config key works" not in text and "every key of `inference.json` can be overridden" not in text, (
            name
        )
    assert "--new_keys" in (REPO_ROOT / "docs" / "install.md").read_text()


# ------------------------------------------------------------------------------- 2. one error format


def test_missing_input_reads_the_same_from_the_bundle_and_from_classify(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.dcm"
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--input",
            str(missing),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    from_bundle = _last_error(result.stderr)
    assert "parsing config_file" in result.stderr  # MONAI's notice shows unless filtered
    assert " - ERROR - " not in result.stdout + result.stderr
    assert cli_main(["classify", "--input", str(missing), "--output_dir", str(tmp_path / "cls")]) == 2
    from_command = _last_error(capsys.readouterr().err)
    assert from_bundle == from_command
    assert from_bundle == f"error: input not found: {missing} -- give a DICOM/PNG/JPEG file, a folder or a CSV manifest"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", "{tmp}/empty", "--host", "pacs"], "nothing to send"),
        (["export", "{tmp}", "--config", "{tmp}/none.yaml", "--host", "pacs"], "either --config"),
        (["reader-study", "analyze", "{tmp}/no-study"], "study"),
        (["reader-study", "build", "--config", "{tmp}/none.yaml", "--out", "{tmp}/s"], "not found"),
        (["serve-dicom", "status", "--config", "{tmp}/none.yaml"], "not found"),
        (["classify", "--input", "{tmp}", "--aspect", "squash"], "--aspect squash"),
    ],
)
def test_every_command_ends_a_user_error_with_one_error_line(
    args: list[str], words: str, tmp_path: Path, capsys, caplog
) -> None:
    (tmp_path / "empty").mkdir()
    assert cli_main([arg.format(tmp=tmp_path) for arg in args]) == 2
    captured = capsys.readouterr()
    line = _last_error(captured.err)
    assert words in line and "Traceback" not in captured.out + captured.err
    assert sum(text.startswith("error: ") for text in captured.err.splitlines()) == 1
    assert "ERROR monai_exaggeration" not in captured.err  # not the old log format


def test_logged_errors_become_error_lines_and_still_reach_the_log(capsys, caplog) -> None:
    show_errors_as_lines()
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("monai_exaggeration.inference").error("input not found: x -- give a file")
            logging.getLogger("monai_exaggeration.inference").info("an ordinary line")
    finally:
        restore_error_logging()
    err = capsys.readouterr().err
    assert err.count("error: input not found: x -- give a file") == 1
    assert [r.getMessage() for r in caplog.records] == ["input not found: x -- give a file", "an ordinary line"]
    assert logging.getLogger("monai_exaggeration").propagate  # restored


def test_design_card_command_says_labels_are_optional(tmp_path: Path) -> None:
    """The bare design-card command with no dataset: one line that says labels are optional."""
    env = {"EXAG_DATASET_DIR": str(tmp_path / "no-such-dataset"), **ONE_THREAD}
    result = run_bundle(["run", "training", "--config_file", str(CONFIGS / "train.json")], cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    line = _last_error(result.stderr)
    assert "Dataset not found" in line and "labels are optional" in line and "docs/datasets.md" in line
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------- 3. fast help


def test_help_imports_neither_torch_nor_monai() -> None:
    """Every --help is answered before the heavy imports (not a timed test: the modules are checked)."""
    script = (
        "import sys\n"
        "from monai_exaggeration.cli import main\n"
        "for args in (['--help'], ['classify', '--help'], ['export', '--help'], ['reader-study', '--help'],\n"
        "             ['reader-study', 'build', '--help'], ['reader-study', 'analyze', '--help'],\n"
        "             ['serve-dicom', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, (args, stop.code)\n"
        "print(sorted(name for name in ('torch', 'monai', 'ignite') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: python -m monai_exaggeration classify" in result.stdout


def test_classify_help_names_every_aspect_policy(capsys) -> None:
    from monai_exaggeration.transforms import ASPECT_POLICIES

    with pytest.raises(SystemExit):
        cli_main(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(policy in text for policy in ASPECT_POLICIES)


def test_a_mistyped_option_prints_the_subcommands_usage(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli_main(["classify", "--inptu", "x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m monai_exaggeration classify")
    assert _last_error(err).startswith("error: unrecognized arguments: --inptu x -- did you mean --input?")
    with pytest.raises(SystemExit):
        cli_main(["reader-study", "build", "--config", "s.yaml", "--out", "x", "--forse"])
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m monai_exaggeration reader-study build") and "did you mean --force?" in err
    with pytest.raises(SystemExit):
        cli_main(["classfy"])
    assert "did you mean classify?" in capsys.readouterr().err


# ------------------------------------------------------------------------------- 4. docs that run as written


def _bash_block(doc: Path, after: str, containing: str = "") -> str:
    """The first ```bash block after the line that starts with ``after`` (and holds ``containing``)."""
    text = doc.read_text()
    start = next(i for i, line in enumerate(text.splitlines()) if line.startswith(after))
    blocks = re.findall(r"```bash\n(.*?)```", "\n".join(text.splitlines()[start:]), flags=re.S)
    return next(block for block in blocks if containing in block).strip()


def _one_command(block: str) -> str:
    return " ".join(block.replace("\\\n", " ").split())


INFERENCE_DOC = (REPO_ROOT / "docs" / "inference.md", "From any folder", "run inference")
EVALUATION_DOC = (REPO_ROOT / "docs" / "evaluation.md", "## One command", "run evaluating")
CARD = REPO_ROOT / "bundles" / "cxr" / "docs" / "README.md"


def test_one_evaluation_recipe_everywhere() -> None:
    assert not (CONFIGS / "validate_explainer.json").exists()
    docs = [REPO_ROOT / "README.md", CARD, *(REPO_ROOT / "docs").glob("*.md"), *(BUNDLES).glob("*/docs/README.md")]
    assert [str(path) for path in docs if "validate_explainer" in path.read_text()] == []
    # the card's commands are the documented ones, word for word
    assert _one_command(_bash_block(CARD, "## MONAI bundle commands", "run evaluating")) == _one_command(
        _bash_block(*EVALUATION_DOC)
    )
    assert _one_command(_bash_block(CARD, "## MONAI bundle commands", "run inference")) == _one_command(
        _bash_block(*INFERENCE_DOC)
    )


def _run_doc_command(block: str, cwd: Path, extra: list[str], **placeholders: str) -> subprocess.CompletedProcess:
    command = block.rstrip()
    for name, value in placeholders.items():
        command = re.sub(rf"\b{name}\b", value, command)
    command += " " + " ".join(extra)
    env = {**os.environ, **ONE_THREAD, "REPO": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_documented_commands_run_from_another_folder(tmp_path: Path, tiny_dataset: Path) -> None:
    """docs/inference.md "From any folder" and docs/evaluation.md's (= the bundle card's) evaluation, as written,
    with cwd elsewhere: only the placeholders are filled and a few options added to keep them short."""
    image = tmp_path / "chest.png"
    Image.open(next((tiny_dataset / "images").glob("*.png"))).resize((128, 128)).save(image)
    inference = _run_doc_command(
        _bash_block(*INFERENCE_DOC), tmp_path, ["--quicklook", "false"], PATH="chest.png", DIR="explained"
    )
    assert inference.returncode == 0, (inference.stdout + inference.stderr)[-3000:]
    assert len(pd.read_csv(tmp_path / "explained" / "frames.csv")) == 10
    evaluation = _run_doc_command(
        _bash_block(*EVALUATION_DOC),
        tmp_path,
        ["--split", "train", "--num_images", "2", "--num_examples", "1", "--occlusion", "false"],
        DIR=str(tiny_dataset),
    )
    assert evaluation.returncode == 0, (evaluation.stdout + evaluation.stderr)[-3000:]
    out = tmp_path / "exaggeration_evaluation"  # the documented output folder, in the folder the user is in
    assert (out / "report.html").is_file() and json.loads((out / "metrics.json").read_text())


# ------------------------------------------------------------------------------- 5. first training without labels


def _unlabelled_folder(folder: Path, count: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        (folder / "nested").mkdir(parents=True, exist_ok=True)
        rows = np.linspace(0, 1, 96)[:, None] * np.linspace(1, 0.4, 96)[None, :]
        pixels = np.clip(rows * 200 + rng.normal(0, 12, (96, 96)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / ("nested" if index % 2 else "") / f"chest_{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_an_image_folder_without_labels_loads_for_the_explainer(tmp_path: Path) -> None:
    from monai_exaggeration.data import load_explainer_split, load_split, stratified_head

    folder = _unlabelled_folder(tmp_path / "xrays")
    splits = {split: load_explainer_split(folder, split) for split in ("train", "val", "test")}
    images = sorted(record["image"] for records in splits.values() for record in records)
    assert len(images) == 10 and all(path.endswith(".png") and Path(path).is_absolute() for path in images)
    assert all(set(record) == {"image"} for records in splits.values() for record in records)
    assert splits["train"] == load_explainer_split(folder, "train")  # seeded
    assert stratified_head(splits["train"], 3) == splits["train"][:3]
    with pytest.raises(FileNotFoundError, match="has no labels.csv, which this workflow needs"):
        load_split(folder, "train")  # the classifier and the evaluation still need labels
    with pytest.raises(UserError, match="--target_sampling calibrated .* -- .*--target_sampling uniform"):
        load_explainer_split(folder, "train", target_sampling="calibrated")
    # a manifest without the label column is unlabelled too; with it, the labels come along
    pd.DataFrame({"image": [Path(p).relative_to(folder).as_posix() for p in images]}).to_csv(
        folder / "labels.csv", index=False
    )
    assert "cardiomegaly" not in load_explainer_split(folder, "train")[0]
    with pytest.raises(FileNotFoundError, match="labels are optional"):
        load_explainer_split(tmp_path / "nothing", "train")


def test_training_on_an_unlabelled_folder(tmp_path: Path) -> None:
    """A folder of PNGs, no labels.csv: two iterations train and validate; the log counts the run's iterations."""
    folder = _unlabelled_folder(tmp_path / "xrays", count=12)
    root = tmp_path / "bundle"
    result = run_bundle(
        [
            "run",
            "training",
            "--config_file",
            str(CONFIGS / "train.json"),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(folder),
            *TINY_EXPLAINER,
            "--max_iterations",
            "2",
            "--val_interval",
            "2",
            "--n_critic",
            "1",
        ],
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert (root / "models" / "explainer_final.pt").is_file()
    assert "training starts from scratch (iteration 0; max_iterations 2)" in log
    assert "iteration 1/2: d_fake" in log and "iteration 2/2: d_fake" in log
    assert "validation at iteration 2/2: val_flip_rate" in log and "(best so far)" in log
    for stale in ("Engine run resuming", "Engine run starting", "Epoch: ", "Iter: ", "Epoch["):
        assert stale not in log, stale


# ------------------------------------------------------------------------------- 6. truthful summaries


def test_training_log_counts_iterations_of_the_run(caplog) -> None:
    from test_explainer_training import disc_classifier, make_trainer, tiny_networks, toy_batches

    from monai_exaggeration.handlers import TrainingLog, log_filter

    classifier = disc_classifier()
    trainer = make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, n_critic=1, max_iterations=5)
    assert len(trainer.data_loader) == 2  # 2 iterations an epoch, so MONAI's StatsHandler would say "Iter: 1/2"
    TrainingLog(iteration_log=log_filter(2)).attach(trainer)
    with caplog.at_level(logging.INFO):
        trainer.run()
    messages = [record.getMessage() for record in caplog.records]
    logged = [m.split(":")[0] for m in messages if m.startswith("iteration ")]
    assert logged == [f"iteration {i}/5" for i in range(1, 6)]  # a 5-iteration run logs every iteration
    assert not [m for m in messages if m.startswith(("Engine run resuming", "Engine run starting", "Epoch["))]


def test_summary_lists_what_was_written(tmp_path: Path) -> None:
    from monai_exaggeration.inference.results import InferenceSummary

    failure = [{"source": "a.png", "error": "x", "hint": "y"}]
    nothing = InferenceSummary(tmp_path / "untouched", num_inputs=1, failures=failure)
    assert "nothing was written" in nothing.describe() and "errors.csv" not in nothing.describe()
    out = tmp_path / "out"
    out.mkdir()
    for name in ("frames.csv", "sources.csv", "errors.csv"):
        (out / name).write_text("source\n")  # header-only logs are written files
    logs_only = InferenceSummary(out, num_inputs=1, failures=failure).describe()
    assert "nothing was written" not in logs_only
    assert f"{out / 'frames.csv'} (no series of this run)" in logs_only
    assert f"{out / 'sources.csv'} (no series of this run)" in logs_only and str(out / "errors.csv") in logs_only
