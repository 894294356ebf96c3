"""Statistical analysis of a reader study: ``python -m monai_exaggeration reader-study analyze DIR``.

Reads ``DIR/study.json``, ``DIR/responses.sqlite`` (:mod:`.store`) and, when present,
``DIR/private/key.csv`` (ground truth and forced-choice truth), and writes into ``DIR/analysis``
(or ``--out``), each file atomically:

``responses.csv``
    Every answer: reader_id, case_id, arm, question_id, question_type, phase, value (text; lists
    as JSON), answered_at, ground_truth, forced_choice_truth, correct (forced-choice answers).
``likert_summary.csv``
    Per Likert question and arm: n, mean, SD, SEM and the t-based 95 % CI of the mean.
``anova.csv``, ``tukey.csv``
    One-way ANOVA of each Likert question across arms, and Tukey's HSD for every pair of arms
    (``scipy.stats.tukey_hsd``; ``mean_difference`` = arm_a - arm_b). They treat answers as
    independent; readers and cases are repeated, so see the mixed model.
``mixed_model.csv``
    When statsmodels is installed: a linear mixed model per Likert question, ``score ~ arm`` with
    crossed random intercepts for reader and case (statsmodels ``MixedLM`` with reader and case
    as variance components of one group: with one reading per reader and case, a case component
    nested in reader groups would be confounded with the residual). Fixed effects are differences
    to the first arm; ``var(reader)``, ``var(case)`` and ``var(residual)`` rows follow. Without
    statsmodels the analysis says it was skipped.
``confidence_change.csv``
    For each pair of Likert questions ``<stem>_before``/``<stem>_after`` (by default
    ``confidence_before``/``confidence_after``) and each arm: the paired change after - before,
    Wilcoxon signed-rank test (zero changes dropped) and paired t-test.
``agreement.csv``
    Inter-reader agreement on categorical answers (yes/no, forced choice, single choice, Likert as
    nominal categories, and each option of a multiple choice as present/absent): Cohen's kappa
    with two readers, Fleiss' kappa with more (over the cases every answering reader rated;
    pooled over arms), and the observed proportion of agreement.
``forced_choice.csv``
    Real-versus-generated accuracy (all answers, by true class, by arm) with the Wilson 95 % CI
    and a two-sided exact binomial test against 0.5 (chance: the readers cannot tell).
``auc.csv``, ``imrmc_<question>.imrmc``
    For the diagnostic-confidence questions (default: Likert questions whose id starts with
    ``confidence``) and cases with ground truth: the empirical AUC per arm pooled over readers,
    and an iMRMC input file (free-text header, ``NR``/``N0``/``N1``/``NM`` lines, ``BEGIN DATA:``,
    truth rows ``-1,<case>,0,<0|1>``, then ``<reader>,<case>,<arm>,<score>`` rows) for an MRMC
    analysis with the FDA's iMRMC tool (Java application or R package).
``summary.json``, ``report.html``
    Key numbers and notes; a self-contained HTML report (tables, plots as embedded PNG).

Every CSV is safe to open in a spreadsheet (OWASP's advice against CSV injection): a text cell
that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, so a
reader's comment ``=HYPERLINK(...)`` is shown as text, never run as a formula. Numbers are never
changed: numeric cells are not text, and a text cell that is just a number (``-2``, ``+0.5``) is
harmless and kept as it is. :func:`csv_safe` does this; the tables in memory keep the raw text.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from monai_exaggeration.reader_study.config import ReaderStudyError
from monai_exaggeration.reader_study.store import ResponseStore
from monai_exaggeration.utils import atomic_write, write_csv_atomic

__all__ = [
    "AnalysisResult",
    "StudyData",
    "agreement",
    "analyze_study",
    "anova_by_arm",
    "auc_by_arm",
    "cohen_kappa",
    "confidence_change",
    "confidence_pairs",
    "csv_safe",
    "fleiss_kappa",
    "forced_choice_accuracy",
    "imrmc_text",
    "likert_summary",
    "load_study_data",
    "mixed_models",
]

#: Columns of the long response table every analysis function takes.
LONG_COLUMNS = [
    "reader_id",
    "case_id",
    "arm",
    "question_id",
    "question_type",
    "phase",
    "value",
    "answered_at",
    "ground_truth",
    "forced_choice_truth",
]
_CATEGORICAL = ("yes_no", "forced_choice", "choice", "likert")
#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass
class StudyData:
    """A study's definition and its answers as one long table (:data:`LONG_COLUMNS`)."""

    study: dict[str, Any]
    responses: pd.DataFrame
    has_key: bool = True

    @property
    def questions(self) -> dict[str, dict]:
        return {q["id"]: q for q in self.study.get("questions", [])}

    @property
    def arms(self) -> list[str]:
        return [a["id"] for a in self.study.get("arms", [])]

    @property
    def readers(self) -> list[str]:
        return list(self.study.get("readers", []))


