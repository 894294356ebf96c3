"""Write a progressive-exaggeration series as a new DICOM series of Secondary Capture images.

One source radiograph -> one new series (same Patient, same Study) of single-frame Secondary
Capture instances (highdicom :class:`highdicom.sc.SCImage`), one per step of the series, so that the
counterfactuals sit next to the original in a PACS viewer. Conventions (tested in
``tests/test_secondary_capture.py``; summarised in docs/method.md, "DICOM conventions", and for users
in docs/inference.md):

* **UIDs are deterministic**: ``SeriesInstanceUID = derived_uid(source SOP, model version, "series",
  pixel SHA-256)`` and ``SOPInstanceUID = derived_uid(source SOP, model version, step, pixel SHA-256)``,
  so writing (or sending) the same series again never creates duplicates in a PACS, and two
  different images that share a SOP Instance UID (a re-export with other pixels, a MONOCHROME1
  twin) get different series. The pixel SHA-256 is ``meta["pixel_sha256"]`` of
  :func:`~monai_exaggeration.transforms.read_cxr` (left out when the metadata has none). :func:`derived_uid` makes ``2.25.<int>`` UIDs
  from a name-based (SHA-1, RFC 4122 version 5) UUID of its inputs (ISO/IEC 9834-8, DICOM PS3.5
  B.2); unlike ``pydicom.uid.generate_uid(entropy_srcs=...)`` the inputs are encoded unambiguously
  (``("ab", "c")`` differs from ``("a", "bc")``, step ``0`` from ``"0"``) and the result does not
  depend on a library's internals.
* **Patient and Study** attributes are copied verbatim (as the reader stored them in
  ``meta["dicom"]``) from the source: PatientID, PatientName, PatientBirthDate, PatientSex,
  StudyInstanceUID, StudyID, StudyDate, StudyTime, StudyDescription, AccessionNumber,
  ReferringPhysicianName. BodyPartExamined and Laterality (R/L) are copied too; a source without
  BodyPartExamined gets ``SeriesInfo.body_part`` ("CHEST": the frames are chest radiographs).
* **Non-DICOM sources** (PNG, JPEG, NIfTI: ``meta["dicom"]`` has no SOPInstanceUID) get a new,
  clearly marked patient and study, derived from the SHA-256 of the source *file content* (so the
  same file gives the same patient/study/UIDs wherever it lies, and no path or file name, which may
  contain identifiers, is written): PatientID ``EXAG-<16 hex>``, PatientName
  ``ANONYMOUS^EXAGGERATION``, StudyID ``EXAG-<8 hex>``, StudyInstanceUID
  ``derived_uid("sha256:<hex>", "", "study")`` (independent of the model, so series of several
  models of one file share a study), StudyDescription "Generated from a non-DICOM file ...",
  empty birth date/sex/study date/time/accession (unknown). There is no SourceImageSequence
  (nothing to reference); the DerivationDescription names the file's SHA-256 instead. If the file
  cannot be read, its resolved path string is hashed instead.
* **Pixels**: frames are float arrays ``(rows, columns)`` in [0, 1], display polarity (0 black),
  indexed as a viewer shows them (``read_cxr`` convention). They are written as-is (no transpose:
  MONAI's ``(C, W, H)`` arrays must be transposed back by the caller; a frame whose shape is the
  source's transposed is rejected). MONOCHROME2, ``round(x * (2**bits - 1))`` as uint8 (8 bits,
  no VOI: display-ready) or uint16 (16 bits, full range, WindowCenter 32767.5 / WindowWidth 65536
  so every viewer shows [0, 65535] as black to white). Values within 0.01 outside [0, 1] are
  clipped; anything further out (e.g. a tanh output in [-1, 1]) is a ``ValueError``.
* **Description**: ImageType ``DERIVED\\SECONDARY``, ConversionType ``SYN`` (synthetic image),
  BurnedInAnnotation copied from the source (the frames are the source plus a change, so any text
  in the source's pixels is carried over); for a source without it, ``meta["burned_in_annotation"]``
  (set when the user declares non-DICOM inputs free of text) or else omitted with a warning in the
  log, never a guessed ``NO``. Modality ``OT`` (:data:`SERIES_MODALITY`), PatientOrientation copied when present (else empty, type 2), InstanceNumber
  ``step + 1``, DerivationCodeSequence (CID 7203: 113042 "Pixel by pixel addition" and 113085
  "Spatial resampling" for frames on the source's grid, 113085 alone for frames at model
  resolution), DerivationDescription, ImageComments (step, target bin, bin centre, achieved
  score), SeriesDescription ``<method> <finding> - research use only, not for diagnosis``
  (``Exaggeration`` for the explainer, ``Latent Shift`` or ``Pixel ascent`` for the baselines; the
  finding is shortened to keep 64 characters). IHE AI Results conventions: the SourceImageSequence
  item has Purpose of Reference 121322 "Source image for image processing operation", and
  ContributingEquipmentSequence names this software as Synthesizing Equipment (DCM 109100, CID 7005)
  with its model name, its version plus the model version and a deterministic Device UID
  (:func:`device_uid`), after the source's acquisition equipment. Explicit VR Little Endian.
* **Files**: ``output_dir/<SeriesInstanceUID>/step_<step:03d>.dcm``. Every frame is validated
  before any file is touched; each file is written atomically (temporary name in the same folder,
  then ``os.replace``); if anything fails, the files this call created are removed again (files of an
  earlier identical run are only ever replaced by complete files with the same UIDs).
  :func:`write_series` returns a :class:`WrittenSeries`: the paths and the UIDs written into them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from monai_exaggeration import __version__
from monai_exaggeration.binning import centre_values
from monai_exaggeration.dicom.codes import (
    DERIVATION_AT_MODEL_GRID,
    DERIVATION_AT_SOURCE_GRID,
    SOURCE_IMAGE_PURPOSE,
    SYNTHESIZING_EQUIPMENT,
    code_item,
)
from monai_exaggeration.utils import atomic_write

__all__ = [
    "DEFAULT_SERIES_NUMBER",
    "FrameInfo",
    "SeriesInfo",
    "WrittenSeries",
    "derived_uid",
    "device_uid",
    "equipment_item",
    "quantise_frame",
    "series_file_name",
    "series_instance_uid",
    "write_series",
]

logger = logging.getLogger(__name__)
_BURNED_IN_WARNED = False

#: Fixed namespace of the name-based UUIDs behind :func:`derived_uid` (never change it: UIDs would change).
UID_NAMESPACE = uuid.UUID("5b0f7c7e-2f4e-5d43-9a53-6d6f6e61692d")
SOFTWARE_NAME = "monai_exaggeration"
DEFAULT_SERIES_NUMBER = 900
NON_DICOM_PATIENT_NAME = "ANONYMOUS^EXAGGERATION"
RESEARCH_NOTE = "research use only, not for diagnosis"
#: Values this far outside [0, 1] are clipped; further out is an error.
RANGE_TOLERANCE = 0.01
#: Modality of every written frame: OT ("other"), whatever the source's. The frames are synthesized, not
#: acquired; and viewers treat CR/DX/MG instances as single images (OHIF v3 makes each its own display
#: set), so a series with the source's CR would not scroll as one stack of frames.
SERIES_MODALITY = "OT"
#: The Patient and Study attributes copied from the source, with highdicom's constructor argument for each.
_PATIENT_STUDY_ARGUMENTS = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyInstanceUID": "study_instance_uid",
    "StudyID": "study_id",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "ReferringPhysicianName": "referring_physician_name",
}
_PATIENT_STUDY_KEYWORDS = tuple(_PATIENT_STUDY_ARGUMENTS)
#: PatientOrientation values highdicom's ``patient_orientation`` takes (biped, one letter per direction).
_ORIENTATION_LETTERS = frozenset("APRLHF")


# ------------------------------------------------------------------------------------------ UIDs


def derived_uid(source_sop_uid: str, model_version: str, *parts: str | int) -> UID:
    """A deterministic DICOM UID ``2.25.<decimal UUID>`` (at most 44 characters) from its inputs.

    The UUID is RFC 4122 version 5 (SHA-1, name based) of the JSON list
    ``[source_sop_uid, model_version, *parts]`` in a fixed namespace: the same inputs always give the
    same UID, different inputs (including ``0`` versus ``"0"``) give different UIDs.
    """
    if not isinstance(source_sop_uid, str) or not source_sop_uid:
        raise ValueError("derived_uid needs a non-empty source key (the source SOP Instance UID)")
    if not isinstance(model_version, str):
        raise TypeError(f"model_version must be a string, got {type(model_version).__name__}")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            raise TypeError(f"UID parts must be str or int, got {part!r}")
    name = json.dumps([source_sop_uid, model_version, *parts], separators=(",", ":"))
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}")


def device_uid(software_name: str, model_version: str) -> UID:
    """The Device UID of this software running ``model_version``: deterministic, the same in every written object."""
    return derived_uid(software_name, model_version, "device")


def equipment_item(
    purpose: Code,
    software_name: str,
    model_name: str,
    software_versions: Sequence[str],
    model_version: str,
    description: str,
    when: datetime.datetime | None = None,
) -> hd.ContributingEquipment:
    """A Contributing Equipment item naming this software (IHE AI Results): the CID 7005 ``purpose``,
    Manufacturer, Manufacturer's Model Name, Software Versions and Device UID (:func:`device_uid`)."""
    item = hd.ContributingEquipment(
        manufacturer=software_name,
        purpose_of_reference=purpose,
        manufacturer_model_name=model_name[:64],
        software_versions=[value[:64] for value in software_versions],
        contribution_datetime=when,
        contribution_description=description[:1024],
    )
    item.DeviceUID = device_uid(software_name, model_version)
    return item


