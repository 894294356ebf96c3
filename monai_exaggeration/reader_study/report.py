"""The HTML report of a reader-study analysis: one self-contained file (``analysis/report.html``).

Tables are rendered from the analysis tables, plots are drawn with matplotlib's object API (no
pyplot state, Agg canvas) and embedded as base64 PNG ``data:`` URIs; the page loads nothing from
anywhere (no scripts, style sheets, fonts or images outside the file), so it can be archived or
mailed as it is. Every text that comes from the study or the readers is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from monai_exaggeration.reader_study.analysis import AnalysisResult

__all__ = ["figure_data_uri", "render_report"]

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.note { background: #fff7e0; border-left: 4px solid #e0a000; padding: 0.4em 0.8em; margin: 0.4em 0; }
.muted { color: #666; font-size: 0.9em; } img { max-width: 100%; }
"""


def figure_data_uri(figure: Figure) -> str:
    """A figure as a ``data:image/png;base64,...`` URI (no metadata in the PNG)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image(uri: str, alt: str) -> str:
    return f'<p><img src="{uri}" alt="{html.escape(alt)}"></p>'


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def _table(frame: pd.DataFrame | None, empty: str = "nothing to show") -> str:
    if frame is None or frame.empty:
        return f'<p class="muted">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _likert_figure(summary: pd.DataFrame, questions: dict[str, dict]) -> str | None:
    names = list(dict.fromkeys(summary["question_id"]))
    if not names:
        return None
    figure = Figure(figsize=(3.2 * len(names), 3.0))
    for index, qid in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        part = summary[summary["question_id"] == qid]
        means = part["mean"].to_numpy(float)
        low = np.nan_to_num(means - part["ci_low"].to_numpy(float))
        high = np.nan_to_num(part["ci_high"].to_numpy(float) - means)
        axes.errorbar(range(len(part)), means, yerr=[low, high], fmt="o", capsize=5, color="#4c78a8")
        question = questions.get(qid, {})
        axes.set_ylim(float(question.get("min", 1)) - 0.5, float(question.get("max", 5)) + 0.5)
        axes.set_xlim(-0.6, len(part) - 0.4)
        axes.set_xticks(range(len(part)), list(part["arm"]), rotation=20)
        axes.set_title(qid, fontsize=9)
        axes.set_ylabel("mean (95 % CI)")
    figure.tight_layout()
    return figure_data_uri(figure)


def _change_figure(change: pd.DataFrame) -> str | None:
    if change.empty:
        return None
    figure = Figure(figsize=(4.5, 3.0))
    axes = figure.add_subplot(1, 1, 1)
    labels = [f"{row.arm}\n{row.before.removesuffix('_before')}" for row in change.itertuples()]
    sem = change["sd_change"].to_numpy(float) / np.sqrt(np.maximum(change["n"].to_numpy(float), 1))
    axes.bar(
        range(len(change)),
        change["mean_change"].to_numpy(float),
        yerr=np.nan_to_num(1.96 * sem),
        capsize=4,
        color="#f58518",
    )
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(change)), labels, fontsize=8)
    axes.set_ylabel("mean change after - before (±1.96 SE)")
    figure.tight_layout()
    return figure_data_uri(figure)


def _choice_figure(choice: pd.DataFrame) -> str | None:
    if choice.empty:
        return None
    figure = Figure(figsize=(4.5, 3.0))
    axes = figure.add_subplot(1, 1, 1)
    accuracy = choice["accuracy"].to_numpy(float)
    low = np.nan_to_num(accuracy - choice["ci_low"].to_numpy(float))
    high = np.nan_to_num(choice["ci_high"].to_numpy(float) - accuracy)
    axes.bar(range(len(choice)), accuracy, yerr=[low, high], capsize=4, color="#54a24b")
    axes.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    axes.set_ylim(0, 1)
    axes.set_xticks(range(len(choice)), list(choice["group"]), rotation=20, fontsize=8)
    axes.set_ylabel("accuracy (Wilson 95 % CI)")
    figure.tight_layout()
    return figure_data_uri(figure)


def _progress(study: dict, responses: pd.DataFrame) -> pd.DataFrame:
    rows = []
    assignments = study.get("assignments", {})
    for reader in study.get("readers", []) or sorted(responses["reader_id"].unique()):
        mine = responses[responses["reader_id"] == reader]
        rows.append(
            {
                "reader": reader,
                "cases assigned": len(assignments.get(reader, [])),
                "cases answered": int(mine["case_id"].nunique()),
                "answers": len(mine),
            }
        )
    return pd.DataFrame(rows)


def render_report(study: dict, result: AnalysisResult) -> str:
    """The report page of an analysis (see the module docstring)."""
    tables = result.tables
    responses = tables["responses"]
    title = str(study.get("title", "Reader study"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)} - reader study analysis</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}: reader study analysis</h1>",
        (
            f'<p class="muted">{len(responses)} answers from {responses["reader_id"].nunique()} reader(s) on '
            f"{responses['case_id'].nunique()} of {len(study.get('cases', {}))} case(s); arms: "
            f"{html.escape(', '.join(a.get('label', a['id']) + ' (' + a['id'] + ')' for a in study.get('arms', [])))}. "
            f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>"
        ),
    ]
    parts += [f'<div class="note">{html.escape(note)}</div>' for note in result.notes]
    parts += ["<h2>Progress</h2>", _table(_progress(study, responses))]

    parts.append("<h2>Likert questions by arm</h2>")
    figure = _likert_figure(tables["likert_summary"], {q["id"]: q for q in study.get("questions", [])})
    if figure:
        parts.append(_image(figure, "mean Likert answer per arm"))
    parts.append(_table(tables["likert_summary"], "no Likert answers"))
    parts += [
        "<h3>One-way ANOVA across arms</h3>",
        '<p class="muted">Treats every answer as independent; the mixed model below accounts for repeated readers and cases.</p>',
        _table(tables["anova"], "no Likert answers"),
        "<h3>Tukey HSD (mean difference = arm_a - arm_b)</h3>",
        _table(tables["tukey"], "no pair of arms to compare"),
        "<h3>Mixed-effects model (crossed random intercepts for reader and case)</h3>",
        _table(tables.get("mixed_model"), "skipped (see the notes above)"),
    ]

    parts.append("<h2>Change of confidence after the explanation</h2>")
    figure = _change_figure(tables["confidence_change"])
    if figure:
        parts.append(_image(figure, "mean change of confidence per arm"))
    parts.append(_table(tables["confidence_change"], "no before/after question pair answered"))

    parts += ["<h2>Inter-reader agreement</h2>", _table(tables["agreement"], "no categorical answers")]

    parts.append("<h2>Real versus generated (forced choice)</h2>")
    figure = _choice_figure(tables["forced_choice"])
    if figure:
        parts.append(_image(figure, "forced-choice accuracy"))
    parts.append(
        '<p class="muted">Accuracy near 0.5 means the readers could not tell generated frames from real images.</p>'
    )
    parts.append(_table(tables["forced_choice"], "no forced-choice answers with a known truth"))

    parts += [
        "<h2>Diagnostic accuracy (empirical AUC, readers pooled)</h2>",
        _table(tables["auc"], "no ratings of cases with ground truth"),
    ]
    mrmc = [path.name for name, path in result.files.items() if name.startswith("imrmc_")]
    if mrmc:
        parts.append(
            f'<p class="muted">For reader-and-case variance of the AUC, analyse {html.escape(", ".join(mrmc))} with iMRMC.</p>'
        )

    text_ids = [q["id"] for q in study.get("questions", []) if q.get("type") == "text"]
    comments = responses[responses["question_id"].isin(text_ids) & responses["value"].astype(str).str.strip().ne("")]
    parts += [
        "<h2>Free-text comments</h2>",
        _table(comments[["reader_id", "case_id", "arm", "question_id", "value"]], "no comments"),
    ]
    parts += ["<h2>Files</h2>", "<ul>"]
    parts += [f"<li>{html.escape(path.name)}</li>" for path in result.files.values()]
    parts += ["<li>report.html</li><li>summary.json</li></ul>", "</body></html>"]
    return "\n".join(parts) + "\n"