@dataclass
class AnalysisResult:
    """What :func:`analyze_study` computed and wrote."""

    out_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"Analysis of {self.summary.get('responses', 0)} answer(s) written to {self.out_dir}:"]
        lines += [f"  {name:<22} {path.name}" for name, path in self.files.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- loading


def _truth_text(value: Any) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    return {"0.0": "0", "1.0": "1"}.get(text, text)


def load_study_data(study_dir: str | os.PathLike) -> StudyData:
    """The study definition, every stored answer and the private key joined into one table."""
    folder = Path(study_dir)
    try:
        study = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReaderStudyError(
            f"{folder} is not a study folder (no study.json) -- build one with `reader-study build`"
        ) from None
    except json.JSONDecodeError as error:
        raise ReaderStudyError(f"{folder / 'study.json'} is not valid JSON ({error})") from None
    database = folder / "responses.sqlite"
    if not database.is_file():
        raise ReaderStudyError(
            f"no responses yet: {database} does not exist -- serve the study and let the readers answer first"
        )
    frame = ResponseStore(database).to_frame()
    if frame.empty:
        raise ReaderStudyError(f"no responses yet in {database} -- nothing to analyze")
    questions = {q["id"]: q for q in study.get("questions", [])}
    frame["question_type"] = frame["question_id"].map(lambda q: questions.get(q, {}).get("type", "unknown"))
    key_path = folder / "private" / "key.csv"
    has_key = key_path.is_file()
    if has_key:
        key = pd.read_csv(key_path, dtype=str, keep_default_na=False)
        truth = dict(zip(key["case_id"], key.get("ground_truth", pd.Series([""] * len(key)))))
        choice = dict(zip(key["case_id"], key.get("forced_choice_truth", pd.Series([""] * len(key)))))
    else:
        truth, choice = {}, {}
    frame["ground_truth"] = frame["case_id"].map(lambda c: _truth_text(truth.get(c, "")))
    frame["forced_choice_truth"] = frame["case_id"].map(lambda c: _truth_text(choice.get(c, "")))
    return StudyData(study, frame[LONG_COLUMNS].reset_index(drop=True), has_key)


# ----------------------------------------------------------------------------------------- Likert


def _likert_ids(questions: dict[str, dict]) -> list[str]:
    return [qid for qid, q in questions.items() if q.get("type") == "likert"]


def _scores(responses: pd.DataFrame, question_id: str) -> pd.DataFrame:
    """The rows of one question with a numeric ``score`` column (non-numeric answers dropped)."""
    rows = responses[responses["question_id"] == question_id].copy()
    rows["score"] = pd.to_numeric(rows["value"].map(_number), errors="coerce")
    return rows.dropna(subset=["score"])


def _number(value: Any) -> float | None:
    """A numeric answer as a float; None for anything else (texts, lists, booleans)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _arm_order(arms: list[str], present: list[str]) -> list[str]:
    return [a for a in arms if a in present] + sorted(a for a in present if a not in arms)


def likert_summary(responses: pd.DataFrame, questions: dict[str, dict], arms: list[str]) -> pd.DataFrame:
    """Per Likert question and arm: n, mean, sd, sem, ci_low, ci_high (t-based 95 % CI)."""
    rows = []
    for qid in _likert_ids(questions):
        scores = _scores(responses, qid)
        for arm in _arm_order(arms, list(scores["arm"].unique())):
            values = scores.loc[scores["arm"] == arm, "score"].to_numpy(float)
            n = len(values)
            mean = float(values.mean()) if n else math.nan
            sd = float(values.std(ddof=1)) if n > 1 else math.nan
            sem = sd / math.sqrt(n) if n > 1 else math.nan
            half = float(stats.t.ppf(0.975, n - 1)) * sem if n > 1 else math.nan
            rows.append(
                {
                    "question_id": qid,
                    "arm": arm,
                    "n": n,
                    "mean": mean,
                    "sd": sd,
                    "sem": sem,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                }
            )
    return pd.DataFrame(rows, columns=["question_id", "arm", "n", "mean", "sd", "sem", "ci_low", "ci_high"])


def anova_by_arm(
    responses: pd.DataFrame, questions: dict[str, dict], arms: list[str], alpha: float = 0.05
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-way ANOVA of each Likert question across arms, and Tukey's HSD for every pair of arms."""
    anova_rows, tukey_rows = [], []
    for qid in _likert_ids(questions):
        scores = _scores(responses, qid)
        order = [a for a in _arm_order(arms, list(scores["arm"].unique())) if (scores["arm"] == a).sum() >= 2]
        groups = [scores.loc[scores["arm"] == a, "score"].to_numpy(float) for a in order]
        row: dict[str, Any] = {
            "question_id": qid,
            "arms": len(order),
            "n": int(sum(len(g) for g in groups)),
            "F": math.nan,
            "df_between": len(order) - 1,
            "df_within": int(sum(len(g) for g in groups)) - len(order),
            "p_value": math.nan,
            "eta_squared": math.nan,
            "note": "",
        }
        if len(order) < 2:
            row["note"] = "fewer than two arms with two or more answers"
            anova_rows.append(row)
            continue
        pooled = np.concatenate(groups)
        total = float(((pooled - pooled.mean()) ** 2).sum())
        within = float(sum(((g - g.mean()) ** 2).sum() for g in groups))
        if total == 0 or within == 0:
            row["note"] = "every answer is the same" if total == 0 else "answers do not vary within arms"
            anova_rows.append(row)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.f_oneway(*groups)
            tukey = stats.tukey_hsd(*groups)
        between = float(sum(len(g) * (g.mean() - pooled.mean()) ** 2 for g in groups))
        row.update(F=float(result.statistic), p_value=float(result.pvalue), eta_squared=between / total)
        anova_rows.append(row)
        interval = tukey.confidence_interval(1 - alpha)
        for i in range(len(order)):
            for j in range(i + 1, len(order)):
                p = float(tukey.pvalue[i, j])
                tukey_rows.append(
                    {
                        "question_id": qid,
                        "arm_a": order[i],
                        "arm_b": order[j],
                        "mean_difference": float(tukey.statistic[i, j]),
                        "ci_low": float(interval.low[i, j]),
                        "ci_high": float(interval.high[i, j]),
                        "p_value": p,
                        "significant": bool(p < alpha),
                    }
                )
    anova = pd.DataFrame(
        anova_rows,
        columns=["question_id", "arms", "n", "F", "df_between", "df_within", "p_value", "eta_squared", "note"],
    )
    tukey = pd.DataFrame(
        tukey_rows,
        columns=["question_id", "arm_a", "arm_b", "mean_difference", "ci_low", "ci_high", "p_value", "significant"],
    )
    return anova, tukey


def mixed_models(
    responses: pd.DataFrame, questions: dict[str, dict], arms: list[str]
) -> tuple[pd.DataFrame | None, list[str]]:
    """Linear mixed model per Likert question (see the module docstring); (None, [reason]) without statsmodels."""
    try:
        import statsmodels.formula.api as smf
        from statsmodels.tools.sm_exceptions import ConvergenceWarning
    except ImportError:
        return None, [
            'mixed-effects model skipped: statsmodels is not installed (pip install "monai_exaggeration[reader-study]")'
        ]
    rows, notes = [], []
    for qid in _likert_ids(questions):
        data = _scores(responses, qid)
        order = _arm_order(arms, list(data["arm"].unique()))
        if (
            len(order) < 2
            or data["reader_id"].nunique() < 2
            or data["case_id"].nunique() < 2
            or data["score"].nunique() < 2
        ):
            notes.append(f"mixed model of {qid} skipped: needs two arms, two readers, two cases and varying answers")
            continue
        data = data.assign(one_group=1, arm=pd.Categorical(data["arm"], categories=order))
        model = smf.mixedlm(
            "score ~ arm",
            data,
            groups="one_group",
            re_formula="0",
            vc_formula={"reader": "0 + C(reader_id)", "case": "0 + C(case_id)"},
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = model.fit(reml=True)
            except (np.linalg.LinAlgError, ValueError) as error:
                notes.append(f"mixed model of {qid} failed to fit: {error}")
                continue
        problems = sorted(
            {
                str(w.message).splitlines()[0]
                for w in caught
                if issubclass(w.category, (ConvergenceWarning, RuntimeWarning, UserWarning))
            }
        )
        converged = bool(getattr(fit, "converged", True))
        if problems or not converged:
            notes.append(f"mixed model of {qid}: {'; '.join(problems) or 'did not converge'} -- interpret with care")
        interval = fit.conf_int()
        for term in fit.fe_params.index:
            label = (
                "intercept (" + order[0] + ")"
                if term == "Intercept"
                else term.replace("arm[T.", "").rstrip("]") + f" - {order[0]}"
            )
            rows.append(
                {
                    "question_id": qid,
                    "term": label,
                    "estimate": float(fit.fe_params[term]),
                    "std_error": float(fit.bse_fe[term]),
                    "z": float(fit.tvalues[term]),
                    "p_value": float(fit.pvalues[term]),
                    "ci_low": float(interval.loc[term, 0]),
                    "ci_high": float(interval.loc[term, 1]),
                    "converged": converged,
                }
            )
        for name, variance in zip(model.exog_vc.names, np.atleast_1d(fit.vcomp)):
            rows.append(
                {"question_id": qid, "term": f"var({name})", "estimate": float(variance), "converged": converged}
            )
        rows.append({"question_id": qid, "term": "var(residual)", "estimate": float(fit.scale), "converged": converged})
    columns = ["question_id", "term", "estimate", "std_error", "z", "p_value", "ci_low", "ci_high", "converged"]
    return pd.DataFrame(rows, columns=columns), notes


def confidence_pairs(questions: dict[str, dict]) -> list[tuple[str, str]]:
    """``(<stem>_before, <stem>_after)`` pairs of Likert questions."""
    pairs = []
    for qid, question in questions.items():
        if question.get("type") == "likert" and qid.endswith("_before"):
            after = qid[: -len("_before")] + "_after"
            if questions.get(after, {}).get("type") == "likert":
                pairs.append((qid, after))
    return pairs


def confidence_change(responses: pd.DataFrame, questions: dict[str, dict], arms: list[str]) -> pd.DataFrame:
    """Paired change (after - before) per question pair and arm: Wilcoxon signed-rank and paired t-test."""
    rows = []
    for before_id, after_id in confidence_pairs(questions):
        before = _scores(responses, before_id).set_index(["reader_id", "case_id"])
        after = _scores(responses, after_id).set_index(["reader_id", "case_id"])
        paired = before[["arm", "score"]].join(after[["score"]].rename(columns={"score": "score_after"}), how="inner")
        for arm in _arm_order(arms, list(paired["arm"].unique())):
            part = paired[paired["arm"] == arm]
            x, y = part["score"].to_numpy(float), part["score_after"].to_numpy(float)
            change = y - x
            row: dict[str, Any] = {
                "before": before_id,
                "after": after_id,
                "arm": arm,
                "n": len(change),
                "mean_before": _mean(x),
                "mean_after": _mean(y),
                "mean_change": _mean(change),
                "sd_change": float(change.std(ddof=1)) if len(change) > 1 else math.nan,
                "wilcoxon_statistic": math.nan,
                "wilcoxon_p": math.nan,
                "t_statistic": math.nan,
                "t_p": math.nan,
                "note": "",
            }
            if len(change) < 2:
                row["note"] = "fewer than two pairs"
            elif not np.any(change):
                row["note"] = "no reader changed their answer"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    wilcoxon = stats.wilcoxon(y, x)
                    paired_t = stats.ttest_rel(y, x)
                row.update(
                    wilcoxon_statistic=float(wilcoxon.statistic),
                    wilcoxon_p=float(wilcoxon.pvalue),
                    t_statistic=float(paired_t.statistic),
                    t_p=float(paired_t.pvalue),
                )
            rows.append(row)
    columns = [
        "before",
        "after",
        "arm",
        "n",
        "mean_before",
        "mean_after",
        "mean_change",
        "sd_change",
        "wilcoxon_statistic",
        "wilcoxon_p",
        "t_statistic",
        "t_p",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


# ----------------------------------------------------------------------------------------- agreement


def cohen_kappa(first: list, second: list) -> float:
    """Cohen's kappa of two raters' labels of the same items (NaN when chance agreement is 1)."""
    if len(first) != len(second) or not first:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    categories = sorted({str(v) for v in first} | {str(v) for v in second})
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)))
    for a, b in zip(first, second):
        table[index[str(a)], index[str(b)]] += 1
    total = table.sum()
    observed = np.trace(table) / total
    expected = float((table.sum(axis=1) * table.sum(axis=0)).sum()) / total**2
    return math.nan if expected >= 1 else float((observed - expected) / (1 - expected))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a (subjects, categories) table of rating counts (same number of raters per subject)."""
    counts = np.asarray(counts, dtype=float)
    raters = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) == 0 or np.any(raters != raters[0]) or raters[0] < 2:
        raise ValueError("fleiss_kappa needs a non-empty table with the same number (>= 2) of ratings per subject")
    n = raters[0]
    agreement_per_subject = (np.sum(counts**2, axis=1) - n) / (n * (n - 1))
    observed = float(agreement_per_subject.mean())
    shares = counts.sum(axis=0) / counts.sum()
    expected = float(np.sum(shares**2))
    return math.nan if expected >= 1 else (observed - expected) / (1 - expected)


def _categorical_items(responses: pd.DataFrame, questions: dict[str, dict]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows with a categorical ``label`` column) per question (and per option of multiple choices)."""
    items = []
    for qid, question in questions.items():
        kind = question.get("type")
        rows = responses[responses["question_id"] == qid]
        if kind not in _CATEGORICAL or rows.empty:
            continue
        if kind == "choice" and question.get("multiple"):
            for option in question.get("options", []):
                chosen = rows["value"].map(lambda v, o=option: "yes" if isinstance(v, list) and o in v else "no")
                items.append((f"{qid}: {option}", rows.assign(label=chosen)))
        else:
            items.append((qid, rows.assign(label=rows["value"].map(_label))))
    return items


