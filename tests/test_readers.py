"""Reading real chest X-ray files: transfer syntaxes, bit depths, LUTs, polarity, orientation, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.transforms import DICOM_KEYWORDS, read_cxr

SHARED_FILES = (
    "nih-dx-secondary-capture.dcm",
    "siim-cr-jpeg-baseline.dcm",
    "cr-monochrome1-10bit-chest-no-preamble.dcm",
)


def regions(pixels: np.ndarray) -> dict[str, float]:
    """Mean intensity of anatomical regions of a frontal chest radiograph shown as a viewer does."""
    rows, cols = pixels.shape

    def mean(r0: float, r1: float, c0: float, c1: float) -> float:
        return float(pixels[int(r0 * rows) : int(r1 * rows), int(c0 * cols) : int(c1 * cols)].mean())

    return {
        "mediastinum": mean(0.3, 0.6, 0.45, 0.55),
        "right_lung": mean(0.3, 0.6, 0.2, 0.35),  # patient's right = viewer's left
        "left_lung": mean(0.3, 0.6, 0.65, 0.8),
        "heart_side": mean(0.55, 0.75, 0.55, 0.75),  # the heart projects to the viewer's right
        "other_side": mean(0.55, 0.75, 0.25, 0.45),
    }


def assert_chest_as_viewer_shows(pixels: np.ndarray) -> None:
    """Polarity (lungs darker than mediastinum) and orientation (heart on the viewer's right)."""
    r = regions(pixels)
    assert r["mediastinum"] > r["right_lung"] + 0.1, r
    assert r["mediastinum"] > r["left_lung"] + 0.1, r
    assert r["heart_side"] > r["other_side"], r


def reference_pixels(path: Path) -> np.ndarray:
    """pydicom's (rows, columns) array of a MONOCHROME1 file, inverted and scaled to [0, 1] by min/max."""
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    unit = (stored - stored.min()) / (stored.max() - stored.min())
    return 1.0 - unit


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", SHARED_FILES)
def test_shared_dicom_polarity_and_orientation(shared_dicom: Path, name: str) -> None:
    image = read_cxr(shared_dicom / name)
    assert image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    assert image.meta["source_format"] == "dicom"
    assert_chest_as_viewer_shows(image.pixels)


def test_monochrome1_is_inverted(shared_dicom: Path) -> None:
    """The same JPEG pixels labelled MONOCHROME1 must come out as the exact negative."""
    normal = read_cxr(shared_dicom / "siim-cr-jpeg-baseline.dcm")
    labelled_mono1 = read_cxr(shared_dicom / "siim-cr-jpeg-baseline-monochrome1.dcm")
    assert labelled_mono1.meta["inverted"] and not normal.meta["inverted"]
    np.testing.assert_allclose(labelled_mono1.pixels, 1.0 - normal.pixels, atol=1e-6)


def test_no_preamble_10bit_monochrome1_window(shared_dicom: Path) -> None:
    path = shared_dicom / "cr-monochrome1-10bit-chest-no-preamble.dcm"
    image = read_cxr(path)
    assert image.pixels.shape == (440, 440)
    assert image.meta["inverted"]
    assert image.meta["dicom"]["BitsStored"] == "10"
    # The file's window (centre 550, width 1024) is applied: a stored value at the centre maps to ~0.5
    # before inversion, so after inversion it is ~0.5 as well.
    dataset = pydicom.dcmread(path, force=True)
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # the file has no meta header
    stored = dataset.pixel_array
    near_centre = np.abs(stored.astype(int) - 550) <= 1
    assert near_centre.any()
    assert abs(float(image.pixels[near_centre].mean()) - 0.5) < 0.01


def test_rg1_uncompressed_15bit_monochrome1(rg1_uncr: Path) -> None:
    image = read_cxr(rg1_uncr)
    dataset = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    assert image.pixels.shape == (dataset.Rows, dataset.Columns) == (1955, 1841)  # (rows, columns), not (W, H)
    assert image.meta["inverted"]
    assert_chest_as_viewer_shows(image.pixels)
    for keyword in ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality"):
        assert image.meta["dicom"][keyword] == str(dataset.get(keyword, ""))
    assert set(image.meta["dicom"]) == set(DICOM_KEYWORDS)
    assert image.meta["pixel_spacing_known"] is False  # the file's spacing is 0.0\0.0, i.e. unknown


def test_rg1_windowed_matches_pydicom_orientation(rg1_uncr: Path) -> None:
    """The file's window (centre 15000, width 30000) covers all values: output is a linear map of pixel_array."""
    image = read_cxr(rg1_uncr)
    reference = reference_pixels(rg1_uncr)
    correlation = np.corrcoef(image.pixels.ravel(), reference.ravel())[0, 1]
    assert correlation > 0.999


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm"])
def test_jpeg2000_variants(rg1_uncr: Path, name: str) -> None:
    from pydicom.data import get_testdata_file

    reference = read_cxr(rg1_uncr).pixels
    image = read_cxr(get_testdata_file(name, download=False))
    tolerance = 1e-6 if name == "RG1_J2KR.dcm" else 0.02  # lossless vs lossy
    assert np.abs(image.pixels - reference).mean() <= tolerance


# ----------------------------------------------------------------------------- transfer syntaxes


def _write_jpeg_lossless(source: Path, target: Path) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.fixture(scope="module")
def rg1_reference(rg1_uncr: Path) -> np.ndarray:
    return read_cxr(rg1_uncr).pixels


@pytest.mark.parametrize("syntax", ["jpeg-lossless", "rle", "jpeg-ls"])
def test_lossless_transfer_syntaxes(tmp_path: Path, rg1_uncr: Path, rg1_reference: np.ndarray, syntax: str) -> None:
    target = tmp_path / f"rg1-{syntax}.dcm"
    if syntax == "jpeg-lossless":
        _write_jpeg_lossless(rg1_uncr, target)
    else:
        dataset = pydicom.dcmread(rg1_uncr)
        dataset.compress(RLELossless if syntax == "rle" else JPEGLSLossless)
        dataset.save_as(target)
    assert pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_cxr(target).pixels, rg1_reference)


