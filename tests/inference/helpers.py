"""Shared helpers of the inference tests: paths, small real and synthetic chest inputs, runners, log readers.

Imported by the tests of this folder and by other test files (``from inference.helpers import ...``).
Score values are never asserted anywhere (the shipped explainer may be replaced): only behaviour
and consistency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from dicom_validation import dciodvfy_errors
from monai.bundle import ConfigParser
from PIL import Image

from monai_exaggeration.bundle import load_bundle_classifier
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.networks import ExaggerationGenerator
from monai_exaggeration.transforms import LoadCXR

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = str(REPO_ROOT / "bundles" / "cxr")
INFERENCE = str(REPO_ROOT / "bundles" / "cxr" / "configs" / "inference.json")
EVALUATE = str(REPO_ROOT / "bundles" / "cxr" / "configs" / "evaluate.json")
METADATA = str(REPO_ROOT / "bundles" / "cxr" / "configs" / "metadata.json")
EXPLAINER = REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PNG_SHAPE = (200, 160)  # rows x columns of the synthetic PNG chest
LOGS = ("errors.csv", "frames.csv", "sources.csv")


# ----------------------------------------------------------------------------------- runners


def make_runner(**settings) -> ExaggerationInference:
    """The shipped models (the classifier loaded anew) with ``settings``; used by tests outside this folder."""
    settings.setdefault("explainer_weights", EXPLAINER)
    return ExaggerationInference(None, load_bundle_classifier(), **settings)


def shipped_runner(classifier, **settings) -> ExaggerationInference:
    """ExaggerationInference configured as inference.json (shipped weights, no quick-looks unless asked), on the CPU."""
    settings.setdefault("explainer_weights", EXPLAINER)
    settings.setdefault("quicklook", False)
    return ExaggerationInference(None, classifier, finding="cardiomegaly", device="cpu", **settings)


def tiny_generator(seed: int = 0) -> ExaggerationGenerator:
    """A small randomly initialised generator (for tests where the trained weights do not matter).

    The per-bin conditional batch-norm tables start as the identity (every bin alike), so they are
    randomised too: the frames then differ from bin to bin and from seed to seed.
    """
    torch.manual_seed(seed)
    generator = ExaggerationGenerator(
        in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[8, 16], image_size=64
    )
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith(("gamma.weight", "beta.weight")):
                parameter.normal_(1.0 if "gamma" in name else 0.0, 0.5)
    return generator


def parsed_inference(tmp_path: Path, **overrides) -> ConfigParser:
    """inference.json as ``monai.bundle run`` parses it, with command-line style overrides."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update({"bundle_root": BUNDLE, "output_dir": str(tmp_path / "out"), **overrides})
    return parser


def inference_args(output_dir: Path, *extra: str, run_id: str = "inference") -> list[str]:
    """``python -m monai.bundle`` arguments of the bundle's inference into ``output_dir`` (``run_id=""``: plain run)."""
    return [
        "run",
        *([run_id] if run_id else []),
        "--config_file",
        INFERENCE,
        "--bundle_root",
        BUNDLE,
        "--output_dir",
        str(output_dir),
        *extra,
    ]


class CountingWriter:
    """A writer added from the config (``writers``): appends each series' SeriesInstanceUID to ``log_file``.

    It runs after the DICOM writer, so the series is there; the file makes the calls visible across processes.
    """

    def __init__(self, log_file: str) -> None:
        self.log_file = Path(log_file)

    def __call__(self, record, inferer) -> None:
        with self.log_file.open("a") as log:
            log.write(f"{record.series.series_instance_uid}\n")


# ----------------------------------------------------------------------------------- inputs


def chest_png(path: Path, rg1: Path, size: tuple[int, int] = (160, 200)) -> Path:
    """A small real chest PNG (RG1 resized), rows x columns = size."""
    pixels = LoadCXR()(rg1)[0].numpy()
    image = Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def png_chest(path: Path, shape: tuple[int, int] = PNG_SHAPE, seed: int = 0) -> Path:
    """A small synthetic 8-bit chest-like PNG (lungs dark, mediastinum/heart bright), rows x columns = shape."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    image = 0.75 - 0.35 * (
        np.exp(-((x - 0.3) ** 2 + (y - 0.45) ** 2) / 0.03) + np.exp(-((x - 0.7) ** 2 + (y - 0.45) ** 2) / 0.03)
    )
    image += 0.25 * np.exp(-((x - 0.55) ** 2 / 0.02 + (y - 0.65) ** 2 / 0.03))  # heart
    image += np.random.default_rng(seed).normal(0, 0.02, image.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def small_dx(path: Path, rg1: Path, spacing: float = 0.2) -> Path:
    """A small real DX-like DICOM: RG1's chest subsampled to 200 x 120 (rows x columns), PixelSpacing set."""
    dataset = pydicom.dcmread(rg1)
    pixels = np.ascontiguousarray(dataset.pixel_array[200:1800:8, 300:1500:10])
    dataset.PixelData = pixels.tobytes()
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.PixelSpacing = [spacing, spacing]
    dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["small_dx", str(spacing)])
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path)
    return path


def truncated_dicom(path: Path, source: Path, length: int = 5000) -> Path:
    """``source`` cut after ``length`` bytes (RG1 at 5000: a readable CR header, the pixel data missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source.read_bytes()[:length])
    return path


# ----------------------------------------------------------------------------------- outputs


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def temporaries(folder: Path) -> list[Path]:
    """Left-over temporaries of :func:`~monai_exaggeration.utils.atomic_write` (``.<name>.<random>.tmp``, hidden)."""
    return sorted(p for p in folder.rglob(".*") if p.is_file() and ".tmp" in p.name)


def read_frames(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "frames.csv", keep_default_na=False, dtype={"source_sop_instance_uid": str})


def read_sources(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "sources.csv", keep_default_na=False, dtype={"source_sop_instance_uid": str})


def read_errors(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "errors.csv", keep_default_na=False)


def dicom_dir(out: Path) -> list[Path]:
    """The series folders ``dicom/<SeriesInstanceUID>/`` of a run."""
    return sorted(p for p in (out / "dicom").iterdir() if p.is_dir()) if (out / "dicom").is_dir() else []


def assert_dciodvfy_clean(files: list[Path]) -> None:
    if dciodvfy_errors(files[0]) is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    for path in files:
        assert dciodvfy_errors(path) == [], path
