"""De-identification of the study images: pixels only, no header text, no burned-in annotations.

Every image a study serves is decoded to a pixel array (:func:`~monai_exaggeration.transforms.read_cxr`
conventions for DICOM/PNG sources and the inference workflow's DICOM frames) and re-encoded here as
an 8-bit PNG that holds nothing but ``IHDR``, ``IDAT`` and ``IEND`` chunks (plus ``PLTE``/``tRNS`` if
ever needed by a palette image): no text, time, colour-profile or physical-size chunks. No DICOM
attribute value is ever copied into a study; the builder keeps the few identifiers it needs for
traceability (source path, SOP Instance UID) only in ``private/key.csv``.

DICOM sources whose BurnedInAnnotation is ``YES`` may show patient data in the pixels themselves;
:func:`burned_in_annotation` reports it so the builder can refuse them unless
``allow_burned_in: true``. Files without that attribute (and non-DICOM files) cannot be checked:
the study's owner must review them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

__all__ = ["ALLOWED_PNG_CHUNKS", "burned_in_annotation", "png_chunks", "to_uint8", "write_png"]

#: The only PNG chunk types a study image may hold.
ALLOWED_PNG_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Display values in [0, 1] (anything outside is clipped) as 8-bit grey levels, rounded."""
    values = np.asarray(pixels, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("image has non-finite values")
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(path: str | os.PathLike, image: np.ndarray, mode: int = 0o644) -> Path:
    """Write an 8-bit grey (rows, columns) or RGB/RGBA (rows, columns, 3|4) array as a metadata-free PNG.

    The file is created with ``mode`` (before the umask); its chunks are checked afterwards.
    """
    path = Path(path)
    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"write_png takes uint8 pixels, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"write_png takes a grey or RGB(A) image, got shape {array.shape}")
    picture = Image.fromarray(array)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        picture.save(handle, format="PNG", optimize=False, compress_level=6)
    extra = [chunk for chunk in png_chunks(path) if chunk not in ALLOWED_PNG_CHUNKS]
    if extra:  # never expected from Pillow without pnginfo: refuse rather than serve metadata
        path.unlink()
        raise ValueError(f"PNG encoder wrote metadata chunks {extra} to {path}")
    return path


def png_chunks(path: str | os.PathLike) -> list[bytes]:
    """The chunk types of a PNG file, in file order (raises ``ValueError`` if it is not a PNG)."""
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    chunks, offset = [], len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return chunks


def burned_in_annotation(path: str | os.PathLike) -> str | None:
    """BurnedInAnnotation (``"YES"``/``"NO"``) of a DICOM file; None if absent or not a DICOM file."""
    name = Path(path).name.lower()
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz")):
        return None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BurnedInAnnotation"])
    except InvalidDicomError:
        try:  # DICOM without preamble (PACS exports): read it anyway
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["BurnedInAnnotation"])
        except Exception:  # noqa: BLE001 - not DICOM: nothing to check
            return None
    except Exception:  # noqa: BLE001
        return None
    value = dataset.get("BurnedInAnnotation")
    return str(value).strip().upper() if value not in (None, "") else None