# ----------------------------------------------------------------------------- bit depths and LUTs


def _requantised(rg1_uncr: Path, bits: int, target: Path) -> np.ndarray:
    """RG1 re-quantised to ``bits`` stored bits, window removed; returns the stored array."""
    dataset = pydicom.dcmread(rg1_uncr)
    stored = dataset.pixel_array.astype(np.float64)
    scaled = np.round((stored - stored.min()) / (stored.max() - stored.min()) * (2**bits - 1))
    pixels = scaled.astype(np.uint8 if bits <= 8 else np.uint16)
    for keyword in ("WindowCenter", "WindowWidth"):
        delattr(dataset, keyword)
    dataset.BitsAllocated = 8 if bits <= 8 else 16
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(target)
    return pixels


@pytest.mark.parametrize("bits", [8, 10, 12, 15, 16])
def test_bit_depths(tmp_path: Path, rg1_uncr: Path, bits: int) -> None:
    target = tmp_path / f"rg1-{bits}bit.dcm"
    stored = _requantised(rg1_uncr, bits, target)
    image = read_cxr(target)
    expected = 1.0 - stored / (2**bits - 1)  # full range used, MONOCHROME1
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    assert_chest_as_viewer_shows(image.pixels)


def test_modality_rescale_is_applied(tmp_path: Path, shared_dicom: Path) -> None:
    """A negative rescale slope flips the values; without a window the result is stretched, so it inverts."""
    source = shared_dicom / "nih-dx-secondary-capture.dcm"
    plain = read_cxr(source).pixels
    dataset = pydicom.dcmread(source)
    dataset.RescaleSlope = -2
    dataset.RescaleIntercept = 1000
    dataset.save_as(tmp_path / "rescaled.dcm")
    rescaled = read_cxr(tmp_path / "rescaled.dcm").pixels
    stored = dataset.pixel_array.astype(np.float64)
    expected = (stored.max() - stored) / (stored.max() - stored.min())
    np.testing.assert_allclose(rescaled, expected, atol=1e-6)
    assert np.corrcoef(rescaled.ravel(), plain.ravel())[0, 1] < -0.99


