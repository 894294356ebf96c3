"""Findings by profile: what the code needs to know about the finding a classifier scores.

A :class:`FindingProfile` holds the finding's name (as the configs, the explainer file and the
classifier's output say it), its display name, its SNOMED CT code (None: a local code is used), the
label column of a dataset's ``labels.csv``, the segmented structure where its evidence lives (the
region of the localisation measures and of the change penalty; None: no region), its clinical
measure (``ctr`` for cardiomegaly; None: none), and how the reader study names the change a reader
should look for. The inference and the evaluation read the finding from the explainer file's
record and look its profile up here; a finding without a registered profile gets a generic one
(no code, no region, no measure), so everything still runs for it.

The cardiomegaly profile is the only place in the package's code that names cardiomegaly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CARDIOMEGALY", "DEFAULT_FINDING", "FINDINGS", "FindingProfile", "finding_profile", "register_finding"]


@dataclass(frozen=True)
class FindingProfile:
    """What is known about one finding (module docstring)."""

    name: str
    display: str
    code: tuple[str, str, str] | None = None  # (value, coding scheme, meaning)
    label_column: str | None = None
    region: str | None = None  # a structure of the heart/lung segmentation: "heart", "left_lung", "right_lung"
    measure: str | None = None  # "ctr", or None
    reader_change: str = "the finding"

    @property
    def label(self) -> str:
        """The column of ``labels.csv`` that holds this finding (default: its name)."""
        return self.label_column or self.name


#: Registered profiles by name (lower case).
FINDINGS: dict[str, FindingProfile] = {}


def register_finding(profile: FindingProfile) -> FindingProfile:
    """Make ``profile`` the profile of its name (replacing an earlier one)."""
    FINDINGS[profile.name.strip().lower()] = profile
    return profile


def finding_profile(name: str | None) -> FindingProfile:
    """The registered profile of ``name``, or a generic one (no code, no region, no measure)."""
    key = (name or DEFAULT_FINDING).strip()
    return FINDINGS.get(key.lower()) or FindingProfile(
        name=key, display=key.replace("_", " ").capitalize(), reader_change=key.replace("_", " ")
    )


CARDIOMEGALY = register_finding(
    FindingProfile(
        name="cardiomegaly",
        display="Cardiomegaly",
        code=("287272002", "SCT", "Cardiomegaly"),
        label_column="cardiomegaly",
        region="heart",
        measure="ctr",
        reader_change="heart size",
    )
)

#: The finding of the shipped bundles, where nothing else says which.
DEFAULT_FINDING = CARDIOMEGALY.name