# ------------------------------------------------------------------------------------------ description


@dataclass(frozen=True)
class FrameInfo:
    """One step of a series: its index, the target bin and its centre, and the achieved classifier score."""

    step: int
    target_bin: int
    target_centre: float
    score: float | None = None
    note: str = ""  # how the frame was made, for ImageComments (e.g. its calibrated strength)


@dataclass
class SeriesInfo:
    """What one output series shows.

    ``frames[i]`` describes ``frames[i]`` given to :func:`write_series`. ``model_version`` identifies the
    explainer (and with it the number of bins): it enters every UID, so a new model makes a new series.
    """

    finding: str
    model_version: str
    frames: Sequence[FrameInfo]
    series_number: int = DEFAULT_SERIES_NUMBER
    num_bins: int | None = None
    software_name: str = SOFTWARE_NAME
    software_version: str = __version__
    body_part: str = "CHEST"
    method: str = "Exaggeration"  # the method's label, first word(s) of the SeriesDescription

    def __post_init__(self) -> None:
        self.frames = list(self.frames)
        if not isinstance(self.finding, str) or not self.finding.strip():
            raise ValueError("SeriesInfo.finding must name the finding the classifier scores")
        if not isinstance(self.model_version, str) or not self.model_version.strip():
            raise ValueError("SeriesInfo.model_version must be a non-empty string (it enters every UID)")
        for name in ("model_version", "software_name", "software_version"):
            value = getattr(self, name)
            if len(value) > 64 or "\\" in value:
                raise ValueError(f"SeriesInfo.{name} {value!r}: at most 64 characters and no backslash (DICOM LO)")
        if not self.frames:
            raise ValueError("SeriesInfo.frames is empty: a series needs at least one frame")
        steps = [frame.step for frame in self.frames]
        if len(set(steps)) != len(steps) or any(not isinstance(s, (int, np.integer)) or s < 0 for s in steps):
            raise ValueError(f"frame steps must be distinct non-negative integers, got {steps}")
        if not 0 <= int(self.series_number) <= 2**31 - 1:
            raise ValueError(f"series_number {self.series_number} out of range")
        for frame in self.frames:
            if self.num_bins is not None and not 0 <= frame.target_bin < self.num_bins:
                raise ValueError(f"target bin {frame.target_bin} outside 0..{self.num_bins - 1}")
            if frame.score is not None and not (math.isfinite(frame.score) and 0.0 <= frame.score <= 1.0):
                raise ValueError(f"score {frame.score} of step {frame.step} is not a probability in [0, 1]")

    @classmethod
    def from_scores(
        cls,
        finding: str,
        model_version: str,
        scores: Sequence[float | None],
        *,
        target_bins: Sequence[int] | None = None,
        num_bins: int | None = None,
        notes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> SeriesInfo:
        """Steps 0..K-1 with target bins (default ``0..K-1``), their centres (:func:`~monai_exaggeration.binning.centre_values`),
        the scores and optional per-frame ``notes`` (ImageComments)."""
        bins = list(range(len(scores))) if target_bins is None else [int(b) for b in target_bins]
        if len(bins) != len(scores):
            raise ValueError(f"{len(scores)} scores but {len(bins)} target bins")
        notes = [""] * len(scores) if notes is None else [str(note) for note in notes]
        n = int(num_bins) if num_bins is not None else len(scores)
        frames = [
            FrameInfo(step, b, float(centre), None if s is None else float(s), note)
            for step, (b, centre, s, note) in enumerate(zip(bins, centre_values(n, bins), scores, notes))
        ]
        return cls(finding, model_version, frames, num_bins=n, **kwargs)


def series_file_name(step: int) -> str:
    """File name of one instance inside ``output_dir/<SeriesInstanceUID>/``."""
    return f"step_{int(step):03d}.dcm"


def _series_description(finding: str, method: str = "Exaggeration") -> str:
    finding = " ".join(finding.replace("\\", "/").split())
    method = " ".join(method.replace("\\", "/").split())[:20]
    template = method + " {} - " + RESEARCH_NOTE
    room = 64 - len(template.format(""))
    if len(finding) > room:
        finding = finding[: room - 1].rstrip() + "~"
    return template.format(finding)


def _format_score(score: float | None) -> str:
    return "not computed" if score is None else f"{score:.4f}"


# ------------------------------------------------------------------------------------------ pixels


def quantise_frame(frame: np.ndarray, bits: int) -> np.ndarray:
    """``round(clip(frame, 0, 1) * (2**bits - 1))`` as uint8 (``bits=8``) or uint16 (``bits=16``).

    A frame that is already quantised (uint8 for 8 bits, uint16 for 16) is returned as it is.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    dtype = np.uint8 if bits == 8 else np.uint16
    if np.asarray(frame).dtype.kind == "u":
        if np.asarray(frame).dtype != dtype:
            raise ValueError(
                f"an integer frame written with {bits} bits must be {np.dtype(dtype).name}, got {frame.dtype}"
            )
        return np.asarray(frame)
    values = np.clip(np.asarray(frame, dtype=np.float64), 0.0, 1.0) * (2**bits - 1)
    return np.rint(values).astype(dtype)


def _check_frames(
    frames: Sequence[np.ndarray], info: SeriesInfo, source_shape: Sequence[int] | None
) -> list[np.ndarray]:
    arrays = [np.asarray(frame) for frame in frames]
    if len(arrays) != len(info.frames):
        raise ValueError(f"{len(arrays)} frames but SeriesInfo describes {len(info.frames)}")
    if not arrays:
        raise ValueError("no frames to write")
    first_shape = arrays[0].shape
    for index, array in enumerate(arrays):
        where = f"frame {index} (step {info.frames[index].step})"
        if array.ndim != 2:
            raise ValueError(
                f"{where} has shape {array.shape}: frames must be 2-D (rows, columns); "
                "squeeze the channel axis (and transpose MONAI (W, H) arrays back)"
            )
        if array.shape != first_shape:
            raise ValueError(f"{where} has shape {array.shape}, frame 0 has {first_shape}: all frames must match")
        if min(array.shape) < 1 or max(array.shape) > 65535:
            raise ValueError(f"{where} has shape {array.shape}: rows and columns must be 1..65535")
        if array.dtype.kind == "u":  # already quantised grey levels (checked against bits when written)
            continue
        if array.dtype.kind != "f":
            raise ValueError(
                f"{where} has dtype {array.dtype}: frames must be floating point display values in [0, 1] "
                "(or grey levels already quantised as uint8/uint16)"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{where} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
            raise ValueError(f"{where} has values in [{low:.3g}, {high:.3g}]: map the generator output to [0, 1] first")
    if source_shape is not None:
        rows, cols = (int(v) for v in source_shape)
        if rows != cols and first_shape == (cols, rows):
            raise ValueError(
                f"frames have shape {first_shape}, the source is {rows} x {cols} (rows x columns): "
                "the frames look transposed (MONAI (W, H) order); transpose them back to (rows, columns)"
            )
    return arrays


# ------------------------------------------------------------------------------------------ source


def _source_tags(source: str | os.PathLike | Dataset | None, source_meta: dict) -> dict[str, str]:
    """The source's DICOM attributes as strings ('' when absent)."""
    from monai_exaggeration.transforms.readers import DICOM_KEYWORDS

    meta = source_meta or {}
    raw = meta.get("dicom")
    if raw is None and any(key in meta for key in DICOM_KEYWORDS):
        raw = meta  # a flat dict of DICOM attributes
    tags = {keyword: "" for keyword in DICOM_KEYWORDS}
    tags.update({key: "" if value is None else str(value) for key, value in (raw or {}).items()})
    dataset = source if isinstance(source, Dataset) else None
    if dataset is None and not tags.get("SOPInstanceUID") and source is not None and _looks_like_dicom(Path(source)):
        dataset = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    if dataset is not None:
        for keyword in DICOM_KEYWORDS:
            if tags.get(keyword) or keyword == "TransferSyntaxUID":
                continue
            value = dataset.get(keyword, "")
            if isinstance(value, pydicom.multival.MultiValue):
                value = "\\".join(str(item) for item in value)
            tags[keyword] = "" if value is None else str(value)
    return tags


def _looks_like_dicom(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _file_key(source: str | os.PathLike | Dataset | None, source_meta: dict) -> str:
    """Identity of a non-DICOM source: SHA-256 of the file content (or of the resolved path if unreadable)."""
    candidate = None if isinstance(source, Dataset) else source
    if candidate is None:
        candidate = (source_meta or {}).get("filename_or_obj")
    if candidate is None or str(candidate) == "":
        raise ValueError(
            "the source is not DICOM (no SOPInstanceUID) and no file is given: pass the source path "
            "(or meta['filename_or_obj']) so that patient, study and UIDs can be derived deterministically"
        )
    path = Path(candidate)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()
    return "sha256:" + hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()


@dataclass
class _Context:
    """Everything shared by the instances of one series (private: built by :func:`write_series`)."""

    info: SeriesInfo
    source_key: str
    tags: dict[str, str]
    patient_study: dict[str, str]  # the source's values verbatim (or the marked non-DICOM identity)
    is_dicom: bool
    modality: str
    orientation: list[str] | str
    series_uid: UID
    pixel_spacing: tuple[float, float] | None
    now: datetime.datetime
    charset: str | None
    extras: dict[str, str] = field(default_factory=dict)  # StudyDescription, BodyPartExamined
    pixel_key: tuple[str, ...] = ()
    burned_in: str | None = None
    laterality: str | None = None  # "R" or "L" when the source says so
    derivation: tuple[Code, ...] = DERIVATION_AT_MODEL_GRID  # CID 7203 codes of the frames


def _pixel_spacing(tags: dict[str, str], source_meta: dict, frame_shape: tuple[int, int]) -> tuple[float, float] | None:
    """The source's PixelSpacing scaled to the frame size (None when unknown)."""
    text = tags.get("PixelSpacing", "")
    shape = (source_meta or {}).get("source_shape")
    try:
        row_spacing, col_spacing = (float(v) for v in text.split("\\"))
    except ValueError:
        return None
    if not (row_spacing > 0 and col_spacing > 0) or not shape or len(shape) != 2:
        return None
    return (row_spacing * shape[0] / frame_shape[0], col_spacing * shape[1] / frame_shape[1])


def _source_key(source, source_meta: dict, tags: dict[str, str]) -> str:
    """The source's identity in derived UIDs: its SOP Instance UID, or ``sha256:<hex>`` of a non-DICOM file."""
    return tags["SOPInstanceUID"] if tags.get("SOPInstanceUID") else _file_key(source, source_meta)


def _pixel_key(source_meta: dict) -> tuple[str, ...]:
    return (str(source_meta["pixel_sha256"]),) if (source_meta or {}).get("pixel_sha256") else ()


def series_instance_uid(source, source_meta: dict, model_version: str) -> UID:
    """The SeriesInstanceUID :func:`write_series` gives the series of this source and model version."""
    tags = _source_tags(source, source_meta)
    return derived_uid(_source_key(source, source_meta, tags), model_version, "series", *_pixel_key(source_meta))


def _context(source, source_meta: dict, info: SeriesInfo, frame_shape: tuple[int, int]) -> _Context:
    tags = _source_tags(source, source_meta)
    is_dicom = bool(tags.get("SOPInstanceUID"))
    extras: dict[str, str] = {}
    source_key = _source_key(source, source_meta, tags)
    if is_dicom:
        patient_study = {keyword: tags.get(keyword, "") for keyword in _PATIENT_STUDY_KEYWORDS}
        if not patient_study["StudyInstanceUID"]:  # broken source: keep the series together at least
            patient_study["StudyInstanceUID"] = derived_uid(source_key, "", "study")
        if tags.get("StudyDescription"):
            extras["StudyDescription"] = tags["StudyDescription"]
        modality = SERIES_MODALITY
        orientation_text = tags.get("PatientOrientation", "")
        orientation: list[str] | str = orientation_text.split("\\") if orientation_text else ""
        pixel_spacing = _pixel_spacing(tags, source_meta, frame_shape)
    else:
        digest = source_key.split(":", 1)[1].upper()
        patient_study = {
            "PatientID": f"EXAG-{digest[:16]}",
            "PatientName": NON_DICOM_PATIENT_NAME,
            "PatientBirthDate": "",
            "PatientSex": "",
            "StudyInstanceUID": derived_uid(source_key, "", "study"),
            "StudyID": f"EXAG-{digest[:8]}",
            "StudyDate": "",
            "StudyTime": "",
            "AccessionNumber": "",
            "ReferringPhysicianName": "",
        }
        extras["StudyDescription"] = "Generated from a non-DICOM file (no source patient data)"
        modality, orientation, pixel_spacing = "OT", "", None
    # A chest classifier's counterfactuals show a chest: without the source's value, info.body_part.
    # (It also settles General Series Laterality, type 2C for paired or unknown body parts.)
    extras["BodyPartExamined"] = tags.get("BodyPartExamined") or info.body_part
    laterality = tags.get("Laterality", "").upper()
    declared = tags.get("BurnedInAnnotation", "").strip().upper() if is_dicom else ""
    if declared not in ("YES", "NO"):
        declared = str((source_meta or {}).get("burned_in_annotation") or "").strip().upper()
    pixel_key = _pixel_key(source_meta)
    texts = [*patient_study.values(), *extras.values(), info.finding, info.model_version]
    charset = None if all(text.isascii() for text in texts) else "ISO_IR 192"
    return _Context(
        info=info,
        source_key=source_key,
        tags=tags,
        patient_study=patient_study,
        is_dicom=is_dicom,
        modality=modality,
        orientation=orientation,
        series_uid=derived_uid(source_key, info.model_version, "series", *pixel_key),
        pixel_spacing=pixel_spacing,
        now=datetime.datetime.now().replace(microsecond=0),
        charset=charset,
        extras=extras,
        pixel_key=pixel_key,
        burned_in=declared if declared in ("YES", "NO") else None,
        laterality=laterality if laterality in ("R", "L") else None,
        derivation=DERIVATION_AT_SOURCE_GRID if _on_source_grid(source_meta, frame_shape) else DERIVATION_AT_MODEL_GRID,
    )


def _on_source_grid(source_meta: dict, frame_shape: tuple[int, int]) -> bool:
    """Whether the frames lie on the source's pixel grid (the source plus a change carried to it)."""
    shape = (source_meta or {}).get("source_shape")
    return shape is not None and len(shape) == 2 and tuple(int(v) for v in shape) == tuple(frame_shape)


# ------------------------------------------------------------------------------------------ instances


def _model_name(info: SeriesInfo) -> str:
    """Manufacturer's Model Name of the frames: the explainer, or the baseline method that made them."""
    return (
        "progressive exaggeration explainer" if info.method == "Exaggeration" else f"{info.method} counterfactuals"[:64]
    )


def _equipment(ctx: _Context) -> list[hd.ContributingEquipment]:
    info = ctx.info
    items = []
    manufacturer = ctx.tags.get("Manufacturer", "")
    if ctx.is_dicom and manufacturer:
        items.append(
            hd.ContributingEquipment(
                manufacturer=manufacturer[:64],
                purpose_of_reference=codes.DCM.AcquisitionEquipment,
                contribution_description="Acquisition equipment of the source image",
            )
        )
    items.append(
        equipment_item(
            SYNTHESIZING_EQUIPMENT,  # (109100, DCM): the frames are new images synthesized from the source
            info.software_name,
            _model_name(info),
            [f"{info.software_name} {info.software_version}", info.model_version],
            info.model_version,
            f"Generated counterfactual images for {info.finding} (model {info.model_version}); " + RESEARCH_NOTE,
            ctx.now,
        )
    )
    return items


def _parses(value_class: type, value: str) -> bool:
    try:
        value_class(value)
    except (TypeError, ValueError):
        return False
    return True


def _highdicom_takes(keyword: str, value: str) -> bool:
    """Whether highdicom's constructor takes the verbatim source ``value`` of ``keyword`` and writes it unchanged.

    It does not for a one-component person name such as ``ward`` (valid DICOM, but highdicom warns
    on every instance), a PatientSex other than M/F/O, or a date/time pydicom cannot parse.
    """
    if keyword in ("PatientName", "ReferringPhysicianName"):
        return value == "" or "^" in value
    if keyword == "PatientSex":
        return value in ("", "M", "F", "O")
    if keyword in ("PatientBirthDate", "StudyDate"):
        return _parses(DA, value)
    if keyword == "StudyTime":
        return _parses(TM, value)
    return True


def _patient_study_arguments(patient_study: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(highdicom constructor arguments, attributes to set verbatim afterwards) of the Patient and Study values."""
    arguments, verbatim = {}, {}
    for keyword, value in patient_study.items():
        if keyword == "StudyInstanceUID" or _highdicom_takes(keyword, value):
            arguments[_PATIENT_STUDY_ARGUMENTS[keyword]] = value
        else:
            verbatim[keyword] = value
    return arguments, verbatim


def _patient_orientation(orientation: Sequence[str] | str) -> tuple[str, str] | None:
    """``orientation`` as highdicom's ``patient_orientation`` (two single letters), or None if it cannot take it."""
    values = [] if isinstance(orientation, str) else list(orientation)
    if len(values) == 2 and all(value in _ORIENTATION_LETTERS for value in values):
        return values[0], values[1]
    return None


def _build_instance(ctx: _Context, frame: np.ndarray, frame_info: FrameInfo, bits: int) -> hd.sc.SCImage:
    """One Secondary Capture instance of the series described by ``ctx``.

    Patient, Study, Laterality and PatientOrientation go through highdicom's typed constructor.
    Set afterwards, because :class:`highdicom.sc.SCImage` has no argument for them or fixes another
    value: StudyDescription, BodyPartExamined, Modality (highdicom: OT), ImageType and ConversionType
    (highdicom: ``DERIVED\\SECONDARY\\OTHER``, DI), BurnedInAnnotation, the SC Equipment
    SecondaryCaptureDevice* attributes, the 16-bit VOI window, SourceImageSequence,
    DerivationDescription and ImageComments; and, verbatim, the source values highdicom's checks do
    not take (see :func:`_highdicom_takes`; a PatientOrientation other than two single letters, e.g. the
    empty one of a non-DICOM source).
    """
    info = ctx.info
    pixels = quantise_frame(frame, bits)
    step = int(frame_info.step)
    patient_study, verbatim = _patient_study_arguments(ctx.patient_study)
    orientation = _patient_orientation(ctx.orientation)
    image = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=bits,
        coordinate_system="PATIENT",
        series_instance_uid=ctx.series_uid,
        series_number=int(info.series_number),
        sop_instance_uid=derived_uid(ctx.source_key, info.model_version, step, *ctx.pixel_key),
        instance_number=step + 1,
        manufacturer=info.software_name,
        **patient_study,
        laterality=ctx.laterality,
        # PATIENT coordinates require an orientation: for a value highdicom cannot take, a placeholder
        # that is replaced by the source's value below.
        patient_orientation=orientation or ("L", "F"),
        pixel_spacing=ctx.pixel_spacing,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=_equipment(ctx),
        series_description=_series_description(info.finding, info.method),
        manufacturer_model_name=_model_name(info),
        software_versions=[f"{info.software_name} {info.software_version}"[:64], info.model_version],
        content_date=ctx.now.date(),
        content_time=ctx.now.time(),
        series_date=ctx.now.date(),
        series_time=ctx.now.time(),
        specific_character_set=ctx.charset,
    )
    for keyword, value in verbatim.items():
        setattr(image, keyword, value)
    if orientation is None:
        image.PatientOrientation = ctx.orientation
    for keyword, value in ctx.extras.items():
        setattr(image, keyword, value)
    image.Modality = ctx.modality
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.ConversionType = "SYN"
    if ctx.burned_in is not None:
        image.BurnedInAnnotation = ctx.burned_in
    elif "BurnedInAnnotation" in image:
        del image.BurnedInAnnotation
    image.SecondaryCaptureDeviceManufacturer = info.software_name
    image.SecondaryCaptureDeviceManufacturerModelName = "progressive exaggeration explainer"
    image.SecondaryCaptureDeviceSoftwareVersions = image.SoftwareVersions
    if bits == 16:
        image.WindowCenter = "32767.5"
        image.WindowWidth = "65536"
        image.WindowCenterWidthExplanation = "FULL RANGE"
    _describe_frame(image, ctx, frame_info, step)
    return image


def _describe_frame(image: Dataset, ctx: _Context, frame_info: FrameInfo, step: int) -> None:
    """SourceImageSequence (a DICOM source), DerivationDescription and ImageComments of one frame."""
    info = ctx.info
    centre = f"{frame_info.target_centre:.4f}"
    n_text = f" of {info.num_bins}" if info.num_bins else ""
    if ctx.is_dicom:
        reference = Dataset()
        reference.ReferencedSOPClassUID = ctx.tags.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.7"
        reference.ReferencedSOPInstanceUID = ctx.tags["SOPInstanceUID"]
        reference.PurposeOfReferenceCodeSequence = [code_item(SOURCE_IMAGE_PURPOSE)]  # (121322, DCM)
        image.SourceImageSequence = [reference]
        source_text = "source image in SourceImageSequence"
    else:
        source_text = f"source: non-DICOM file {ctx.source_key[:23]}"
    image.DerivationCodeSequence = [code_item(code) for code in ctx.derivation]  # CID 7203
    image.DerivationDescription = (
        f"Progressive exaggeration counterfactual for {info.finding}, target bin {frame_info.target_bin}"
        f"{n_text} (centre {centre}), model {info.model_version}; {source_text}; synthetic image, " + RESEARCH_NOTE
    )[:1024]
    image.ImageComments = (
        f"Step {step} of {len(info.frames)}; target bin {frame_info.target_bin}{n_text}; target centre {centre}; "
        f"achieved {info.finding} score {_format_score(frame_info.score)}; "
        + (f"{frame_info.note}; " if frame_info.note else "")
        + f"model {info.model_version}; synthetic counterfactual, {RESEARCH_NOTE}"
    )


# ------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class WrittenSeries:
    """What :func:`write_series` wrote: the files in step order and the UIDs they hold.

    Iterating, ``len`` and indexing go over ``paths``, so it can stand where a list of the files did.
    """

    paths: tuple[Path, ...]
    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uids: tuple[str, ...]  # one per path, same order

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index]


def write_series(
    frames: Sequence[np.ndarray],
    source: str | os.PathLike | Dataset | None,
    source_meta: dict,
    info: SeriesInfo,
    output_dir: str | os.PathLike,
    bits: int = 8,
) -> WrittenSeries:
    """Write ``frames`` as one new Secondary Capture series; return its files (in step order) and UIDs.

    ``source`` is the source file (or its pydicom Dataset, or None when ``source_meta`` carries
    everything), ``source_meta`` the ``meta`` of :func:`monai_exaggeration.transforms.read_cxr`
    (``meta["dicom"]`` holds the source attributes; a flat dict of DICOM keywords works too).
    Files go to ``output_dir/<SeriesInstanceUID>/step_<step:03d>.dcm``. Raises ``ValueError`` for
    unusable frames or descriptions before anything is written; on any error no file created by this
    call is left behind. The returned :class:`WrittenSeries` carries the UIDs written, so callers need
    not read the files back.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if not isinstance(info, SeriesInfo):
        raise TypeError(f"info must be a SeriesInfo, got {type(info).__name__}")
    source_meta = source_meta or {}
    source_shape = source_meta.get("source_shape")
    arrays = _check_frames(frames, info, source_shape)
    ctx = _context(source, source_meta, info, arrays[0].shape)
    if ctx.burned_in is None:  # a warning the first time in a process, then at DEBUG level (archives)
        global _BURNED_IN_WARNED
        logger.log(
            logging.DEBUG if _BURNED_IN_WARNED else logging.WARNING,
            "%s: the source does not say whether its pixels carry text (BurnedInAnnotation), so the written "
            "frames leave it out%s; for non-DICOM inputs known to carry no text, set burned_in_annotation_free",
            source_meta.get("filename_or_obj") or source or "the source",
            "" if _BURNED_IN_WARNED else " (said once; later sources like it are logged at DEBUG level)",
        )
        _BURNED_IN_WARNED = True
    series_dir = Path(output_dir) / str(ctx.series_uid)
    dir_existed = series_dir.exists()
    created: list[Path] = []
    paths: list[Path] = []
    sop_uids: list[str] = []
    try:
        for array, frame_info in zip(arrays, info.frames):
            try:
                image = _build_instance(ctx, array, frame_info, bits)
            except (TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"cannot build the DICOM instance of step {frame_info.step}: {error}") from error
            path = series_dir / series_file_name(frame_info.step)
            existed = path.exists()
            atomic_write(path, lambda tmp, image=image: image.save_as(tmp, enforce_file_format=True))
            if not existed:
                created.append(path)
            paths.append(path)
            sop_uids.append(str(image.SOPInstanceUID))
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        if not dir_existed and series_dir.is_dir():
            try:
                series_dir.rmdir()
            except OSError:
                pass  # someone else put files there
        raise
    return WrittenSeries(
        paths=tuple(paths),
        series_instance_uid=str(ctx.series_uid),
        study_instance_uid=str(ctx.patient_study["StudyInstanceUID"]),
        sop_instance_uids=tuple(sop_uids),
    )
