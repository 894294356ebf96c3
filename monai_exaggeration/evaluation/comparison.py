"""Several counterfactual methods evaluated on the same images with the same judges, in one report.

:func:`compare_methods` runs :class:`~monai_exaggeration.evaluation.workflow.ExplanationEvaluation`
once per method (each into ``<output_dir>/<method>/`` with its own full report), then writes, in
``output_dir``:

* ``methods.csv`` and ``comparison.json``: one row per method with every measure of the suite
  (validity, flip, monotone, identity, SSIM outside the heart, ΔCTR and CTR Spearman, FID/KID,
  change mass inside the heart, seconds per series), plus rows for GradCAM and occlusion, the
  saliency maps, with the one measure that applies to them (mass inside the heart);
* ``plots/series_<n>.png``: the same validation images' series from every method, side by side;
* ``report.html``: the table, the figures and links to each method's own report (self-contained).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from monai_exaggeration.evaluation.plots import series_side_by_side
from monai_exaggeration.evaluation.report import _STYLE, _image, _number
from monai_exaggeration.methods import DEFAULT_METHOD, method_title
from monai_exaggeration.utils import atomic_write, json_text, write_csv_atomic

__all__ = ["COMPARISON_COLUMNS", "compare_methods", "comparison_table", "write_comparison_report"]

#: Columns of ``methods.csv``: (column, where in metrics.json, what it means).
COMPARISON_COLUMNS = (
    ("seconds_per_series", ("seconds_per_series",), "seconds to make one series (classifier, method, frames)"),
    ("validity_mae", ("validity", "written_frames", "mae"), "mean |f(frame) - bin centre| (lower is better)"),
    ("flip_rate", ("validity", "written_frames", "flip_rate"), "share of series reaching the other class"),
    ("monotone_rate", ("validity", "written_frames", "monotone_rate"), "share of series whose scores never fall"),
    ("median_spearman", ("validity", "written_frames", "median_spearman"), "median Spearman(step, score)"),
    (
        "identity_encoder",
        ("preservation", "identity", "encoder", "counterfactual"),
        "counterfactuals whose nearest source (encoder features) is their own",
    ),
    (
        "ssim_outside_heart",
        ("preservation", "ssim_outside_heart"),
        "SSIM of counterfactual and source outside the heart",
    ),
    ("change_mass_inside_heart", ("preservation", "change_mass_inside_heart"), "share of the change inside the heart"),
    ("mean_delta_ctr", ("clinical_faithfulness", "mean_delta_ctr"), "CTR of the last frame minus the first"),
    ("median_delta_ctr", ("clinical_faithfulness", "median_delta_ctr"), "median CTR of the last frame minus the first"),
    ("share_ctr_increases", ("clinical_faithfulness", "share_ctr_increases"), "share of series whose CTR rises"),
    ("ctr_spearman", ("clinical_faithfulness", "median_spearman_ctr_step"), "median Spearman(step, CTR)"),
    (
        "geometric_share",
        ("anatomy", "median_geometric_share"),
        "median share of the first-to-last change that a smooth deformation explains (1: moved, 0: painted)",
    ),
    ("border_shift_px", ("anatomy", "median_border_shift_px"), "median outward shift of the heart outline, pixels"),
    ("folding_fraction", ("anatomy", "mean_folding_fraction"), "share of pixels where the displacement folds"),
    ("fid_encoder", ("realism", "encoder", "fid_real_vs_counterfactual"), "FID real vs counterfactuals (encoder)"),
    ("fid_encoder_real_vs_real", ("realism", "encoder", "fid_real_vs_real"), "the same for real vs real (baseline)"),
    ("kid_encoder", ("realism", "encoder", "kid_real_vs_counterfactual"), "KID real vs counterfactuals (encoder)"),
    ("fid_classifier", ("realism", "classifier", "fid_real_vs_counterfactual"), "FID in the classifier's features"),
    (
        "shortcut_hit_rate",
        ("faithfulness", "shortcut", "hit_rate"),
        "shortcut test: the marker box holds the largest change",
    ),
    (
        "shortcut_box_ratio",
        ("faithfulness", "shortcut", "median_box_ratio"),
        "shortcut test: box share of the change / area",
    ),
    ("flip_follow_rate", ("faithfulness", "label_flip", "follow_rate"), "label flip: the classifier follows"),
    ("flip_mirror_rate", ("faithfulness", "label_flip", "mirror_rate"), "label flip: up and down changes mirror"),
    (
        "randomised_ssim",
        ("faithfulness", "randomisation", "full_ssim"),
        "SSIM of the change map under a fully randomised classifier to the real one's (lower: more faithful)",
    ),
    (
        "randomised_spearman",
        ("faithfulness", "randomisation", "full_spearman"),
        "rank correlation of the same maps",
    ),
    (
        "difference_mass_inside_heart",
        ("saliency", "difference_map_mass_inside_heart"),
        "mass of |counterfactual - source| inside the heart (model grid)",
    ),
)


def _get(metrics: Mapping, path: Sequence[str]) -> float:
    value = metrics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return float("nan")
        value = value[key]
    return float("nan") if value is None else float(value)


def comparison_table(metrics_by_method: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per method (every :data:`COMPARISON_COLUMNS` measure), then GradCAM and occlusion rows
    with the one measure that applies to a saliency map: its mass inside the heart."""
    rows = []
    for method, metrics in metrics_by_method.items():
        row = {"method": method, "n_images": int(metrics.get("n_images", 0))}
        row.update({column: _get(metrics, path) for column, path, _ in COMPARISON_COLUMNS})
        rows.append(row)
    any_metrics = next(iter(metrics_by_method.values()), {})
    for name, key in (("gradcam", "gradcam_mass_inside_heart"), ("occlusion", "occlusion_mass_inside_heart")):
        value = _get(any_metrics, ("saliency", key))
        if not np.isnan(value):
            rows.append(
                {"method": name, "n_images": int(any_metrics.get("n_images", 0)), "difference_mass_inside_heart": value}
            )
    table = pd.DataFrame(rows)
    reference = table.loc[table["method"] == DEFAULT_METHOD, "seconds_per_series"]
    if len(reference) and reference.iloc[0] > 0:
        table.insert(3, "seconds_vs_exaggeration", table["seconds_per_series"] / reference.iloc[0])
    return table


