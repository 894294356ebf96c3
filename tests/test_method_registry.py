"""Methods by registry (issue 27): a method registered from a test module runs through `run inference`
and `run evaluating` with no change to the package; unknown methods are refused with the registered names."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_bundle
from inference.helpers import BUNDLE, EVALUATE, INFERENCE, ONE_THREAD, png_chest

from monai_exaggeration.methods import check_method, method_names

PLUGINS = Path(__file__).resolve().parent / "plugins"


def _with_toy_import(config: str, folder: Path) -> str:
    """An override file merged last: the config's own imports plus the toy method's module."""
    imports = json.loads(Path(config).read_text())["imports"]
    path = folder / f"toy_{Path(config).stem}.json"
    path.write_text(json.dumps({"imports": [*imports, "$import toy_method"]}))
    return str(path)


def test_the_built_in_methods_are_registered_and_unknown_ones_refused() -> None:
    assert method_names()[:1] == ("progressive_exaggeration",)
    assert {"latent_shift", "gradient_ascent"} <= set(method_names())
    with pytest.raises(ValueError, match="method must be one of"):
        check_method("no_such_method", None)
    with pytest.raises(ValueError, match="accept"):
        check_method("latent_shift", {"no_such_option": 1})


@pytest.mark.slow
def test_a_method_registered_outside_the_package_runs_through_inference_and_evaluation(tmp_path: Path) -> None:
    env = dict(ONE_THREAD, PYTHONPATH=str(PLUGINS))
    source = png_chest(tmp_path / "in" / "chest.png")
    configs = f"['{INFERENCE}','{_with_toy_import(INFERENCE, tmp_path)}']"
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            configs,
            "--bundle_root",
            BUNDLE,
            "--input",
            str(source),
            "--output_dir",
            str(tmp_path / "out"),
            "--method",
            "toy_brightness",
            "--method_options",
            "{'step': 0.1}",
            "--quicklook",
            "false",
        ],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    frames = pd.read_csv(tmp_path / "out" / "frames.csv")
    assert set(frames["method"]) == {"toy_brightness"} and len(frames) == 10
    assert frames["method_detail"].str.startswith("toy offset").all()
    assert frames["model_version"].iloc[0].startswith("toy none cfg ")

    data = tmp_path / "data"
    rows = []
    for index in range(4):
        png_chest(data / f"{index}.png", seed=index)
        rows.append({"image": f"{index}.png", "cardiomegaly": index % 2})
    pd.DataFrame(rows).to_csv(data / "labels.csv", index=False)
    configs = f"['{INFERENCE}','{EVALUATE}','{_with_toy_import(EVALUATE, tmp_path)}']"
    result = run_bundle(
        [
            "run",
            "evaluating",
            "--config_file",
            configs,
            "--bundle_root",
            BUNDLE,
            "--dataset_dir",
            str(data),
            "--split_fractions",
            "[0.0, 1.0, 0.0]",
            "--output_dir",
            str(tmp_path / "evaluation"),
            "--method",
            "toy_brightness",
            "--occlusion",
            "false",
            "--num_examples",
            "1",
        ],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["method"] == "toy_brightness" and metrics["n_images"] == 4
    assert metrics["context"]["toy step"] == "0.05"
    assert "Toy brightness: evaluation report" in (tmp_path / "evaluation" / "report.html").read_text()
