"""Turn what a user points at (a file, a folder, a CSV manifest) into dataset records."""

from __future__ import annotations

import os
from pathlib import Path

from monai_exaggeration.data.manifest import read_manifest

__all__ = ["collect_inputs", "default_input", "NON_IMAGE_SUFFIXES"]

#: Files a folder scan skips (reports, manifests, archives); anything else may be a DICOM without suffix.
NON_IMAGE_SUFFIXES = frozenset(
    {".csv", ".txt", ".json", ".xml", ".md", ".pdf", ".zip", ".gz", ".tar", ".html", ".log", ".py", ".yaml", ".yml"}
)


def default_input() -> str:
    """The real CR chest PA ``RG1_UNCR.dcm`` shipped by the ``pydicom-data`` package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise FileNotFoundError("the default input needs the pydicom-data package: pip install pydicom-data")
    return str(path)


def _is_candidate(path: Path) -> bool:
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return False
    suffixes = "".join(path.suffixes).lower()
    return path.suffix.lower() not in NON_IMAGE_SUFFIXES or suffixes.endswith(".nii.gz")


def _dangling(path: Path) -> bool:
    """A symbolic link that leads nowhere (broken, or a loop)."""
    return path.is_symlink() and not path.exists()


def collect_inputs(path: str | os.PathLike) -> list[dict]:
    """Records ``{"image": abs_path, ...labels}`` for a file, a folder (recursive) or a ``.csv`` manifest.

    Folders are searched recursively; every file that is not obviously a non-image (see
    :data:`NON_IMAGE_SUFFIXES`) is a candidate, since DICOM files often have no suffix. Files are
    returned sorted so runs are reproducible. Unreadable files are reported later, by the loader.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path} -- give a DICOM/PNG/JPEG file, a folder or a CSV manifest")
    if path.is_dir():
        # Broken and looping symbolic links stay in the list, so the loader reports them in errors.csv.
        files = sorted(p for p in path.rglob("*") if (p.is_file() or _dangling(p)) and _is_candidate(p))
        if not files:
            raise FileNotFoundError(f"no image files found under {path}")
        return [{"image": str(p if _dangling(p) else p.resolve())} for p in files]
    if path.suffix.lower() == ".csv":
        frame = read_manifest(path)
        return frame.to_dict("records")
    return [{"image": str(path.resolve())}]
