"""Read a chest X-ray file (DICOM, PNG/JPEG, NIfTI) into a display-ready image in [0, 1] plus metadata.

Conventions (tested in ``tests/test_readers.py``):

* Orientation: the array is indexed ``(row, column)`` exactly as a DICOM viewer shows the image
  (pydicom's convention; *not* MONAI's ``(W, H)`` reader convention).
* Polarity: 0 is black and 1 is white on screen (MONOCHROME1 and Presentation LUT Shape INVERSE
  are inverted so that bone and the mediastinum are bright, lungs dark).
* Intensity: DICOM Modality LUT (rescale slope/intercept or LUT) is applied, then the first VOI LUT
  or window centre/width when present; the VOI output range maps to [0, 1]. Without a VOI, images
  of at most 8 bits are taken as display-ready (value / (2**bits - 1)); deeper images are
  stretched from their minimum to their maximum (a viewer's default window).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from monai_exaggeration.errors import CXRInputError

__all__ = [
    "CXRImage",
    "DICOM_KEYWORDS",
    "InputLimits",
    "check_dicom_header",
    "read_cxr",
    "read_dicom",
    "read_raster",
    "read_nifti",
    "sniff_format",
]

logger = logging.getLogger(__name__)

#: Modalities accepted as (chest) projection radiographs. OT/SC cover secondary captures.
ACCEPTED_MODALITIES = frozenset({"CR", "DX", "RG", "OT", "SC", ""})

#: DICOM attributes kept in the metadata, as strings ("" when absent), for writing derived DICOM.
DICOM_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "PatientOrientation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "PhotometricInterpretation",
    "BitsStored",
    "BurnedInAnnotation",
    "Manufacturer",
    "TransferSyntaxUID",
)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_EXPORT_HINT = "export the image again from the PACS or modality"


@dataclass(frozen=True)
class InputLimits:
    """What an input may be, checked before its pixels are decoded (from the file size and header).

    ``max_megapixels`` and ``max_file_mb`` bound the memory and time one input can take (an
    8000 x 8000 image needs gigabytes at source resolution); ``min_size`` and ``max_aspect`` refuse
    images no chest radiograph has (icons, strips). The defaults of :meth:`for_sources` are what
    ``classify`` and inference use; training data (already small, prepared) only gets the upper bounds.
    """

    min_size: int = 0
    max_aspect: float = math.inf
    max_megapixels: float = 50.0
    max_file_mb: float = 1024.0

    @classmethod
    def for_sources(cls, **overrides: Any) -> InputLimits:
        """Limits for images to explain or score: at least 64 x 64, aspect at most 3:1, at most 50 MP."""
        settings = {"min_size": 64, "max_aspect": 3.0}
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**settings)

    def check_file(self, path: Path) -> None:
        size = path.stat().st_size
        if size == 0:
            raise CXRInputError(path, "empty file (0 bytes)", "export the image again; the copy is empty")
        if size > self.max_file_mb * 1024**2:
            raise CXRInputError(
                path,
                f"file is {size / 1024**2:.0f} MB, above the limit of {self.max_file_mb:g} MB",
                "give a smaller export, or raise the limit (max_file_mb) if this machine has the memory",
            )

    def check_shape(self, path: Path, rows: int, columns: int) -> None:
        rows, columns = int(rows), int(columns)
        if rows * columns > self.max_megapixels * 1e6:
            raise CXRInputError(
                path,
                f"image is {columns} x {rows} ({rows * columns / 1e6:.1f} MP), above the limit of "
                f"{self.max_megapixels:g} MP",
                "downsample it, or raise the limit (max_megapixels) if this machine has the memory",
            )
        if min(rows, columns) < self.min_size:
            raise CXRInputError(
                path,
                f"image is {columns} x {rows} pixels, smaller than the minimum {self.min_size} x {self.min_size}",
                "give the full-size radiograph, not a thumbnail (or lower min_size)",
            )
        if min(rows, columns) > 0 and max(rows, columns) / min(rows, columns) > self.max_aspect:
            raise CXRInputError(
                path,
                f"image is {columns} x {rows} pixels, an aspect ratio beyond {self.max_aspect:g}:1",
                "give a whole chest radiograph, not a strip or a crop (or raise max_aspect)",
            )


def pixel_digest(values: np.ndarray) -> str:
    """Hex SHA-256 of a pixel array (shape, dtype and values): identifies the image as displayed and explained."""
    array = np.ascontiguousarray(values)
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    digest.update(array.data)
    return digest.hexdigest()


@dataclass
class CXRImage:
    """A decoded chest X-ray: ``pixels`` float32 (rows, columns) in [0, 1] and its metadata."""

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _base_meta(path: Path, source_format: str, shape: tuple[int, int]) -> dict[str, Any]:
    return {
        "filename_or_obj": str(path),
        "source_format": source_format,
        "source_shape": [int(shape[0]), int(shape[1])],
        "pixel_spacing": [1.0, 1.0],
        "pixel_spacing_known": False,
        "inverted": False,
        "dicom": {keyword: "" for keyword in DICOM_KEYWORDS},
    }


def _to_unit(values: np.ndarray, low: float, high: float, path: Path) -> np.ndarray:
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        raise CXRInputError(path, "the image is blank (all pixels have the same value)", "check the export")
    # float32 in place: one array of the image's size (exact for integer values up to 2**24)
    unit = (
        np.asarray(values, dtype=np.float32).copy()
        if np.asarray(values).dtype == np.float32
        else np.asarray(values).astype(np.float32)
    )
    unit -= np.float32(low)
    unit *= np.float32(1.0 / (high - low))
    return np.clip(unit, 0.0, 1.0, out=unit)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (rows, columns, 3|4) array (alpha ignored)."""
    luma = rgb[..., 0].astype(np.float32) * np.float32(0.299)  # channel by channel: no (rows, columns, 3) float copy
    luma += rgb[..., 1].astype(np.float32) * np.float32(0.587)
    luma += rgb[..., 2].astype(np.float32) * np.float32(0.114)
    return luma


