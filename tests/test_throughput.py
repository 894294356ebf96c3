"""Streaming, batched classify and inference: same results as one image at a time, in input order."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from inference.helpers import BUNDLE, chest_png
from pydicom.data import get_testdata_file

from monai_exaggeration.bundle import load_bundle_classifier
from monai_exaggeration.cli import classify
from monai_exaggeration.data.streaming import LoadFailure, batches, stream_inputs
from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.transforms import InputLimits, load_cxr
from monai_exaggeration.transforms.cxr import cxr_preprocessing, model_input
from monai_exaggeration.transforms.readers import _pillow_pixels

CLASSIFIER_BUNDLE = str(Path(__file__).resolve().parents[1] / "bundles" / "cxr_classifier")


def _inbox(tmp_path: Path, rg1_uncr: Path) -> Path:
    """Eight real chests of several sizes, a broken file, a CT and an empty file, interleaved."""
    inbox = tmp_path / "inbox"
    for index, size in enumerate([(128, 128), (300, 240), (200, 260), (512, 512), (96, 100), (140, 180)]):
        chest_png(inbox / f"c{index}_chest.png", rg1_uncr, size=size)
    shutil.copy(rg1_uncr, inbox / "c6_rg1.dcm")
    (inbox / "c2b_broken.dcm").write_text("not a DICOM file at all")
    shutil.copy(get_testdata_file("CT_small.dcm"), inbox / "c3b_ct.dcm")
    (inbox / "c4b_empty.png").write_bytes(b"")
    return inbox


def _one_by_one(paths: list[Path]) -> dict[str, float | str]:
    classifier = load_bundle_classifier()
    result = {}
    for path in paths:
        try:
            image = load_cxr(path, limits=InputLimits.for_sources())
        except CXRInputError as error:
            result[str(path)] = error.problem
            continue
        with torch.no_grad():
            result[str(path)] = float(classifier(image[None])[0])
    return result


@pytest.mark.parametrize(("batch_size", "workers"), [(4, 1), (64, 0)])
def test_batched_streaming_classify_equals_one_by_one(
    tmp_path: Path, rg1_uncr: Path, batch_size: int, workers: int
) -> None:
    inbox = _inbox(tmp_path, rg1_uncr)
    paths = sorted(inbox.iterdir())
    records = [{"image": str(p)} for p in paths]
    scores, errors = classify(records, tmp_path / "out", CLASSIFIER_BUNDLE, batch_size=batch_size, num_workers=workers)
    expected = _one_by_one(paths)
    good = [str(p) for p in paths if isinstance(expected[str(p)], float)]
    assert scores["image"].tolist() == good  # input order
    for row in scores.itertuples():
        assert abs(row.score - expected[row.image]) < 1e-4
    assert errors["source"].tolist() == [str(p) for p in paths if str(p) not in good]
    for row in errors.itertuples():
        assert row.error == expected[row.source]  # the same message as the one-by-one path
    assert pd.read_csv(tmp_path / "out" / "errors.csv")["error"].str.contains("empty file").any()


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_model_input_equals_the_monai_preprocessing(aspect: str) -> None:
    """classify's plain-tensor preprocessing gives cxr_preprocessing's numbers: equal sizes, shrinking both
    axes, one axis, enlarging, odd padding."""
    rng = np.random.default_rng(0)
    for shape in [(128, 128), (300, 240), (200, 260), (96, 100), (200, 100), (64, 300), (129, 127), (131, 64)]:
        pixels = rng.random(shape, dtype=np.float32)
        for size in (128, 64):
            expected = cxr_preprocessing("image", size, aspect, load=False)({"image": torch.from_numpy(pixels)[None]})
            got = model_input(pixels, size, aspect)
            assert got.shape == expected["image"].shape == (1, size, size)
            assert float((got - expected["image"].as_tensor()).abs().max()) < 1e-6, (shape, size)


def test_pillow_fast_path_equals_imageio(tmp_path: Path) -> None:
    """8-bit grey/RGB(A) PNG, JPEG and BMP decode to imageio's array; 16-bit PNGs and broken files go to imageio."""
    import imageio.v3 as iio
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = (rng.random((90, 110, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg")
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray((rng.random((90, 110)) * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "broken.png").write_bytes((tmp_path / "grey.png").read_bytes()[:200])
    for name in ("grey.png", "rgb.jpg", "rgb.bmp", "rgba.png"):
        got = _pillow_pixels(tmp_path / name, InputLimits())
        expected = np.asarray(iio.imread(tmp_path / name))
        assert got is not None and got.dtype == expected.dtype and np.array_equal(got, expected), name
    assert _pillow_pixels(tmp_path / "deep.png", InputLimits()) is None
    assert _pillow_pixels(tmp_path / "broken.png", InputLimits()) is None
    with pytest.raises(CXRInputError, match="smaller than the minimum"):
        _pillow_pixels(tmp_path / "grey.png", InputLimits.for_sources(min_size=100))


def test_stream_keeps_order_and_turns_errors_into_records(tmp_path: Path) -> None:
    records = [{"image": str(tmp_path / f"{index}.txt")} for index in range(7)]
    for index, record in enumerate(records):
        if index != 3:
            Path(record["image"]).write_text(str(index))
    items = list(stream_inputs(records, _read_number, num_workers=2, prefetch=1))
    assert [index for index, _, _ in items] == list(range(7))
    assert [item for index, _, item in items if index != 3] == [0, 1, 2, 4, 5, 6]
    failure = items[3][2]
    assert isinstance(failure, LoadFailure) and "FileNotFoundError" in failure.error
    assert [len(group) for group in batches(range(7), 3)] == [3, 3, 1]


def _read_number(path: str) -> int:
    return int(Path(path).read_text())


def test_progress_without_a_terminal_logs_rate_and_eta(
    tmp_path: Path, rg1_uncr: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from monai_exaggeration.handlers import Progress

    with caplog.at_level(logging.INFO):
        progress = Progress(10, "classify", unit="image", every=4, terminal=False)
        for _ in range(10):
            progress.update(1)
        progress.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("classify:")]
    assert lines[0].startswith("classify: 4/10 image (40 %)") and "image/s" in lines[0] or "s/image" in lines[0]
    assert "left" in lines[0] and lines[-1].startswith("classify: 10/10")


def test_grouped_batch_statistics_equal_one_series_at_a_time() -> None:
    """Several sources' series in one generator forward, each normalised with its own frames' statistics."""
    from monai_exaggeration.methods.series import generate_series
    from monai_exaggeration.networks import load_explainer

    generator = load_explainer(Path(BUNDLE) / "models" / "explainer.pt").generator.eval()
    images = torch.rand(3, 1, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    together = generate_series(generator, images, 10)
    alone = torch.cat([generate_series(generator, image[None], 10) for image in images])
    # the generator's own output per frame: an image, or a displacement field for the deformation explainer
    assert together.shape == alone.shape and together.shape[:2] == (3, 10)
    assert float((together - alone).abs().max()) < 1e-4
    assert np.isfinite(together.numpy()).all()
