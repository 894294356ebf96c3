"""CXR loading/normalisation transforms: shapes, aspect policies, inversion, round trips, metadata, errors."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pydicom
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor

from monai_exaggeration.errors import CXRInputError, find_cxr_input_error
from monai_exaggeration.transforms import (
    ASPECT_POLICIES,
    CropToSquared,
    LoadCXRd,
    cxr_preprocessing,
    load_cxr,
    to_model_range,
    to_unit_range,
)

RG1_SHAPE = (1955, 1841)  # rows x columns: taller than wide


def _expected_content_width(size: int) -> int:
    """Columns the image occupies after "longest side = size" resizing (MONAI rounds to nearest)."""
    return int(round(RG1_SHAPE[1] * size / RG1_SHAPE[0]))


@functools.cache
def _preprocess(path: str, aspect: str, size: int) -> tuple:
    """(compose, output dict) of ``cxr_preprocessing`` on ``{"image": path}``, computed once per module run.

    Callers that invert must deep-copy the output (inversion pops the transform records).
    """
    compose = cxr_preprocessing("image", size, aspect)
    return compose, compose({"image": path})


@functools.cache
def _source(path: str) -> torch.Tensor:
    """The source image in [0, 1] at its own size (no resizing)."""
    return LoadCXRd("image")({"image": path})["image"].as_tensor()


def _first_png(nih_dir: Path, folder: str = "true") -> Path:
    files = sorted((nih_dir / folder).glob("*.png"))
    assert files, f"no PNG files under {nih_dir / folder}"
    return files[0]


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "not_an_image.png"
    path.write_text("this is a radiology report, not an image\n")
    return path


# ------------------------------------------------------------------ shapes and aspect policies


@pytest.mark.parametrize("size", (64, 128, 256))
@pytest.mark.parametrize("aspect", ASPECT_POLICIES)
def test_output_shape_dtype_range_and_aspect(rg1_uncr: Path, aspect: str, size: int) -> None:
    image = _preprocess(str(rg1_uncr), aspect, size)[1]["image"]
    assert isinstance(image, MetaTensor)
    assert tuple(image.shape) == (1, size, size)
    assert image.dtype == torch.float32
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    pixels = image[0].as_tensor()
    black_columns = (pixels == -1.0).all(dim=0)
    black_rows = (pixels == -1.0).all(dim=1)
    assert not bool(black_rows.any()), "content must span the full height (rows > columns)"
    if aspect == "pad":
        width = _expected_content_width(size)
        pad = size - width
        left, right = pad // 2, pad - pad // 2
        assert pad > 0
        expected = torch.zeros(size, dtype=torch.bool)
        expected[:left] = True
        expected[size - right :] = True
        assert torch.equal(black_columns, expected)
        # the padding is exactly -1 and the content columns hold no padding value at all
        assert bool((pixels[:, :left] == -1.0).all()) and bool((pixels[:, size - right :] == -1.0).all())
        assert float(pixels[:, left : size - right].min()) > -1.0
    else:  # crop and stretch fill the whole square with image content
        assert not bool(black_columns.any())
        assert float(pixels.min()) > -1.0


def test_pad_and_stretch_differ_from_crop_content(rg1_uncr: Path) -> None:
    """The three policies produce different images (the policy is really applied)."""
    outputs = {a: _preprocess(str(rg1_uncr), a, 64)[1]["image"].as_tensor() for a in ASPECT_POLICIES}
    assert not torch.allclose(outputs["pad"], outputs["crop"])
    assert not torch.allclose(outputs["crop"], outputs["stretch"])
    assert not torch.allclose(outputs["pad"], outputs["stretch"])


# ------------------------------------------------------------------ inversion to the source grid


@pytest.mark.parametrize("aspect", ASPECT_POLICIES)
def test_compose_inverse_returns_source_grid(rg1_uncr: Path, aspect: str) -> None:
    compose, output = _preprocess(str(rg1_uncr), aspect, 128)
    inverted = compose.inverse(copy.deepcopy(output))["image"]
    assert tuple(inverted.shape) == (1, *RG1_SHAPE)
    source = to_model_range(_source(str(rg1_uncr)))
    error = (inverted.as_tensor() - source).abs()
    if aspect == "pad":
        assert float(error.mean()) < 0.05
        assert float(inverted.min()) >= -1.0 - 1e-5 and float(inverted.max()) <= 1.0 + 1e-5
    elif aspect == "crop":
        # the rows the crop removed (57 at the top and bottom) cannot come back; the rest is close
        cut = (RG1_SHAPE[0] - RG1_SHAPE[1]) // 2
        assert float(error[:, cut : RG1_SHAPE[0] - cut].mean()) < 0.05
    else:
        assert float(error.mean()) < 0.05


def test_crop_to_squared_and_inverse_on_small_tensors() -> None:
    tall = MetaTensor(torch.arange(24, dtype=torch.float32).reshape(1, 6, 4))
    cropper = CropToSquared("image")
    out = cropper({"image": tall, "label": 1})
    assert out["label"] == 1
    assert torch.equal(out["image"].as_tensor(), tall.as_tensor()[:, 1:5, :])
    back = cropper.inverse(out)["image"]
    assert tuple(back.shape) == (1, 6, 4)
    assert torch.equal(back.as_tensor()[:, 1:5], tall.as_tensor()[:, 1:5])
    assert bool((back.as_tensor()[:, [0, 5]] == 0).all())  # documented: zeros where the crop cut

    wide = MetaTensor(torch.arange(15, dtype=torch.float32).reshape(1, 3, 5))
    out = cropper({"image": wide})
    assert torch.equal(out["image"].as_tensor(), wide.as_tensor()[:, :, 1:4])
    assert tuple(cropper.inverse(out)["image"].shape) == (1, 3, 5)


# ------------------------------------------------------------------ intensity normalisation


def test_unit_model_range_round_trip() -> None:
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, torch.tensor([0.0, 1.0, 0.5])])
    assert torch.allclose(to_unit_range(to_model_range(x)), x, atol=1e-6, rtol=0)
    y = x * 2 - 1
    assert torch.allclose(to_model_range(to_unit_range(y)), y, atol=1e-6, rtol=0)
    assert float(to_model_range(torch.tensor(0.0))) == -1.0 and float(to_model_range(torch.tensor(1.0))) == 1.0
    assert float(to_unit_range(torch.tensor(-1.0))) == 0.0 and float(to_unit_range(torch.tensor(1.0))) == 1.0
    levels = np.arange(256, dtype=np.float32) / 255.0  # numpy arrays work too; 8-bit levels survive exactly
    back = np.rint(to_unit_range(to_model_range(levels)) * 255.0)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, np.arange(256))


@pytest.mark.parametrize("folder", ("true", "false"))
def test_nih_png_round_trip_is_exact(nih_dir: Path, folder: str) -> None:
    path = _first_png(nih_dir, folder)
    pixels = iio.imread(path)
    assert pixels.shape == (128, 128) and pixels.dtype == np.uint8
    image = load_cxr(path, 128)
    assert tuple(image.shape) == (1, 128, 128) and image.dtype == torch.float32
    restored = np.rint(to_unit_range(image[0].as_tensor()).numpy() * 255.0).astype(np.int64)
    np.testing.assert_array_equal(restored, pixels.astype(np.int64))


# ------------------------------------------------------------------ metadata and batching


def test_load_cxr_keeps_dicom_metadata(rg1_uncr: Path) -> None:
    image = load_cxr(rg1_uncr, 64)
    dataset = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    assert image.meta["dicom"]["SOPInstanceUID"] == str(dataset.SOPInstanceUID)
    assert image.meta["dicom"]["StudyInstanceUID"] == str(dataset.StudyInstanceUID)
    assert list(image.meta["source_shape"]) == list(RG1_SHAPE)
    assert image.meta["filename_or_obj"] == str(rg1_uncr)
    assert image.meta["source_format"] == "dicom"


def test_load_cxrd_keeps_other_keys(rg1_uncr: Path) -> None:
    data = LoadCXRd("image")({"image": str(rg1_uncr), "label": 1})
    assert data["label"] == 1
    image = data["image"]
    assert tuple(image.shape) == (1, *RG1_SHAPE)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_dataset_dataloader_collates_dicom_and_png(shared_dicom: Path, nih_dir: Path) -> None:
    dicom = shared_dicom / "nih-dx-secondary-capture.dcm"
    png = _first_png(nih_dir)
    records = [{"image": str(dicom), "label": 1}, {"image": str(png), "label": 0}]
    loader = DataLoader(Dataset(records, cxr_preprocessing("image", 64)), batch_size=2, num_workers=0)
    batch = next(iter(loader))
    images = batch["image"]
    assert tuple(images.shape) == (2, 1, 64, 64)
    assert images.dtype == torch.float32
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert batch["label"].tolist() == [1, 0]
    meta = images.meta
    assert list(meta["filename_or_obj"]) == [str(dicom), str(png)]
    uid = str(pydicom.dcmread(dicom, stop_before_pixels=True).SOPInstanceUID)
    assert list(meta["dicom"]["SOPInstanceUID"]) == [uid, ""]
    assert list(meta["source_format"]) == ["dicom", "raster"]
    # default_collate batches the per-image [rows, columns] lists dimension by dimension
    rows, columns = meta["source_shape"]
    assert rows.tolist() == [1024, 128] and columns.tolist() == [1024, 128]


# ------------------------------------------------------------------ errors


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin")
def test_load_cxr_bad_file_raises_cxr_input_error_unwrapped(text_file: Path) -> None:
    with pytest.raises(CXRInputError) as info:
        load_cxr(text_file, 64)
    assert type(info.value) is CXRInputError
    assert info.value.path == str(text_file)
    assert str(text_file) in str(info.value)


def test_load_cxr_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CXRInputError, match="file not found"):
        load_cxr(tmp_path / "missing.dcm", 64)


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin")
def test_compose_wraps_error_and_find_recovers_it(text_file: Path) -> None:
    compose = cxr_preprocessing("image", 64)
    with pytest.raises(RuntimeError) as info:
        compose({"image": str(text_file)})
    assert not isinstance(info.value, CXRInputError)
    found = find_cxr_input_error(info.value)
    assert isinstance(found, CXRInputError)
    assert found.path == str(text_file)
    assert find_cxr_input_error(RuntimeError("unrelated")) is None


@pytest.mark.parametrize("aspect", ("fit", "", "PAD"))
def test_invalid_aspect_raises_value_error(aspect: str) -> None:
    with pytest.raises(ValueError, match="aspect"):
        cxr_preprocessing("image", 64, aspect)


@pytest.mark.parametrize("size", (0, 1, 7))
def test_tiny_spatial_size_raises_value_error(size: int) -> None:
    with pytest.raises(ValueError, match="spatial_size"):
        cxr_preprocessing("image", size)
    assert tuple(cxr_preprocessing("image", 8, load=False)({"image": torch.rand(1, 20, 10)})["image"].shape) == (
        1,
        8,
        8,
    )


# ----------------------------------------------------------------------------------- bounded-memory anti-aliasing


@pytest.mark.parametrize(
    "shape", [(1, 2140, 1760), (1, 300, 240), (1, 129, 500), (1, 96, 96), (1, 64, 700), (2, 1000, 999)]
)
@pytest.mark.parametrize("size_mode", ["longest", "all"])
def test_anti_aliased_resized_equals_monai(shape, size_mode) -> None:
    """AntiAliasedResized gives MONAI's Resized(anti_aliasing=True) values, and inverts the same way."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, Resized, SpatialPadd

    from monai_exaggeration.transforms.resize import AntiAliasedResized

    size = 128 if size_mode == "longest" else (128, 128)
    image = MetaTensor(torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))))
    monai = Compose(
        [
            Resized("image", size, size_mode=size_mode, mode="bilinear", anti_aliasing=True),
            SpatialPadd("image", (128, 128)),
        ]
    )
    ours = Compose([AntiAliasedResized("image", size, size_mode=size_mode), SpatialPadd("image", (128, 128))])
    expected = monai({"image": image.clone()})["image"]
    got = ours({"image": image.clone()})["image"]
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 2e-5
    restored = ours.inverse({"image": got})["image"]
    assert tuple(restored.shape) == shape