def _label(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def agreement(responses: pd.DataFrame, questions: dict[str, dict]) -> pd.DataFrame:
    """Inter-reader agreement per categorical question: Cohen's kappa (2 readers) or Fleiss' kappa (more)."""
    rows = []
    for label, items in _categorical_items(responses, questions):
        table = items.pivot_table(index="case_id", columns="reader_id", values="label", aggfunc="first")
        readers = list(table.columns)
        row: dict[str, Any] = {
            "question": label,
            "readers": len(readers),
            "cases": 0,
            "statistic": "",
            "kappa": math.nan,
            "observed_agreement": math.nan,
            "note": "",
        }
        if len(readers) < 2:
            row["note"] = "answered by fewer than two readers"
            rows.append(row)
            continue
        if len(readers) == 2:
            both = table.dropna()
            row.update(statistic="Cohen's kappa", cases=len(both))
            if len(both):
                first, second = list(both.iloc[:, 0]), list(both.iloc[:, 1])
                row["kappa"] = cohen_kappa(first, second)
                row["observed_agreement"] = float(np.mean([a == b for a, b in zip(first, second)]))
        else:
            raters = table.notna().sum(axis=1)
            most = int(raters.max())
            full = table[raters == most]
            row.update(statistic="Fleiss' kappa", readers=most, cases=len(full))
            if most >= 2 and len(full):
                categories = sorted({v for v in full.to_numpy().ravel() if isinstance(v, str)})
                counts = np.array([[int((r == c).sum()) for c in categories] for _, r in full.iterrows()])
                row["kappa"] = fleiss_kappa(counts)
                row["observed_agreement"] = float(((np.sum(counts**2, axis=1) - most) / (most * (most - 1))).mean())
                if most < len(readers):
                    row["note"] = f"{most} of {len(readers)} readers answer it per case (arms differ)"
        if not math.isnan(row["observed_agreement"]) and math.isnan(row["kappa"]):
            row["note"] = "every answer in one category: kappa undefined"
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["question", "readers", "cases", "statistic", "kappa", "observed_agreement", "note"]
    )


