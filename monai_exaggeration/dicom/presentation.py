"""Captions a viewer shows on a written exaggeration series: a presentation state, or burned-in copies.

Both are built from the files the inference wrote and its ``frames.csv`` rows (one per frame:
``step``, ``target_centre``, ``score``, ``output_file``, ``series_instance_uid``,
``sop_instance_uid``, ``model_version``); the Secondary Capture files themselves are never changed.

* :func:`write_presentation_state`: one Grayscale Softcopy Presentation State (GSPS, highdicom
  :class:`highdicom.pr.GrayscaleSoftcopyPresentationState`) referencing every frame of the series,
  with one graphic annotation per frame: two text objects in DISPLAY units, the frame's caption
  (``Frame 3/10 | target 0.25 | cardiomegaly score 0.31``) at the top and
  ``Research use, not for diagnosis`` at the bottom. A viewer that applies the presentation state
  shows the captions over the unchanged pixels.
* :func:`write_burned_in_series`: a new SC series whose pixels carry the same two lines (white
  with a black outline), BurnedInAnnotation ``YES``, SourceImageSequence pointing at the plain frame,
  the frame's caption in ImageComments and the series' scores in its SeriesDescription
  (:func:`captioned_series_description`). The DICOM node (``outputs.burned_in``) and the inference
  (``burned_in_copy``, :class:`~monai_exaggeration.inference.writers.CaptionedCopyWriter`) both
  write it with this function.

OHIF v3 renders no presentation state (OHIF issue 4106), and its default viewport overlay draws no
ImageComments: it draws the StudyDate and the SeriesDescription of the display set's first instance
(top left) and the InstanceNumber of the shown frame (bottom right; OHIF/Viewers
``extensions/cornerstone/src/customizations/viewportOverlayCustomization.tsx``), and its series list
shows the SeriesDescription. Hence the captions in the pixels, and the per-frame scores in the
SeriesDescription, in InstanceNumber order.

Patient and Study come from the frames through highdicom's typed constructors; the few source values
those do not take (a one-component name, an unparsable date) are copied verbatim afterwards.

UIDs are deterministic (:func:`~monai_exaggeration.dicom.secondary_capture.derived_uid` of the SC
series UID, the model version and ``"gsps"`` / ``"burned-in"`` parts), so rebuilding gives the
same UIDs and a PACS receives no duplicates. Files: ``<dicom_dir>/<series UID>/presentation_state.dcm``
and ``<dicom_dir>/<series UID>/step_XXX.dcm``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from monai_exaggeration import __version__
from monai_exaggeration.dicom.codes import PROCESSING_EQUIPMENT, SOURCE_IMAGE_PURPOSE, code_item
from monai_exaggeration.dicom.secondary_capture import (
    _PATIENT_STUDY_KEYWORDS,
    DEFAULT_SERIES_NUMBER,
    SOFTWARE_NAME,
    _patient_orientation,
    _patient_study_arguments,
    derived_uid,
    equipment_item,
    series_file_name,
)
from monai_exaggeration.utils import atomic_write, remove_files

__all__ = [
    "CAPTION_NOTE",
    "FrameCaption",
    "build_presentation_state",
    "captioned_series_description",
    "read_series",
    "series_rows",
    "write_burned_in_series",
    "write_presentation_state",
]

CAPTION_NOTE = "Research use, not for diagnosis"
MODEL_NAME = "progressive exaggeration explainer"
#: Series numbers relative to the SC series: presentation state, report (report.py), burned-in copies.
GSPS_SERIES_OFFSET, BURNED_IN_SERIES_OFFSET = 1, 3
_TOP_BOX = (0.01, 0.01, 0.99, 0.06)
_BOTTOM_BOX = (0.01, 0.94, 0.99, 0.99)


@dataclass(frozen=True)
class FrameCaption:
    """What one frame's caption says: its place in the series, the target and the classifier's score."""

    frame: int  # 1-based (the InstanceNumber; frames.csv's step + 1)
    num_frames: int
    target_centre: float
    score: float
    finding: str

    @property
    def text(self) -> str:
        return (
            f"Frame {self.frame}/{self.num_frames} | target {self.target_centre:.2f} | "
            f"{self.finding} score {self.score:.2f}"
        )

    @property
    def lines(self) -> tuple[str, str]:
        return self.text, CAPTION_NOTE


def series_rows(frames: pd.DataFrame | str | os.PathLike, series_instance_uid: str | None = None) -> pd.DataFrame:
    """The ``frames.csv`` rows of one series, in step order (the only series when ``series_instance_uid`` is None)."""
    table = frames if isinstance(frames, pd.DataFrame) else pd.read_csv(frames, dtype={"series_instance_uid": str})
    uids = list(dict.fromkeys(table["series_instance_uid"].astype(str)))
    if series_instance_uid is None:
        if len(uids) != 1:
            raise ValueError(f"frames.csv lists {len(uids)} series: name the one to caption")
        series_instance_uid = uids[0]
    rows = table[table["series_instance_uid"].astype(str) == str(series_instance_uid)]
    if rows.empty:
        raise ValueError(f"frames.csv has no rows of series {series_instance_uid}")
    return rows.sort_values("step").reset_index(drop=True)


def read_series(rows: pd.DataFrame, pixels: bool = False) -> list[Dataset]:
    """The written instances of ``rows`` (headers only unless ``pixels``), checked against the log."""
    images = []
    for row in rows.itertuples():
        image = pydicom.dcmread(row.output_file, stop_before_pixels=not pixels)
        if str(image.SOPInstanceUID) != str(row.sop_instance_uid):
            raise ValueError(f"{row.output_file} holds {image.SOPInstanceUID}, frames.csv says {row.sop_instance_uid}")
        images.append(image)
    return images


def _captions(rows: pd.DataFrame, finding: str) -> list[FrameCaption]:
    return [
        FrameCaption(int(row.step) + 1, len(rows), float(row.target_centre), float(row.score), finding)
        for row in rows.itertuples()
    ]


def _model_version(rows: pd.DataFrame) -> str:
    versions = set(rows["model_version"].astype(str))
    if len(versions) != 1:
        raise ValueError(f"the frames of one series name {len(versions)} model versions: {sorted(versions)}")
    return versions.pop()


def _software(model_version: str) -> list[str]:
    return [f"{SOFTWARE_NAME} {__version__}"[:64], model_version]


def processing_equipment(model_version: str, description: str) -> hd.ContributingEquipment:
    """The Contributing Equipment item of an object made from the written frames (IHE AI Results):
    this software as Processing Equipment (109102, DCM; CID 7005), with its Device UID."""
    return equipment_item(
        PROCESSING_EQUIPMENT, SOFTWARE_NAME, MODEL_NAME, _software(model_version), model_version, description
    )


def _typed_references(images: Sequence[Dataset], pixels: bool = True) -> tuple[list[Dataset], list[str]]:
    """``images`` as highdicom's constructors may read them, and the Patient/Study keywords to copy afterwards.

    highdicom copies Patient and Study from the first referenced image through its typed arguments,
    which reject (or warn about) some valid source values: a one-component name such as ``ward``, a
    PatientSex other than M/F/O, a date or time pydicom cannot parse. Such attributes are emptied in
    the returned headers (new elements; ``images`` are not changed, ``pixels=False`` leaves PixelData
    out) and their keywords returned, to be copied verbatim onto the new instance with
    :func:`_copy_verbatim`. Without such values ``images`` come back as they are.
    """
    first = images[0]
    values = {
        keyword: "" if first.get(keyword) is None else str(first.get(keyword)) for keyword in _PATIENT_STUDY_KEYWORDS
    }
    verbatim = [keyword for keyword in _patient_study_arguments(values)[1] if keyword in first]
    if not verbatim:
        return list(images), []
    references = []
    for image in images:
        reference = Dataset()  # the elements are shared, not copied
        for element in image:
            if pixels or element.keyword != "PixelData":
                reference.add(element)
        for keyword in verbatim:
            if keyword in reference:
                reference.add_new(keyword, reference[keyword].VR, "")
        references.append(reference)
    return references, verbatim


def _copy_verbatim(instance: Dataset, image: Dataset, keywords: Sequence[str]) -> None:
    """Copy the ``keywords`` of :func:`_typed_references` from ``image`` onto the new ``instance`` as they are."""
    for keyword in keywords:
        instance[keyword] = image[keyword]


def build_presentation_state(
    images: Sequence[Dataset], captions: Sequence[FrameCaption], model_version: str
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS captioning ``images`` (one SC series, in step order) with ``captions``."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    first = images[0]
    images, verbatim = _typed_references(images)  # values highdicom does not take are copied at the end
    series_uid = str(images[0].SeriesInstanceUID)
    layer = hd.pr.GraphicLayer("CAPTIONS", order=1, description="Frame, target, score; " + CAPTION_NOTE.lower())
    annotations = [
        hd.pr.GraphicAnnotation(
            referenced_images=[image],
            graphic_layer=layer,
            text_objects=[
                hd.pr.TextObject(caption.text, "DISPLAY", bounding_box=_TOP_BOX, text_justification="LEFT"),
                hd.pr.TextObject(CAPTION_NOTE, "DISPLAY", bounding_box=_BOTTOM_BOX, text_justification="LEFT"),
            ],
        )
        for image, caption in zip(images, captions)
    ]
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=list(images),
        series_instance_uid=derived_uid(series_uid, model_version, "gsps-series"),
        series_number=int(images[0].get("SeriesNumber") or DEFAULT_SERIES_NUMBER) + GSPS_SERIES_OFFSET,
        sop_instance_uid=derived_uid(series_uid, model_version, "gsps"),
        instance_number=1,
        manufacturer=SOFTWARE_NAME,
        manufacturer_model_name=MODEL_NAME,
        software_versions=_software(model_version),
        device_serial_number=None,
        content_label="EXAGGERATION",
        content_description=f"Captions: frame, target, score; {CAPTION_NOTE.lower()}"[:64],
        graphic_annotations=annotations,
        graphic_layers=[layer],
        series_description=f"Exaggeration captions - {CAPTION_NOTE.lower()}"[:64],
        contributing_equipment=[
            processing_equipment(model_version, "Captions of the counterfactual frames; " + CAPTION_NOTE.lower())
        ],
    )
    _copy_verbatim(state, first, verbatim)
    # General Series: the body part settles Laterality (type 2C for unknown or paired parts).
    state.BodyPartExamined = images[0].get("BodyPartExamined") or "CHEST"
    return state


def write_presentation_state(rows: pd.DataFrame, dicom_dir: str | os.PathLike, finding: str) -> Path:
    """Write the GSPS of one series (``rows`` from :func:`series_rows`) under ``dicom_dir``; return its path."""
    images = read_series(rows)
    state = build_presentation_state(images, _captions(rows, finding), _model_version(rows))
    path = Path(dicom_dir) / str(state.SeriesInstanceUID) / "presentation_state.dcm"
    return atomic_write(path, lambda tmp: state.save_as(tmp, enforce_file_format=True))


# ------------------------------------------------------------------------------------------ burned in


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def burn_in(pixels: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """A copy of ``pixels`` (uint8/uint16, rows x columns) with ``lines[0]`` at the top and ``lines[1]`` at the bottom.

    White text (the largest grey level) with a black outline, so it reads on any background.
    """
    rows, columns = pixels.shape
    size = max(10, min(rows, columns) // 36)
    font = _font(size)
    masks = {}
    for name, stroke in (("outline", max(1, size // 8)), ("text", 0)):
        canvas = Image.new("L", (columns, rows), 0)
        draw = ImageDraw.Draw(canvas)
        margin = max(2, size // 3)
        draw.text((margin, margin), lines[0], fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        if len(lines) > 1:
            draw.text(
                (margin, rows - margin - size - stroke),
                lines[1],
                fill=255,
                font=font,
                stroke_width=stroke,
                stroke_fill=255,
            )
        masks[name] = np.asarray(canvas) > 127
    out = pixels.copy()
    out[masks["outline"]] = 0
    out[masks["text"]] = np.iinfo(pixels.dtype).max
    return out


def _equipment_items(image: Dataset) -> list[Dataset]:
    """The plain frame's own Contributing Equipment items (the source's acquisition equipment, this
    software as synthesizing equipment), without the items highdicom adds for itself."""
    return [
        item
        for item in image.get("ContributingEquipmentSequence", [])
        if str(item.get("ManufacturerModelName", "")) != "highdicom"
    ]


def captioned_series_description(captions: Sequence[FrameCaption]) -> str:
    """The SeriesDescription of a captioned copy: the finding and every frame's score in percent, in
    InstanceNumber order (``Captioned cardiomegaly, % by frame: 12 21 33 ...``), at most 64 characters
    (DICOM LO); the scores that do not fit end in ``...``.

    OHIF's overlay shows one SeriesDescription for the whole series and the shown frame's InstanceNumber,
    so the frame's score is the InstanceNumber-th value.
    """
    finding = " ".join(str(captions[0].finding).replace("\\", "/").split())[:24] if captions else ""
    text = f"Captioned {finding}, % by frame:"
    values = [("--" if not np.isfinite(c.score) else str(round(100 * c.score))) for c in captions]
    for index, value in enumerate(values):
        rest = " ..." if index < len(values) - 1 else ""
        if len(f"{text} {value}{rest}") > 64:
            return f"{text} ..."[:64]
        text = f"{text} {value}"
    return text


def write_burned_in_series(rows: pd.DataFrame, dicom_dir: str | os.PathLike, finding: str) -> list[Path]:
    """Write a copy of one series with its captions burned into the pixels; return the paths in step order.

    Each copy has a new deterministic SeriesInstanceUID/SOPInstanceUID, BurnedInAnnotation YES, the
    plain frame in SourceImageSequence, its caption in ImageComments and the series' scores in the
    SeriesDescription (:func:`captioned_series_description`). All or nothing: if one copy fails, the
    copies already written are removed before the error propagates.
    """
    paths: list[Path] = []
    try:
        _write_burned_in(rows, Path(dicom_dir), finding, paths)
    except BaseException:
        remove_files(paths)
        raise
    return paths


def _write_burned_in(rows: pd.DataFrame, dicom_dir: Path, finding: str, paths: list[Path]) -> None:
    """The body of :func:`write_burned_in_series`: appends each path to ``paths`` once written."""
    model_version = _model_version(rows)
    images = read_series(rows, pixels=True)
    captions = _captions(rows, finding)
    description = captioned_series_description(captions)
    series_uid = str(images[0].SeriesInstanceUID)
    new_series = derived_uid(series_uid, model_version, "burned-in-series")
    for image, caption, row in zip(images, captions, rows.itertuples()):
        orientation = _patient_orientation(image.get("PatientOrientation", ""))
        laterality = str(image.get("Laterality", ""))
        (reference_image,), verbatim = _typed_references([image], pixels=False)
        # Patient and Study come from the plain frame through highdicom (from_ref_dataset).
        copy = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference_image,
            pixel_array=burn_in(image.pixel_array, caption.lines),
            photometric_interpretation=image.PhotometricInterpretation,
            bits_allocated=int(image.BitsAllocated),
            coordinate_system="PATIENT",
            series_instance_uid=new_series,
            series_number=int(image.get("SeriesNumber") or DEFAULT_SERIES_NUMBER) + BURNED_IN_SERIES_OFFSET,
            sop_instance_uid=derived_uid(series_uid, model_version, "burned-in", int(row.step)),
            instance_number=int(image.InstanceNumber),
            manufacturer=SOFTWARE_NAME,
            pixel_spacing=tuple(float(v) for v in image.PixelSpacing) if "PixelSpacing" in image else None,
            laterality=laterality if laterality in ("R", "L") else None,
            # PATIENT coordinates need an orientation: a placeholder where highdicom cannot take the
            # plain frame's value (not two single letters, e.g. empty), which is then copied below.
            patient_orientation=orientation or ("L", "F"),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            series_description=description,
            manufacturer_model_name=MODEL_NAME,
            software_versions=_software(model_version),
            specific_character_set=image.get("SpecificCharacterSet"),
            contributing_equipment=[
                processing_equipment(model_version, "Caption burned into the counterfactual frame")
            ],
        )
        # The plain frame's equipment (the source's acquisition equipment, this software as synthesizing
        # equipment) first, then this step's and highdicom's; not the "acquisition equipment" highdicom
        # derives from the plain frame (that is this software, already named).
        copy.ContributingEquipmentSequence = [
            *_equipment_items(image),
            *(
                item
                for item in copy.ContributingEquipmentSequence
                if item.PurposeOfReferenceCodeSequence[0].CodeValue != "109101"
            ),
        ]
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = [code_item(SOURCE_IMAGE_PURPOSE)]  # (121322, DCM)
        attributes = {  # what highdicom's SC constructor does not take, or fixes to another value
            "Modality": image.Modality,
            "BodyPartExamined": image.get("BodyPartExamined") or "CHEST",
            "ImageType": ["DERIVED", "SECONDARY"],
            "ConversionType": "SYN",
            "BurnedInAnnotation": "YES",
            "SourceImageSequence": [reference],
            "DerivationDescription": f"{str(image.get('DerivationDescription', ''))[:1000]}; caption burned in",
            "ImageComments": f"{caption.text}; {CAPTION_NOTE.lower()}",
        }
        if orientation is None:
            attributes["PatientOrientation"] = image.get("PatientOrientation", "")
        for keyword, value in attributes.items():
            setattr(copy, keyword, value)
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "DerivationCodeSequence"):
            if keyword in image:
                copy[keyword] = image[keyword]
        if "Laterality" in image and laterality not in ("R", "L"):  # a value highdicom does not take: verbatim
            copy["Laterality"] = image["Laterality"]
        _copy_verbatim(copy, image, verbatim)
        path = dicom_dir / str(new_series) / series_file_name(int(row.step))
        paths.append(atomic_write(path, lambda tmp, copy=copy: copy.save_as(tmp, enforce_file_format=True)))
