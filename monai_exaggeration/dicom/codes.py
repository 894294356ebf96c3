"""The coded concepts the written DICOM objects use: standard codes where one exists, a local scheme otherwise.

Every standard code is taken from pydicom's code dictionaries (``pydicom.sr.codedict.codes``), so a
typo cannot slip in; the table in docs/dicom_node.md ("Codes") lists them with where each was checked.
Concepts without a standard code use the local coding scheme ``99EXAG`` (PS3.3 8.2: a designator
beginning with ``99`` is a private scheme), declared in the SR's CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "CTR",
    "DERIVATION_AT_MODEL_GRID",
    "DERIVATION_AT_SOURCE_GRID",
    "LOCAL_SCHEME",
    "PROBABILITY",
    "PROCESSING_EQUIPMENT",
    "RATIO",
    "SOURCE_IMAGE_PURPOSE",
    "SYNTHESIZING_EQUIPMENT",
    "TARGET_CENTRE",
    "THORAX",
    "WIDTH",
    "PIXELS",
    "code_item",
    "finding_sites",
]

LOCAL_SCHEME = "99EXAG"

# ------------------------------------------------------------------------------------------ SR content
#: The classifier's score of a frame: (122157, DCM, "Probability").
PROBABILITY = codes.DCM.Probability
#: No standard code: the target bin centre the generator was conditioned on.
TARGET_CENTRE = Code("TARGET", LOCAL_SCHEME, "Target bin centre")
#: No standard code for the radiographic cardiothoracic ratio.
CTR = Code("CTR", LOCAL_SCHEME, "Cardiothoracic ratio")
#: Unit of the CTR: a dimensionless ratio (UCUM annotation ``{ratio}``, equal to 1).
RATIO = Code("{ratio}", "UCUM", "ratio")

#: A measured width (103355008, SCT, "Width"): the cardiac and the thoracic width of the CTR, each a polyline.
WIDTH = codes.SCT.Width
#: Finding site of the thoracic width (816094009, SCT, "Thorax"); the cardiac width's is the heart.
THORAX = codes.SCT.Thorax
#: Unit of a width on an image without pixel spacing (the SC frames): pixels (UCUM annotation ``{pixels}``).
PIXELS = Code("{pixels}", "UCUM", "pixels")

#: Finding sites of the segmented structures a finding profile names (``FindingProfile.region``).
_REGION_SITES: dict[str, tuple[Code, Code | None]] = {
    "heart": (codes.SCT.Heart, None),  # (80891009, SCT, "Heart")
    "left_lung": (codes.SCT.Lung, codes.SCT.Left),  # (39607008, SCT, "Lung"), laterality (7771000, SCT, "Left")
    "right_lung": (codes.SCT.Lung, codes.SCT.Right),  # laterality (24028007, SCT, "Right")
}


def finding_sites(region: str | None) -> list[tuple[Code, Code | None]]:
    """(anatomic location, laterality or None) of a profile's region; empty for none or an unknown one."""
    site = _REGION_SITES.get((region or "").strip().lower())
    return [site] if site else []


# ------------------------------------------------------------------------------------------ IHE AIR headers
#: CID 7005 purpose of the Contributing Equipment item of the SC frames: they are new images synthesized
#: from the source (109103 Modifying Equipment is for equipment that changed an existing instance).
SYNTHESIZING_EQUIPMENT = codes.DCM.SynthesizingEquipment  # (109100, DCM)
#: CID 7005 purpose for the objects made from the written frames (GSPS, SR, burned-in captioned copies).
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # (109102, DCM)
#: Purpose of Reference of a Source Image Sequence item: (121322, DCM, "Source image for image processing operation").
SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
#: CID 7203 Image Derivation of frames on the source's pixel grid: the source plus the counterfactual
#: change carried to its grid (or the source warped by the carried displacement, plus the intensity term).
DERIVATION_AT_SOURCE_GRID = (codes.DCM.PixelByPixelAddition, codes.DCM.SpatialResampling)  # 113042, 113085
#: CID 7203 of frames at the generator's resolution: the source resampled to the model grid, then generated.
DERIVATION_AT_MODEL_GRID = (codes.DCM.SpatialResampling,)  # 113085


def code_item(code: Code) -> Dataset:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning) of ``code``."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    if code.scheme_version:
        item.CodingSchemeVersion = code.scheme_version
    item.CodeMeaning = code.meaning
    return item
