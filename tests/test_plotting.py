"""One plotting module: the Agg backend is chosen in monai_exaggeration.plotting only, and every figure goes through it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import REPO_ROOT
from PIL import Image


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden temporaries included


def test_only_the_plotting_module_selects_the_backend() -> None:
    uses, imports = [], []
    for path in sorted((REPO_ROOT / "monai_exaggeration").rglob("*.py")):
        name = path.relative_to(REPO_ROOT).as_posix()
        for line in path.read_text().splitlines():
            if "matplotlib.use(" in line:
                uses.append(name)
            if re.match(r"\s*(import matplotlib(\.pyplot)?(\s|$)|from matplotlib import pyplot)", line):
                imports.append(name)  # pyplot (global backend state); the object API (Figure, colormaps) is fine
    assert uses == ["monai_exaggeration/plotting.py"]
    assert set(imports) == {"monai_exaggeration/plotting.py"}
    import matplotlib

    from monai_exaggeration import plotting

    assert matplotlib.get_backend().lower() == "agg" and plotting.plt.get_backend().lower() == "agg"


def test_save_figure_is_one_function_kept_importable_from_quicklook(tmp_path: Path) -> None:
    from monai_exaggeration import plotting
    from monai_exaggeration.evaluation import plots
    from monai_exaggeration.inference import quicklook
    from monai_exaggeration.inference.quicklook import save_figure

    assert save_figure is plotting.save_figure is quicklook.save_figure is plots.save_figure
    figure, axis = plotting.plt.subplots()
    axis.plot([0, 1], [1, 0])
    path = save_figure(figure, tmp_path / "line.png")
    assert path == tmp_path / "line.png" and Image.open(path).format == "PNG"
    assert not plotting.plt.fignum_exists(figure.number)  # closed
    assert _pngs(tmp_path) == ["line.png"]


def test_handler_figures_are_written_atomically(tmp_path: Path) -> None:
    from monai_exaggeration import handlers
    from monai_exaggeration.handlers.ctr_report import _ctr_plot
    from monai_exaggeration.handlers.score_table import _roc_plot

    labels, scores = np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.8, 0.4, 0.6, 0.9])
    metrics = handlers.binary_metrics(labels, scores)
    metrics["n"] = len(labels)
    _roc_plot(labels, scores, metrics, tmp_path / "roc.png", "ROC")
    known = pd.DataFrame({"ctr_truth": [0.45, 0.55, 0.6], "ctr_predicted": [0.47, 0.52, 0.63]})
    _ctr_plot(known, {"ctr_mae": 0.02, "n_with_ctr_truth": 3}, tmp_path / "ctr.png")
    assert _pngs(tmp_path) == ["ctr.png", "roc.png"]
    assert {Image.open(tmp_path / name).format for name in ("ctr.png", "roc.png")} == {"PNG"}