# ----------------------------------------------------------------------------------------- forced choice


def forced_choice_accuracy(responses: pd.DataFrame, questions: dict[str, dict], arms: list[str]) -> pd.DataFrame:
    """Real-versus-generated accuracy (all, by true class, by arm): Wilson 95 % CI, exact binomial test vs 0.5."""
    rows = []
    for qid, question in questions.items():
        if question.get("type") != "forced_choice":
            continue
        answers = responses[
            (responses["question_id"] == qid) & responses["forced_choice_truth"].isin(["real", "generated"])
        ]
        answers = answers.assign(correct=answers["value"].astype(str) == answers["forced_choice_truth"])
        groups = [("all", answers)]
        groups += [(f"truth={t}", answers[answers["forced_choice_truth"] == t]) for t in ("real", "generated")]
        groups += [(f"arm={a}", answers[answers["arm"] == a]) for a in _arm_order(arms, list(answers["arm"].unique()))]
        for group, part in groups:
            n, correct = len(part), int(part["correct"].sum())
            row: dict[str, Any] = {
                "question_id": qid,
                "group": group,
                "n": n,
                "correct": correct,
                "accuracy": correct / n if n else math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "p_value": math.nan,
            }
            if n:
                test = stats.binomtest(correct, n, 0.5)
                interval = test.proportion_ci(0.95, method="wilson")
                row.update(ci_low=float(interval.low), ci_high=float(interval.high), p_value=float(test.pvalue))
            rows.append(row)
    return pd.DataFrame(
        rows, columns=["question_id", "group", "n", "correct", "accuracy", "ci_low", "ci_high", "p_value"]
    )