def _grey(path: Path, rgb: np.ndarray, what: str) -> np.ndarray:
    """:func:`_luminance` of a colour image, saying so at INFO level when its channels differ (colour is dropped)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        logger.debug("%s: %s image with equal channels, read as grey", path, what)
    else:
        logger.info(
            "%s: colour (%s) image converted to grey (ITU-R BT.601 luminance); its colours are not used", path, what
        )
    return _luminance(rgb)


#: Leading bytes of the image formats read here (DICOM is recognised by ``DICM`` at byte 128).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
#: Formats read by :func:`read_raster`, and the file extension that tells imageio which plugin to use.
_RASTER_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "gif": ".gif", "bmp": ".bmp"}


def _nifti_version(header: bytes) -> int | None:
    """1 or 2 when ``header`` starts a single-file NIfTI (its ``sizeof_hdr`` and magic), else None."""
    for version, size, magic_at, magic in ((1, 348, 344, b"n+1\x00"), (2, 540, 4, b"n+2\x00")):
        if len(header) >= size and header[magic_at : magic_at + 4] == magic:
            if int.from_bytes(header[:4], "little") == size or int.from_bytes(header[:4], "big") == size:
                return version
    return None


def sniff_format(path: str | os.PathLike) -> str | None:
    """The format of a file from its content, whatever its name: ``"dicom"``, ``"nifti"``, ``"nifti.gz"``,
    ``"png"``, ``"jpeg"``, ``"tiff"``, ``"gif"``, ``"bmp"``; None when the content is none of these
    (a DICOM file without its 128-byte preamble is among those: the caller then goes by the name)."""
    with open(path, "rb") as handle:
        head = handle.read(540)
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"\x1f\x8b":  # gzip: a compressed NIfTI is the only one read here
        try:
            with gzip.open(path, "rb") as stream:
                inner = stream.read(540)
        except (OSError, EOFError, zlib.error):
            return None
        return "nifti.gz" if _nifti_version(inner) else None
    if _nifti_version(head):
        return "nifti"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    return None


def read_cxr(path: str | os.PathLike, limits: InputLimits | None = None) -> CXRImage:
    """Read any supported chest X-ray file; raise :class:`CXRInputError` with a clear message if unusable.

    ``limits`` (default :class:`InputLimits`: at most 50 MP and 1 GB) are checked before decoding.
    Library warnings about the file (e.g. pydicom's) go to this module's log at DEBUG level. The
    metadata's ``pixel_sha256`` identifies the decoded pixel content.
    """
    path = Path(path)
    limits = limits or InputLimits()
    if not path.exists():
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except RuntimeError:  # Python < 3.13 reports a loop this way
                raise CXRInputError(path, "symbolic link loop", "point the link at the image file") from None
            except OSError as error:
                if "loop" in str(error).lower() or getattr(error, "errno", None) == 40:
                    raise CXRInputError(path, "symbolic link loop", "point the link at the image file") from None
            raise CXRInputError(
                path, "broken symbolic link (its target does not exist)", "point the link at the image file"
            )
        raise CXRInputError(path, "file not found", "check the path")
    if path.is_dir():
        raise CXRInputError(path, "is a folder, not an image file", "give one image file")
    limits.check_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read_any(path, limits)
        finally:
            for warning in caught:
                logger.debug("%s: %s", path, warning.message)


def _read_any(path: Path, limits: InputLimits) -> CXRImage:
    kind = sniff_format(path)  # the content decides: a PNG named .dcm is read as a PNG
    if kind == "dicom":
        return read_dicom(path, limits)
    if kind in ("nifti", "nifti.gz"):
        return read_nifti(path, limits)
    if kind in _RASTER_EXTENSIONS:
        return read_raster(path, limits)
    # Content not recognised (a DICOM without preamble, or a damaged file): the name decides.
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, limits)
    if name.endswith(RASTER_SUFFIXES):
        return read_raster(path, limits)
    if name.endswith((".dcm", ".dicom")):
        return read_dicom(path, limits)
    # Unknown suffix (PACS exports often have none): DICOM without preamble, then raster images.
    try:
        return read_dicom(path, limits)
    except CXRInputError as dicom_error:
        if "not a DICOM file" not in dicom_error.problem:
            raise
    try:
        return read_raster(path, limits)
    except CXRInputError as raster_error:
        if "not a readable image" not in raster_error.problem:
            raise
        raise CXRInputError(
            path,
            "not a DICOM file or a supported image (PNG, JPEG, TIFF, NIfTI)",
            "give a chest radiograph in one of these formats",
        ) from None


# --------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass  # no preamble / no file meta: try again without the checks
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise CXRInputError(path, f"corrupt DICOM file ({error})", _EXPORT_HINT) from None
    try:
        dataset = pydicom.dcmread(path, force=True)
        # Touch every element so that garbage fails here, not later.
        _ = [element.value for element in dataset]
    except Exception:  # noqa: BLE001
        raise CXRInputError(path, "not a DICOM file", "give a DICOM, PNG, JPEG or NIfTI file") from None
    if "SOPClassUID" not in dataset and "PixelData" not in dataset and "Rows" not in dataset:
        raise CXRInputError(path, "not a DICOM file", "give a DICOM, PNG, JPEG or NIfTI file")
    return dataset


def _ensure_transfer_syntax(dataset: pydicom.Dataset) -> None:
    """Files without a file meta header: record the encoding they were read with."""
    if "TransferSyntaxUID" in dataset.file_meta:
        return
    implicit, little = dataset.original_encoding
    if implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    dataset.file_meta.TransferSyntaxUID = uid


def _check_dicom_content(path: Path, dataset: pydicom.Dataset) -> None:
    modality = str(dataset.get("Modality", "")).upper()
    if modality not in ACCEPTED_MODALITIES:
        raise CXRInputError(
            path,
            f"modality {modality} is not a chest radiograph",
            "give a CR or DX (or secondary capture) chest X-ray",
        )
    if "PixelData" not in dataset:
        what = "structured report or presentation state" if "Rows" not in dataset else "damaged image"
        raise CXRInputError(path, f"has no pixel data (a {what}?)", "give the image itself")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CXRInputError(
            path,
            f"is a multi-frame image or volume ({frames} frames)",
            "give a single-frame projection radiograph",
        )
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise CXRInputError(
            path,
            f"unsupported compression '{syntax.name}' ({syntax})",
            "convert it to an uncompressed or JPEG/JPEG 2000/RLE transfer syntax (e.g. gdcmconv --raw)",
        ) from None
    if not decoder.is_available:
        raise CXRInputError(
            path,
            f"no decoder installed for '{syntax.name}'",
            "install python-gdcm and pylibjpeg-openjpeg (pip install monai_exaggeration installs them)",
        )


def check_dicom_header(path: str | os.PathLike, dataset: pydicom.Dataset, limits: InputLimits | None = None) -> None:
    """Refuse, from the header alone, a DICOM instance :func:`read_dicom` would refuse before decoding it.

    Raises :class:`CXRInputError` for a modality that is no radiograph, no pixel data, several
    frames, a transfer syntax without decoder, or a size outside ``limits``. ``dataset`` needs its
    ``file_meta.TransferSyntaxUID``. The DICOM node answers a C-STORE with a failure status from this.
    """
    path = Path(path)
    _check_dicom_content(path, dataset)
    (limits or InputLimits()).check_shape(path, int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0))


def _decode(path: Path, dataset: pydicom.Dataset) -> np.ndarray:
    try:
        return dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - decoders raise many types on damaged data
        raise CXRInputError(
            path, f"pixel data cannot be decoded, the file may be truncated or corrupt ({error})", _EXPORT_HINT
        ) from None


def _voi_range(dataset: pydicom.Dataset) -> tuple[float, float]:
    """Output range of the first VOI transform (probed at extreme inputs, so it works for LUTs and windows)."""
    probe = apply_voi_lut(np.array([-(2**31), 2**31 - 1], dtype=np.int64), dataset, index=0, prefer_lut=True)
    return float(np.min(probe)), float(np.max(probe))


def _dicom_meta(path: Path, dataset: pydicom.Dataset, shape: tuple[int, int]) -> dict[str, Any]:
    meta = _base_meta(path, "dicom", shape)
    tags = meta["dicom"]
    for keyword in DICOM_KEYWORDS:
        if keyword == "TransferSyntaxUID":
            tags[keyword] = str(dataset.file_meta.get("TransferSyntaxUID", ""))
            continue
        value = dataset.get(keyword, "")
        if isinstance(value, pydicom.multival.MultiValue):
            value = "\\".join(str(item) for item in value)
        tags[keyword] = "" if value is None else str(value)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = dataset.get(keyword)
        if spacing is not None and len(spacing) == 2 and float(spacing[0]) > 0 and float(spacing[1]) > 0:
            meta["pixel_spacing"] = [float(spacing[0]), float(spacing[1])]
            meta["pixel_spacing_known"] = True
            break
    return meta


def read_dicom(path: str | os.PathLike, limits: InputLimits | None = None) -> CXRImage:
    """Read a single-frame DICOM radiograph (any transfer syntax pydicom/GDCM/OpenJPEG can decode)."""
    path = Path(path)
    dataset = _dcmread(path)
    _ensure_transfer_syntax(dataset)
    check_dicom_header(path, dataset, limits)
    stored = _decode(path, dataset)
    if stored.ndim == 3:  # colour secondary capture (pydicom converts YBR to RGB)
        values, low, high = _grey(path, stored, str(dataset.get("PhotometricInterpretation", "RGB"))), 0.0, 255.0
    elif stored.ndim == 2:
        values = apply_modality_lut(stored, dataset)
        has_rescale = "ModalityLUTSequence" in dataset or float(dataset.get("RescaleSlope", 1) or 1) != 1
        if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
            if "VOILUTSequence" in dataset and values.dtype.kind == "f":
                values = np.rint(values).astype(np.int64)  # a VOI LUT is indexed by integer values
            values = apply_voi_lut(values, dataset, index=0, prefer_lut=True)
            low, high = _voi_range(dataset)
        elif int(dataset.get("BitsStored", 16)) <= 8 and not has_rescale:
            low, high = 0.0, float(2 ** int(dataset.BitsStored) - 1)
        else:
            low, high = float(np.min(values)), float(np.max(values))
    else:
        raise CXRInputError(path, f"unexpected pixel array of shape {stored.shape}", "give a 2-D radiograph")
    pixels = _to_unit(values, low, high, path)
    meta = _dicom_meta(path, dataset, pixels.shape)
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    shape = str(dataset.get("PresentationLUTShape", "")).upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        np.subtract(np.float32(1.0), pixels, out=pixels)
        meta["inverted"] = True
    meta["pixel_sha256"] = pixel_digest(pixels)  # what is shown and explained (after LUTs and polarity)
    return CXRImage(pixels, meta)


# --------------------------------------------------------------------------------------- rasters


#: Frames counted at most when refusing a multi-frame file (each costs a header read, never a decode).
_MAX_FRAMES_COUNTED = 1000


def _check_raster_header(path: Path, limits: InputLimits, rows: int, columns: int, frames: int) -> None:
    """Frames and size from the header: refused here, before any pixel is decoded (decompression bombs)."""
    if frames > 1:
        counted = f"{frames} frames" if frames < _MAX_FRAMES_COUNTED else f"at least {frames} frames"
        raise CXRInputError(path, f"is a multi-frame image or volume ({counted})", "give one 2-D image")
    limits.check_shape(path, rows, columns)


def _pillow_frames(image: Any) -> int:
    """Frames or pages of an open Pillow image, found by seeking their headers (up to :data:`_MAX_FRAMES_COUNTED`)."""
    frames = 1
    try:
        while frames < _MAX_FRAMES_COUNTED:
            image.seek(frames)
            frames += 1
    except EOFError:
        pass
    except Exception:  # noqa: BLE001 - a damaged later frame still is another frame
        frames += 1
    return frames


def _tiff_header(path: Path) -> tuple[int, int, int] | None:
    """(rows, columns, pages) of a TIFF Pillow cannot open, from tifffile's page headers; None when unknown."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            first = tiff.pages[0]
            return int(first.imagelength), int(first.imagewidth), len(tiff.pages)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: imageio decides (and words the error)
        return None


#: Single-frame files that imageio reads with Pillow as ``np.asarray(image)``, with no conversion.
_PILLOW_AS_IS = {"PNG": ("L", "RGB", "RGBA"), "JPEG": ("L", "RGB"), "BMP": ("L", "RGB")}


def _pillow_read(path: Path, limits: InputLimits) -> tuple[bool, np.ndarray | None]:
    """(whether Pillow read the header, the pixels or None): frames and size are checked from the header
    first; the pixels of an 8-bit grey/RGB(A) PNG, JPEG or BMP are decoded by Pillow directly, anything
    else (and any failure) is left to imageio.

    For these files imageio's Pillow plugin returns exactly ``np.asarray(image)``; opening the file
    once, without imageio's plugin search, takes a fifth of the time for a 128 px image.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's decompression-bomb warning: our limit decides
            image = Image.open(path)
    except Exception:  # noqa: BLE001 - not an image PIL knows: imageio decides
        return False, None
    with image:
        _check_raster_header(path, limits, int(image.height), int(image.width), _pillow_frames(image))
        if image.mode not in _PILLOW_AS_IS.get(image.format or "", ()):
            return True, None
        try:
            image.seek(0)
            return True, np.asarray(image)
        except Exception:  # noqa: BLE001 - truncated or damaged: imageio's path gives the error
            return True, None


def _pillow_pixels(path: Path, limits: InputLimits) -> np.ndarray | None:
    """The pixels :func:`_pillow_read` decodes with Pillow (None: imageio decides)."""
    return _pillow_read(path, limits)[1]


def read_raster(path: str | os.PathLike, limits: InputLimits | None = None) -> CXRImage:
    """Read an 8- or 16-bit PNG/JPEG/TIFF (grayscale, RGB or RGBA) with imageio.

    The format is taken from the content (a PNG named ``.dcm`` is read as a PNG); the number of
    frames or pages and the size are checked from the header before anything is decoded.
    """
    import imageio.v3 as iio

    path = Path(path)
    limits = limits or InputLimits()
    kind = sniff_format(path)
    header_read, image = _pillow_read(path, limits)
    if image is None:
        if not header_read and kind == "tiff" and (header := _tiff_header(path)) is not None:
            _check_raster_header(path, limits, *header)
        try:
            image = np.asarray(iio.imread(path, extension=_RASTER_EXTENSIONS.get(kind)))
        except Exception as error:  # noqa: BLE001 - imageio raises plugin-specific errors
            raise CXRInputError(
                path, f"not a readable image ({type(error).__name__})", "give a PNG/JPEG/DICOM"
            ) from None
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        values = _grey(path, image, "RGBA" if image.shape[-1] == 4 else "RGB")
    elif image.ndim == 3 and image.shape[-1] in (1, 2):
        values = image[..., 0]
    elif image.ndim == 2:
        values = image
    else:
        raise CXRInputError(path, f"is a multi-frame image or volume (shape {image.shape})", "give one 2-D image")
    limits.check_shape(path, *values.shape)
    if image.dtype == np.uint8:
        low, high = 0.0, 255.0
    elif image.dtype == np.bool_:
        low, high = 0.0, 1.0
    else:
        low, high = float(np.min(values)), float(np.max(values))
    pixels = _to_unit(values, low, high, path)
    meta = _base_meta(path, "raster", pixels.shape)
    meta["pixel_sha256"] = pixel_digest(pixels)
    return CXRImage(pixels, meta)


# --------------------------------------------------------------------------------------- NIfTI


def _open_nifti(stream: Any) -> Any:
    """The NIfTI-1 or -2 image in the open (decompressed) ``stream``: its header is read, its voxels are not.

    Read through a file map rather than ``nibabel.load``, so that the content decides, not the name.
    """
    import nibabel as nib
    from nibabel.fileholders import FileHolder

    version = _nifti_version(stream.read(540))
    if version is None:
        raise ValueError("no NIfTI-1 or NIfTI-2 header")
    stream.seek(0)
    image_class = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    return image_class.from_file_map({"image": FileHolder(fileobj=stream)})


def read_nifti(path: str | os.PathLike, limits: InputLimits | None = None) -> CXRImage:
    """Read a 2-D NIfTI radiograph (first voxel axis = columns, second = rows, as MONAI/ITK write 2-D images).

    The shape is checked from the header before any voxel is decompressed: a small ``.nii.gz``
    declaring a large volume is refused at once (decompression bombs).
    """
    path = Path(path)
    kind = sniff_format(path)
    compressed = kind == "nifti.gz" or (kind is None and path.name.lower().endswith(".gz"))
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            image = _open_nifti(stream)
            shape = tuple(int(v) for v in image.shape)
            axes = [v for v in shape if v != 1]
            if len(axes) != 2:
                what = f"a {len(axes)}-D volume" if len(axes) > 2 else "not a 2-D image"
                raise CXRInputError(path, f"is {what} (shape {shape})", "give a single 2-D radiograph")
            (limits or InputLimits()).check_shape(path, axes[1], axes[0])
            data = np.squeeze(np.asarray(image.dataobj))
    except CXRInputError:
        raise
    except Exception as error:  # noqa: BLE001
        raise CXRInputError(path, f"corrupt or unreadable NIfTI ({error})", _EXPORT_HINT) from None
    values = data.T
    if data.dtype == np.uint8:
        low, high = 0.0, 255.0
    else:
        low, high = float(np.min(values)), float(np.max(values))
    pixels = _to_unit(values, low, high, path)
    meta = _base_meta(path, "nifti", pixels.shape)
    meta["pixel_sha256"] = pixel_digest(pixels)
    zooms = image.header.get_zooms()[:2]
    meta["pixel_spacing"] = [float(zooms[1]), float(zooms[0])]
    return CXRImage(pixels, meta)