def write_comparison_report(
    table: pd.DataFrame, figures: Sequence[Path], context: Mapping[str, str], links: Mapping[str, str], path: Path
) -> Path:
    """The comparison's HTML report (atomically): context, the table with what each measure means,
    the side-by-side figures and links to every method's own report."""
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items())
    columns = [c for c in table.columns if c != "method"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *columns])
    body = ""
    for _, row in table.iterrows():
        name = html.escape(method_title(str(row["method"])))
        cells = "".join(
            f"<td class='num'>{_number(None if pd.isna(row[c]) else (int(row[c]) if c == 'n_images' else float(row[c])))}</td>"
            for c in columns
        )
        body += f"<tr><td>{name}</td>{cells}</tr>"
    meanings = "".join(
        f"<tr><td>{html.escape(c)}</td><td class='note'>{html.escape(m)}</td></tr>" for c, _, m in COMPARISON_COLUMNS
    )
    link_list = "".join(
        f"<li><a href='{html.escape(target)}'>{html.escape(method_title(m))}</a></li>" for m, target in links.items()
    )
    sections = [
        f"<h1>Counterfactual methods compared</h1><table>{facts}</table>",
        "<p class='warn'>Research use only: these figures describe explanation methods, not a diagnostic device.</p>",
        "<p>Every method explained the same images; the same classifier, segmentation and encoder judged them. "
        "Frames at source resolution are the source plus each method's change, so the comparison is about the change. "
        "GradCAM and occlusion are saliency maps, not counterfactuals: only the mass inside the heart applies to them.</p>",
        f"<h2>Table</h2><div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>",
        f"<details><summary>What each column means</summary><table>{meanings}</table></details>",
        "<h2>The same images, every method</h2>",
        *[_image(figure, f"series of every method, image {n + 1}") for n, figure in enumerate(figures)],
        f"<h2>Each method's full report</h2><ul>{link_list}</ul>",
    ]
    document = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Counterfactual methods compared</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_text(document, encoding="utf-8"))


def compare_methods(
    make_evaluation: Callable[[str], object],
    methods: Sequence[str],
    records: Sequence[dict],
    output_dir: str | os.PathLike,
    context: Mapping[str, str] | None = None,
    num_figures: int = 6,
) -> tuple[pd.DataFrame, dict]:
    """Evaluate every method of ``methods`` (``make_evaluation(method)`` builds its evaluation) on
    ``records`` and write the comparison into ``output_dir``; return the table and the results."""
    if len(set(methods)) != len(methods) or not methods:
        raise ValueError(f"methods must name each method once, got {list(methods)}")
    output_dir = Path(output_dir)
    results = {}
    for method in methods:
        evaluation = make_evaluation(method)
        results[method] = evaluation.evaluate(records, output_dir / method, dict(context or {}, method=method))
    table = comparison_table({method: result.metrics for method, result in results.items()})
    write_csv_atomic(table, output_dir / "methods.csv")
    atomic_write(
        output_dir / "comparison.json",
        lambda tmp: Path(tmp).write_text(
            json_text({"methods": table.to_dict(orient="records"), "context": dict(context or {})})
        ),
    )
    examples = {method: result.examples[:num_figures] for method, result in results.items()}
    count = min(len(found) for found in examples.values())
    figures = [
        series_side_by_side(
            {method: found[n] for method, found in examples.items()},
            output_dir / "plots" / f"series_{n + 1}.png",
            {method: method_title(method) for method in examples},
        )
        for n in range(count)
    ]
    links = {method: f"{method}/report.html" for method in methods}
    write_comparison_report(table, figures, dict(context or {}), links, output_dir / "report.html")
    return table, results