def test_window_center_width(tmp_path: Path, shared_dicom: Path) -> None:
    source = shared_dicom / "nih-dx-secondary-capture.dcm"
    dataset = pydicom.dcmread(source)
    dataset.WindowCenter = 128
    dataset.WindowWidth = 64
    dataset.save_as(tmp_path / "windowed.dcm")
    pixels = read_cxr(tmp_path / "windowed.dcm").pixels
    stored = dataset.pixel_array
    assert (pixels[stored <= 95] == 0).all() and (pixels[stored >= 160] == 1).all()
    assert abs(float(pixels[stored == 128].mean()) - 0.5) < 0.02


def test_voi_lut_sequence_is_preferred(tmp_path: Path, shared_dicom: Path) -> None:
    """An inverting VOI LUT (with a window also present) must be used instead of the window."""
    source = shared_dicom / "nih-dx-secondary-capture.dcm"
    plain = read_cxr(source).pixels
    dataset = pydicom.dcmread(source)
    dataset.WindowCenter = 10
    dataset.WindowWidth = 4
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = ((255 - np.arange(256)) * 256).astype("<u2").tobytes()
    dataset.VOILUTSequence = [item]
    dataset.save_as(tmp_path / "voilut.dcm")
    pixels = read_cxr(tmp_path / "voilut.dcm").pixels
    expected = 1.0 - np.asarray(dataset.pixel_array, dtype=np.float64) / 255.0
    np.testing.assert_allclose(pixels, expected, atol=1e-3)
    assert np.corrcoef(pixels.ravel(), plain.ravel())[0, 1] < -0.99


def test_presentation_lut_inverse(tmp_path: Path, shared_dicom: Path) -> None:
    source = shared_dicom / "nih-dx-secondary-capture.dcm"
    dataset = pydicom.dcmread(source)
    dataset.PresentationLUTShape = "INVERSE"
    dataset.save_as(tmp_path / "inverse.dcm")
    np.testing.assert_allclose(read_cxr(tmp_path / "inverse.dcm").pixels, 1.0 - read_cxr(source).pixels, atol=1e-6)


def test_monochrome1_with_inverse_shape_is_inverted_once(tmp_path: Path, rg1_uncr: Path) -> None:
    """DX images state MONOCHROME1 *and* Presentation LUT Shape INVERSE: one meaning, one inversion."""
    dataset = pydicom.dcmread(rg1_uncr)
    dataset.PresentationLUTShape = "INVERSE"
    dataset.save_as(tmp_path / "both.dcm")
    np.testing.assert_array_equal(read_cxr(tmp_path / "both.dcm").pixels, read_cxr(rg1_uncr).pixels)


# ----------------------------------------------------------------------------- rasters and NIfTI


def test_png_8bit_exact(nih_dir: Path) -> None:
    import imageio.v3 as iio

    path = next((nih_dir / "true").glob("*.png"))
    stored = iio.imread(path)
    image = read_cxr(path)
    assert image.pixels.shape == stored.shape[:2]
    np.testing.assert_array_equal(
        np.round(image.pixels * 255).astype(np.uint8), stored if stored.ndim == 2 else stored[..., 0]
    )
    assert image.meta["source_format"] == "raster"


def test_png_16bit_rgb_and_jpeg(tmp_path: Path, rg1_uncr: Path, rg1_reference: np.ndarray) -> None:
    import imageio.v3 as iio

    grey16 = np.round(rg1_reference * 65535).astype(np.uint16)
    iio.imwrite(tmp_path / "grey16.png", grey16)
    stretched = (grey16 - grey16.min()) / float(grey16.max() - grey16.min())  # > 8 bits: min..max window
    np.testing.assert_allclose(read_cxr(tmp_path / "grey16.png").pixels, stretched, atol=1e-6)

    grey8 = np.round(rg1_reference * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "rgb.png", np.stack([grey8] * 3, axis=-1))
    np.testing.assert_allclose(read_cxr(tmp_path / "rgb.png").pixels, grey8 / 255.0, atol=1e-6)

    iio.imwrite(tmp_path / "chest.jpg", grey8, quality=95)
    jpeg = read_cxr(tmp_path / "chest.jpg").pixels
    assert jpeg.shape == grey8.shape and np.abs(jpeg - grey8 / 255.0).mean() < 0.01
    assert_chest_as_viewer_shows(jpeg)

    no_suffix = tmp_path / "exported_image"  # PACS exports often have no suffix
    shutil.copy(tmp_path / "grey16.png", no_suffix)
    np.testing.assert_array_equal(read_cxr(no_suffix).pixels, read_cxr(tmp_path / "grey16.png").pixels)