# ----------------------------------------------------------------------------------------- MRMC


def default_mrmc_questions(questions: dict[str, dict]) -> list[str]:
    """Likert questions whose id starts with ``confidence`` (the diagnostic ratings)."""
    return [qid for qid in _likert_ids(questions) if qid.startswith("confidence")]


def auc_by_arm(responses: pd.DataFrame, question_ids: list[str], arms: list[str]) -> pd.DataFrame:
    """Empirical AUC (ties count half) of each rating question per arm, pooled over readers, on cases with ground truth."""
    rows = []
    for qid in question_ids:
        scores = _scores(responses, qid)
        scores = scores[scores["ground_truth"].isin(["0", "1"])]
        for arm in _arm_order(arms, list(scores["arm"].unique())):
            part = scores[scores["arm"] == arm]
            positive = part.loc[part["ground_truth"] == "1", "score"].to_numpy(float)
            negative = part.loc[part["ground_truth"] == "0", "score"].to_numpy(float)
            auc = math.nan
            if len(positive) and len(negative):
                auc = float(stats.mannwhitneyu(positive, negative).statistic) / (len(positive) * len(negative))
            rows.append(
                {
                    "question_id": qid,
                    "arm": arm,
                    "readings": len(part),
                    "positives": len(positive),
                    "negatives": len(negative),
                    "auc": auc,
                }
            )
    return pd.DataFrame(rows, columns=["question_id", "arm", "readings", "positives", "negatives", "auc"])


