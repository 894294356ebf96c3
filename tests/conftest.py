"""Shared fixtures: where the real data lives, and small real chest X-ray files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dev_data import missing_reason, shared_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests' models are small: one thread avoids oversubscribing CI's 2 cores (much faster under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The development data folder (``$EXAG_SHARED_DATA``, default ``<repo>/../shared/data``: ``dev_data.py``).

    The one way tests reach that data; a test that needs it is skipped, with the reason, when it is absent.
    """
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(missing_reason(root))
    return root


def shared_path(shared_data: Path, relative: str, what: str) -> Path:
    """``shared_data / relative`` (a file or folder); skips the test with the reason when it is absent."""
    path = shared_data / relative
    if not path.exists():
        pytest.skip(missing_reason(path, what))
    return path


@pytest.fixture(scope="session")
def shared_dicom(shared_data: Path) -> Path:
    """Real chest DICOMs of many transfer syntaxes and photometric interpretations (``dicom/``)."""
    return shared_path(shared_data, "dicom", "shared DICOM files")


@pytest.fixture(scope="session")
def wingspan(shared_data: Path) -> Path:
    """Heart/lung masks and CTR of 259 chest radiographs (``wingspan-ctr/``)."""
    return shared_path(shared_data, "wingspan-ctr", "wingspan-ctr")


@pytest.fixture(scope="session")
def nih_dir(shared_data: Path) -> Path:
    """4,438 NIH ChestX-ray14 images at 128 px with ``labels.csv`` (``nih-cardiomegaly-128/``)."""
    return shared_path(shared_data, "nih-cardiomegaly-128", "NIH cardiomegaly sample")


@pytest.fixture(scope="session")
def nih_data_entry(shared_data: Path) -> Path:
    """NIH ChestX-ray14's label file ``Data_Entry_2017_v2020.csv.gz`` (``label-files/``)."""
    return shared_path(shared_data, "label-files/Data_Entry_2017_v2020.csv.gz", "NIH label file")


@pytest.fixture(scope="session")
def rg1_uncr() -> Path:
    """A real 15-bit MONOCHROME1 CR chest PA (1955 x 1841) shipped by the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    return Path(path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> Path:
    """16 PNGs cut from the real RG1 chest (shifted crops), half labelled positive, with labels.csv."""
    import imageio.v3 as iio
    from skimage.transform import resize

    from monai_exaggeration.transforms import read_cxr

    folder = tmp_path_factory.mktemp("tiny_dataset")
    chest = read_cxr(rg1_uncr).pixels
    rows = []
    for index in range(16):
        top, left = 20 * index, 15 * index
        crop = resize(chest[top : top + 1600, left : left + 1600], (96, 96), anti_aliasing=True)
        name = f"images/chest_{index:02d}.png"
        (folder / "images").mkdir(exist_ok=True)
        iio.imwrite(folder / name, np.round(crop * 255).astype(np.uint8))
        rows.append({"image": name, "cardiomegaly": index % 2})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


def run_bundle(
    args: list[str], cwd: Path = REPO_ROOT, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a subprocess, as a user types it."""
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def config_arg(files: list[str]) -> str:
    """A list of config files as ``--config_file`` takes it."""
    return "[" + ",".join(f"'{name}'" for name in files) + "]"


EVALUATE_CONFIGS = ["bundles/cxr/configs/inference.json", "bundles/cxr/configs/evaluate.json"]


def evaluation_args(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    """``run evaluating`` of the explainer bundle on 4 images (2 examples) of ``dataset``'s train split."""
    return [
        "run",
        "evaluating",
        "--config_file",
        config_arg(EVALUATE_CONFIGS),
        "--bundle_root",
        "bundles/cxr",
        "--dataset_dir",
        str(dataset),
        "--split",
        "train",
        "--num_images",
        "4",
        "--num_examples",
        "2",
        "--output_dir",
        str(output_dir),
        *extra,
    ]