def test_nifti_written_by_monai_round_trips(tmp_path: Path, nih_dir: Path) -> None:
    """A PNG converted to NIfTI with MONAI's LoadImage/SaveImage reads back in the PNG's orientation."""
    from monai.transforms import LoadImage, SaveImage

    png = next((nih_dir / "true").glob("*.png"))
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(png))
    SaveImage(output_dir=str(tmp_path), output_ext=".nii.gz", output_postfix="", separate_folder=False)(image)
    nifti = tmp_path / (png.stem + ".nii.gz")
    np.testing.assert_allclose(read_cxr(nifti).pixels, read_cxr(png).pixels, atol=1e-6)
    assert read_cxr(nifti).meta["source_format"] == "nifti"


# ----------------------------------------------------------------------------- bad input


def _expect_error(path: Path, *fragments: str) -> CXRInputError:
    with pytest.raises(CXRInputError) as caught:
        read_cxr(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert " -- " in message  # every error says what to do
    return caught.value


def test_error_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "absent.dcm", "file not found")


def test_error_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "report.txt"
    text.write_text("Impression: cardiomegaly.\n" * 20)
    _expect_error(text, "not a DICOM file or a supported image")
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("not really a png")
    _expect_error(fake_png, "not a readable image")


def test_error_truncated_dicom(tmp_path: Path, rg1_uncr: Path) -> None:
    data = rg1_uncr.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_error(truncated, "truncated or corrupt")


def test_error_no_pixel_data(tmp_path: Path, shared_dicom: Path) -> None:
    dataset = pydicom.dcmread(shared_dicom / "nih-dx-secondary-capture.dcm")
    del dataset.PixelData
    dataset.save_as(tmp_path / "nopixels.dcm")
    _expect_error(tmp_path / "nopixels.dcm", "no pixel data")


def test_error_multiframe(tmp_path: Path, shared_dicom: Path) -> None:
    dataset = pydicom.dcmread(shared_dicom / "nih-dx-secondary-capture.dcm")
    dataset.NumberOfFrames = 2
    dataset.PixelData = dataset.PixelData * 2
    dataset.save_as(tmp_path / "two-frames.dcm")
    _expect_error(tmp_path / "two-frames.dcm", "multi-frame", "2 frames")


def test_error_ct_and_mr(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    ct = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    _expect_error(ct, "modality CT is not a chest radiograph")
    mr = tmp_path / "mr.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), mr)
    _expect_error(mr, "modality MR")


def test_error_unsupported_compression(tmp_path: Path, shared_dicom: Path) -> None:
    dataset = pydicom.dcmread(shared_dicom / "siim-cr-jpeg-baseline.dcm")
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder
    dataset.save_as(tmp_path / "jpegxl.dcm", enforce_file_format=True)
    _expect_error(tmp_path / "jpegxl.dcm", "unsupported compression")


def test_error_nifti_volume(tmp_path: Path) -> None:
    import nibabel as nib

    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), dtype=np.int16), np.eye(4)), volume)
    _expect_error(volume, "3-D volume")


def test_error_multipage_raster(tmp_path: Path) -> None:
    import imageio.v3 as iio

    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    iio.imwrite(tmp_path / "two-pages.tif", frames)
    _expect_error(tmp_path / "two-pages.tif", "multi-frame")
    iio.imwrite(tmp_path / "animation.gif", frames)
    _expect_error(tmp_path / "animation.gif", "multi-frame")


def test_error_blank_image(tmp_path: Path) -> None:
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "blank.png", np.zeros((16, 16), dtype=np.uint16))
    _expect_error(tmp_path / "blank.png", "blank")
