"""matplotlib for every figure of the package, on the non-interactive Agg backend (no display needed).

This is the one place that selects the backend: modules that draw take ``plt`` and
:func:`save_figure` from here and never call ``matplotlib.use`` themselves. Importing this module
switches matplotlib to Agg, so modules that only sometimes draw (handlers, quick-looks) import it
inside the function that draws: importing them leaves an interactive session's backend alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from monai_exaggeration.utils import atomic_write  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Lay ``figure`` out, save it as PNG at ``path`` atomically, close it; return ``path``."""
    figure.tight_layout()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)
