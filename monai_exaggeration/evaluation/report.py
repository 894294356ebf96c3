"""One self-contained HTML report of an evaluation: every figure and plot inline, no external resource."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping
from pathlib import Path

from monai_exaggeration.methods import DEFAULT_METHOD, method_title
from monai_exaggeration.utils import atomic_write

__all__ = ["write_report"]


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #555; font-size: .9em; }
.warn { background: #fff6e0; border-left: 4px solid #e0a000; padding: .5em 1em; }
"""


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _table(rows: list[tuple[str, str, str]]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{value}</td><td class='note'>{html.escape(meaning)}</td></tr>"
        for name, value, meaning in rows
    )
    return f"<table><tr><th>measure</th><th>value</th><th>what it means</th></tr>{body}</table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


def _validity_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    rows = []
    for key, label in (("written_frames", "written frames"), ("generator_frames", "generator frames")):
        v = metrics["validity"][key]
        rows += [
            (f"per-bin MAE ({label})", _number(v["mae"]), "mean |f(x_b) − bin centre|; 0 is perfect"),
            (f"flip rate ({label})", _percent(v["flip_rate"]), "series reaching the class opposite to the source's"),
            (f"median Spearman ({label})", _number(v["median_spearman"], 2), "rank correlation of score with step"),
            (f"monotone series ({label})", _percent(v["monotone_rate"]), "scores never decrease along the series"),
        ]
    return rows


def _realism_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    rows = []
    for space, r in metrics["realism"].items():
        n = f"{r['n_real_a']} vs {r['n_real_b']}"
        rows += [
            (
                f"FID real vs real ({space})",
                _number(r["fid_real_vs_real"]),
                f"baseline: two halves of the real images ({n})",
            ),
            (
                f"FID real vs counterfactual ({space})",
                _number(r["fid_real_vs_counterfactual"]),
                "far-end frames of the other half",
            ),
            (
                f"FID real vs all frames ({space})",
                _number(r["fid_real_vs_all_frames"]),
                f"{r['n_all_frames_b']} frames",
            ),
            (
                f"KID real vs real / counterfactual ({space})",
                f"{_number(r['kid_real_vs_real'], 4)} / {_number(r['kid_real_vs_counterfactual'], 4)}",
                "unbiased MMD², cubic kernel; ±SD over subsets in metrics.json",
            ),
        ]
    return rows


def _preservation_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    p = metrics["preservation"]
    rows = [
        (
            f"identity, counterfactual ({space})",
            _percent(identity["counterfactual"]),
            f"nearest of {identity['n_candidates']} real images is its own source (papers: 86–90 % on CXR)",
        )
        for space, identity in p["identity"].items()
    ]
    rows += [
        ("SSIM outside the heart", _number(p["ssim_outside_heart"]), "counterfactual vs source; 1 = unchanged"),
        ("L1 outside the heart", _number(p["l1_outside_heart"], 4), "mean absolute change, [0, 1] grey scale"),
        (
            "change inside / outside the heart",
            f"{_number(p['change_inside_heart'], 4)} / {_number(p['change_outside_heart'], 4)}",
            f"median ratio {_number(p['median_inside_outside_ratio'], 2)}",
        ),
        (
            "change mass inside the heart",
            _percent(p["change_mass_inside_heart"]),
            f"the heart covers {_percent(p['heart_fraction'])} of the image",
        ),
        ("images with a heart found", _number(p["n_with_heart"]), "region measures use these"),
    ]
    return rows


def _clinical_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    c = metrics["clinical_faithfulness"]
    return [
        (
            "median Spearman(CTR, step)",
            _number(c["median_spearman_ctr_step"], 2),
            "does the heart grow along the series?",
        ),
        ("mean / median ΔCTR (last − first)", f"{_number(c['mean_delta_ctr'])} / {_number(c['median_delta_ctr'])}", ""),
        ("series whose CTR increases", _percent(c["share_ctr_increases"]), ""),
        (
            "CTR crosses 0.5 with the score",
            _percent(c["share_ctr_crosses_with_score"]),
            f"among the {c['n_score_crosses']} series whose score crosses 0.5",
        ),
        (
            "mean CTR of the sources",
            _number(c["mean_ctr_source"]),
            f"{c['n_series']} series with a CTR on every frame, {c['n_missing']} without",
        ),
    ]


def _saliency_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    s = metrics["saliency"]
    share = f"the heart covers {_percent(s['heart_fraction_model_grid'])} of the model grid"
    return [
        (
            "difference map mass in the heart",
            _percent(s["difference_map_mass_inside_heart"]),
            "|counterfactual − source|",
        ),
        ("GradCAM mass in the heart", _percent(s["gradcam_mass_inside_heart"]), share),
        (
            "occlusion mass in the heart",
            _percent(s["occlusion_mass_inside_heart"]),
            "score drop when a patch is hidden",
        ),
    ]