def imrmc_text(responses: pd.DataFrame, question_id: str, title: str = "Reader study") -> str | None:
    """An iMRMC input file of one rating question (modality = arm); None without ground truth."""
    scores = _scores(responses, question_id)
    scores = scores[scores["ground_truth"].isin(["0", "1"])]
    if scores.empty:
        return None
    truth = scores.drop_duplicates("case_id").set_index("case_id")["ground_truth"].sort_index()
    lines = [
        f"{title}: reader ratings of question {question_id}, modalities = study arms",
        "written by monai_exaggeration reader-study analyze",
        f"NR: {scores['reader_id'].nunique()}",
        f"N0: {int((truth == '0').sum())}",
        f"N1: {int((truth == '1').sum())}",
        f"NM: {scores['arm'].nunique()}",
        "",
        "BEGIN DATA:",
    ]
    lines += [f"-1,{case_id},0,{value}" for case_id, value in truth.items()]
    for row in scores.sort_values(["arm", "reader_id", "case_id"]).itertuples():
        score = int(row.score) if float(row.score).is_integer() else float(row.score)
        lines.append(f"{row.reader_id},{row.case_id},{row.arm},{score}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- everything


def _export_value(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells cannot start a spreadsheet formula (see the module docstring)."""
    safe = table.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(_csv_cell)
    if safe.columns.dtype == object:
        safe.columns = [_csv_cell(name) for name in safe.columns]
    return safe


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _json_ready(value.item())
    return value


def analyze_study(
    study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, mrmc_questions: list[str] | None = None
) -> AnalysisResult:
    """Run every analysis of the module docstring on a study folder and write the outputs."""
    data = load_study_data(study_dir)
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "analysis"
    questions, arms, responses = data.questions, data.arms, data.responses
    result = AnalysisResult(out_dir=out)
    if not data.has_key:
        result.notes.append("private/key.csv not found: no ground truth, forced-choice accuracy, AUC or iMRMC export")
    unknown = sorted(set(responses["question_id"]) - set(questions))
    if unknown:
        result.notes.append(f"answers to questions not in study.json ignored by the statistics: {', '.join(unknown)}")
    if mrmc_questions is None:
        mrmc_questions = default_mrmc_questions(questions)
    else:
        bad = [q for q in mrmc_questions if questions.get(q, {}).get("type") != "likert"]
        if bad:
            raise ReaderStudyError(
                f"--mrmc-question {bad[0]} is not a Likert question of the study -- give a rating question id"
            )

    export = responses.assign(value=responses["value"].map(_export_value))
    correct = export["value"].astype(str) == export["forced_choice_truth"]
    export["correct"] = np.where(
        (export["question_type"] == "forced_choice") & export["forced_choice_truth"].ne(""),
        correct.map({True: "1", False: "0"}),
        "",
    )
    tables: dict[str, pd.DataFrame] = {"responses": export}
    tables["likert_summary"] = likert_summary(responses, questions, arms)
    tables["anova"], tables["tukey"] = anova_by_arm(responses, questions, arms)
    mixed, notes = mixed_models(responses, questions, arms)
    result.notes += notes
    if mixed is not None:
        tables["mixed_model"] = mixed
    tables["confidence_change"] = confidence_change(responses, questions, arms)
    tables["agreement"] = agreement(responses, questions)
    tables["forced_choice"] = forced_choice_accuracy(responses, questions, arms)
    tables["auc"] = auc_by_arm(responses, mrmc_questions, arms)
    result.tables = tables

    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        result.files[name] = write_csv_atomic(csv_safe(table), out / f"{name}.csv")
    title = str(data.study.get("title", "Reader study"))
    for qid in mrmc_questions:
        text = imrmc_text(responses, qid, title)
        if text is None:
            result.notes.append(f"iMRMC export of {qid} skipped: no case has ground truth 0/1 in private/key.csv")
            continue
        path = out / f"imrmc_{qid}.imrmc"
        atomic_write(path, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8"))
        result.files[f"imrmc_{qid}"] = path
    result.summary = {
        "title": title,
        "responses": len(responses),
        "readers": sorted(responses["reader_id"].unique().tolist()),
        "cases_answered": int(responses["case_id"].nunique()),
        "cases": len(data.study.get("cases", {})),
        "progress": {reader: int(n) for reader, n in responses.groupby("reader_id")["case_id"].nunique().items()},
        "anova": {row["question_id"]: _json_ready(row["p_value"]) for row in tables["anova"].to_dict("records")},
        "forced_choice": {
            f"{row['question_id']} {row['group']}": _json_ready(row["accuracy"])
            for row in tables["forced_choice"].to_dict("records")
        },
        "mixed_model": "fitted" if mixed is not None else "skipped",
        "notes": result.notes,
    }
    from monai_exaggeration.reader_study.report import render_report

    html = render_report(data.study, result)
    result.files["report"] = atomic_write(out / "report.html", lambda tmp: tmp.write_text(html, encoding="utf-8"))
    result.summary["files"] = {name: path.name for name, path in result.files.items()}
    text = json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n"
    result.files["summary"] = atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return result