def _faithfulness_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    f = metrics["faithfulness"]
    s, flip, random = f["shortcut"], f["label_flip"], f["randomisation"]
    if s.get("n_series"):
        rows = [
            (
                "shortcut: marker box holds the largest change",
                _percent(s["hit_rate"]),
                f"{s['n_series']} series of images without the marker; target ≥ 80 %",
            ),
            (
                "shortcut: box share of the change / box area share",
                _number(s["median_box_ratio"], 1),
                f"median; the box is {_percent(s['area_share'])} of the image; target ≥ 5; 1 = no preference",
            ),
        ]
    else:
        rows = [("shortcut test", "not run", s.get("note", ""))]
    rows += [
        (
            "label flip: the classifier follows",
            _percent(flip["follow_rate"]),
            f"{flip['n_series']} series, toward absent on positives and present on negatives; target ≥ 95 %",
        ),
        (
            "label flip: changes up and down mirror in place",
            _percent(flip["mirror_rate"]),
            f"Pearson(last − source, first − source) < 0 in {flip['n_mirror']} series with room both ways; "
            f"median {_number(flip['median_mirror_correlation'], 2)}",
        ),
    ]
    for level in random["levels"]:
        rows.append(
            (
                f"randomisation: {_percent(level['share'])} of the layers ({level['layers']})",
                f"SSIM {_number(level['median_ssim'], 2)} / ρ {_number(level['median_spearman'], 2)}",
                "median similarity of |last − first| to the real classifier's; target at 100 %: ≤ 0.2",
            )
        )
    return rows


def write_report(
    metrics: Mapping, context: Mapping[str, str], plots: Mapping[str, Path], path: str | os.PathLike
) -> Path:
    """Write the HTML report (atomically). ``context``: run facts shown at the top; ``plots``: name -> PNG."""
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items())
    by_label = ", ".join(f"label {k}: {v}" for k, v in metrics.get("n_images_by_label", {}).items())
    title = f"{method_title(metrics.get('method') or DEFAULT_METHOD)}: evaluation report"
    sections = [
        f"<h1>{html.escape(title)}</h1><table>{facts}</table>",
        f"<p>{metrics['n_images']} images ({html.escape(by_label)}), {metrics['n_frames']} frames; "
        f"{_number(metrics.get('seconds_per_series'), 2)} s per series (classifier, method and frames), "
        f"{_number(metrics['seconds_per_image'], 2)} s per image with the measures.</p>",
        "<p class='warn'>Research use only: these figures describe an explanation method, not a diagnostic device.</p>",
        "<h2>Validity: does the classifier follow the target bins?</h2>",
        _table(_validity_rows(metrics)),
        _image(plots["compatibility"], "compatibility plot") if "compatibility" in plots else "",
        "<h2>Realism</h2>",
        "<p class='note'>Read each FID/KID next to its real-vs-real baseline computed with the same features and set sizes. "
        "<em>classifier</em>: penultimate features of the black-box classifier; <em>encoder</em>: the in-project CXR encoder "
        "trained self-supervised (SimCLR) on the training split, independently of the classifier and the explainer.</p>",
        _table(_realism_rows(metrics)),
        "<h2>Preservation: the same patient</h2>",
        _table(_preservation_rows(metrics)),
        _image(plots["identity"], "identity per step") if "identity" in plots else "",
        "<h2>Clinical faithfulness: cardiothoracic ratio</h2>",
        _table(_clinical_rows(metrics)),
        _image(plots["ctr"], "CTR along the series") if "ctr" in plots else "",
        "<h2>Counterfactual difference against saliency maps</h2>",
        _table(_saliency_rows(metrics)),
        _image(plots["examples"], "example series with difference and saliency maps") if "examples" in plots else "",
        *(
            [
                "<h2>Faithfulness: does the series show what the black box uses?</h2>",
                "<p class='note'>Shortcut test, model randomisation and label flip (docs/evaluation.md says how to "
                "read a failure). A method that fails a check is reported as failing.</p>",
                _table(_faithfulness_rows(metrics)),
                _image(plots["faithfulness_shortcut"], "shortcut series") if "faithfulness_shortcut" in plots else "",
            ]
            if "faithfulness" in metrics
            else []
        ),
        "<p class='note'>Per-image figures: <code>per_image.csv</code>; per-frame scores and CTR: <code>per_frame.csv</code>; "
        "every figure above with its count: <code>metrics.json</code>.</p>",
    ]
    document = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_text(document, encoding="utf-8"))
