"""``reader-study analyze`` on synthetic answers with known effects."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monai_exaggeration.cli import main
from monai_exaggeration.reader_study.analysis import (
    LONG_COLUMNS,
    agreement,
    analyze_study,
    anova_by_arm,
    cohen_kappa,
    confidence_change,
    fleiss_kappa,
    forced_choice_accuracy,
    imrmc_text,
    mixed_models,
)
from monai_exaggeration.reader_study.builder import assign_arms, make_case_ids
from monai_exaggeration.reader_study.store import ResponseStore

ARMS = ["image", "saliency", "series"]
QUESTIONS = {
    "confidence_before": {
        "id": "confidence_before",
        "type": "likert",
        "prompt": "Before?",
        "phase": "before",
        "min": 1,
        "max": 5,
    },
    "real_or_generated": {"id": "real_or_generated", "type": "forced_choice", "prompt": "Real?", "phase": "before"},
    "confidence_after": {
        "id": "confidence_after",
        "type": "likert",
        "prompt": "After?",
        "phase": "after",
        "min": 1,
        "max": 5,
    },
    "helpful": {
        "id": "helpful",
        "type": "yes_no",
        "prompt": "Helpful?",
        "phase": "after",
        "arms": ["saliency", "series"],
    },
    "what_changed": {
        "id": "what_changed",
        "type": "choice",
        "prompt": "What?",
        "phase": "after",
        "multiple": True,
        "options": ["heart size", "devices"],
        "arms": ["series"],
    },
    "comment": {"id": "comment", "type": "text", "prompt": "Comments", "phase": "after"},
}


def synthetic(shift: float = 0.0, readers: int = 6, cases: int = 60, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """A Latin-square study: Likert answers = case effect + reader effect + noise, +``shift`` in the series arm (after)."""
    rng = np.random.default_rng(seed)
    case_ids = make_case_ids(cases, seed)
    reader_ids = [f"R{i}" for i in range(readers)]
    plan = assign_arms(case_ids, reader_ids, ARMS, seed)
    truth = {c: str(i % 2) for i, c in enumerate(case_ids)}
    choice = {c: ("real", "generated")[i % 2] for i, c in enumerate(sorted(case_ids))}
    case_effect = dict(zip(case_ids, rng.normal(0, 0.6, cases)))
    reader_effect = dict(zip(reader_ids, rng.normal(0, 0.3, readers)))
    rows = []
    for reader, items in plan.items():
        for item in items:
            case, arm = item["case_id"], item["arm"]
            base = 3 + case_effect[case] + reader_effect[reader] + 0.8 * (int(truth[case]) - 0.5)
            before = int(np.clip(np.rint(base + rng.normal(0, 0.8)), 1, 5))
            after = int(np.clip(np.rint(base + (shift if arm == "series" else 0) + rng.normal(0, 0.8)), 1, 5))
            common = {
                "reader_id": reader,
                "case_id": case,
                "arm": arm,
                "answered_at": "2025-01-01T00:00:00+00:00",
                "ground_truth": truth[case],
                "forced_choice_truth": choice[case],
            }
            rows.append(
                {
                    **common,
                    "question_id": "confidence_before",
                    "question_type": "likert",
                    "phase": "before",
                    "value": before,
                }
            )
            rows.append(
                {
                    **common,
                    "question_id": "confidence_after",
                    "question_type": "likert",
                    "phase": "after",
                    "value": after,
                }
            )
    study = {
        "format": 1,
        "title": "Synthetic",
        "instructions": "",
        "arms": [{"id": a, "label": a, "shows": ["image"]} for a in ARMS],
        "questions": list(QUESTIONS.values()),
        "cases": {c: {} for c in case_ids},
        "readers": reader_ids,
        "assignments": plan,
    }
    return study, pd.DataFrame(rows, columns=LONG_COLUMNS)


def test_shifted_arm_is_detected() -> None:
    _, responses = synthetic(shift=1.0)
    anova, tukey = anova_by_arm(responses, QUESTIONS, ARMS)
    after = anova.set_index("question_id").loc["confidence_after"]
    assert after["p_value"] < 0.05 and after["arms"] == 3 and after["n"] == 360
    pairs = tukey[tukey["question_id"] == "confidence_after"].set_index(["arm_a", "arm_b"])
    assert pairs.loc[("image", "series"), "significant"] and pairs.loc[("saliency", "series"), "significant"]
    assert pairs.loc[("image", "series"), "mean_difference"] < -0.5  # arm_a - arm_b
    assert not pairs.loc[("image", "saliency"), "significant"]
    assert (
        anova.set_index("question_id").loc["confidence_before", "p_value"] > 0.05
    )  # before the explanation: no effect
    # the same F as scipy on the raw groups
    groups = [responses[(responses.question_id == "confidence_after") & (responses.arm == a)]["value"] for a in ARMS]
    assert after["F"] == pytest.approx(stats.f_oneway(*groups).statistic)


def test_no_shift_is_not_significant() -> None:
    _, responses = synthetic(shift=0.0)
    anova, tukey = anova_by_arm(responses, QUESTIONS, ARMS)
    assert (anova["p_value"] > 0.05).all()
    assert not tukey["significant"].any()


def test_mixed_model_recovers_the_shift() -> None:
    pytest.importorskip("statsmodels")
    _, responses = synthetic(shift=1.0)
    table, notes = mixed_models(responses, QUESTIONS, ARMS)
    assert table is not None and not [n for n in notes if "failed" in n]
    after = table[table["question_id"] == "confidence_after"].set_index("term")
    assert after.loc["series - image", "p_value"] < 0.05 and 0.5 < after.loc["series - image", "estimate"] < 1.2
    assert after.loc["saliency - image", "p_value"] > 0.05
    assert {"var(reader)", "var(case)", "var(residual)"} <= set(after.index)
    assert after.loc["var(case)", "estimate"] > 0


def test_mixed_model_is_skipped_without_statsmodels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.formula.api", None)
    _, responses = synthetic()
    table, notes = mixed_models(responses, QUESTIONS, ARMS)
    assert table is None and notes == [
        'mixed-effects model skipped: statsmodels is not installed (pip install "monai_exaggeration[reader-study]")'
    ]


def test_confidence_change_paired_tests() -> None:
    _, responses = synthetic(shift=1.0)
    change = confidence_change(responses, QUESTIONS, ARMS).set_index("arm")
    assert list(change.index) == ARMS and (change["n"] == 120).all()
    assert (
        change.loc["series", "mean_change"] > 0.5
        and change.loc["series", "wilcoxon_p"] < 0.001
        and change.loc["series", "t_p"] < 0.001
    )
    assert change.loc["image", "wilcoxon_p"] > 0.01
    pairs = responses.pivot_table(
        index=["reader_id", "case_id", "arm"], columns="question_id", values="value"
    ).reset_index()
    series = pairs[pairs["arm"] == "series"]
    expected = stats.ttest_rel(series["confidence_after"], series["confidence_before"])
    assert change.loc["series", "t_statistic"] == pytest.approx(expected.statistic)
    unchanged = responses.copy()
    after = unchanged["question_id"] == "confidence_after"
    unchanged.loc[after, "value"] = unchanged.loc[unchanged["question_id"] == "confidence_before", "value"].to_numpy()
    assert (confidence_change(unchanged, QUESTIONS, ARMS)["note"] == "no reader changed their answer").all()


def test_kappa() -> None:
    labels = ["yes", "no", "yes", "yes", "no", "maybe"] * 5
    assert cohen_kappa(labels, labels) == 1.0
    rng = np.random.default_rng(1)
    a, b = list(rng.integers(0, 3, 50)), list(rng.integers(0, 3, 50))
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score([str(v) for v in a], [str(v) for v in b]))
    # Fleiss (1971) example as in the literature: 10 subjects, 14 raters, 5 categories -> 0.210
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[2, 0], [1, 0]]))


def _agreeing(readers: int) -> pd.DataFrame:
    rows = []
    for index in range(12):
        for reader in range(readers):
            common = {
                "reader_id": f"R{reader}",
                "case_id": f"C{index:02d}",
                "arm": "series",
                "answered_at": "",
                "ground_truth": "",
                "forced_choice_truth": "",
            }
            rows.append(
                {
                    **common,
                    "question_id": "helpful",
                    "question_type": "yes_no",
                    "phase": "after",
                    "value": ("yes", "no")[index % 2],
                }
            )
            rows.append(
                {
                    **common,
                    "question_id": "confidence_before",
                    "question_type": "likert",
                    "phase": "before",
                    "value": 1 + index % 5,
                }
            )
            rows.append(
                {
                    **common,
                    "question_id": "what_changed",
                    "question_type": "choice",
                    "phase": "after",
                    "value": [["heart size"], ["devices"], ["heart size", "devices"]][index % 3],
                }
            )
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


@pytest.mark.parametrize("readers, statistic", [(2, "Cohen's kappa"), (4, "Fleiss' kappa")])
def test_perfectly_agreeing_readers_have_kappa_one(readers: int, statistic: str) -> None:
    table = agreement(_agreeing(readers), QUESTIONS).set_index("question")
    for question in ("helpful", "confidence_before", "what_changed: heart size", "what_changed: devices"):
        assert table.loc[question, "statistic"] == statistic
        assert table.loc[question, "kappa"] == pytest.approx(1.0)
        assert table.loc[question, "observed_agreement"] == 1.0 and table.loc[question, "cases"] == 12


def test_forced_choice_accuracy() -> None:
    rows = []
    for index in range(30):  # 24 of 30 right: 14/15 on real images, 10/15 on generated ones
        truth = "real" if index < 15 else "generated"
        wrong = index in (0,) or index in range(15, 20)
        answer = ({"real": "generated", "generated": "real"}[truth]) if wrong else truth
        rows.append(
            {
                "reader_id": f"R{index % 3}",
                "case_id": f"C{index:02d}",
                "arm": ARMS[index % 3],
                "question_id": "real_or_generated",
                "question_type": "forced_choice",
                "phase": "before",
                "value": answer,
                "answered_at": "",
                "ground_truth": "",
                "forced_choice_truth": truth,
            }
        )
    rows.append({**rows[0], "case_id": "C99", "forced_choice_truth": ""})  # no known truth: not counted
    table = forced_choice_accuracy(pd.DataFrame(rows, columns=LONG_COLUMNS), QUESTIONS, ARMS).set_index("group")
    assert (
        table.loc["all", "n"] == 30
        and table.loc["all", "correct"] == 24
        and table.loc["all", "accuracy"] == pytest.approx(0.8)
    )
    assert (
        table.loc["all", "p_value"] == pytest.approx(stats.binomtest(24, 30, 0.5).pvalue)
        and table.loc["all", "p_value"] < 0.01
    )
    assert table.loc["all", "ci_low"] < 0.8 < table.loc["all", "ci_high"]
    assert table.loc["truth=real", "correct"] == 14 and table.loc["truth=generated", "correct"] == 10
    assert table.loc[["arm=image", "arm=saliency", "arm=series"], "n"].sum() == 30


def test_imrmc_export_format() -> None:
    _, responses = synthetic(readers=3, cases=9)
    text = imrmc_text(responses, "confidence_after", "Synthetic")
    lines = text.splitlines()
    begin = lines.index("BEGIN DATA:")
    header = dict(line.split(": ", 1) for line in lines[:begin] if re.match(r"^N[0-9RM]: ", line))
    assert header == {"NR": "3", "N0": "5", "N1": "4", "NM": "3"}  # truth = index % 2 over 9 cases
    data = [line.split(",") for line in lines[begin + 1 :]]
    truth = [row for row in data if row[0] == "-1"]
    readings = [row for row in data if row[0] != "-1"]
    assert len(truth) == 9 and all(row[2] == "0" and row[3] in ("0", "1") for row in truth)
    assert data[: len(truth)] == truth  # truth rows first
    assert len(readings) == 27 and all(len(row) == 4 and row[2] in ARMS and 1 <= int(row[3]) <= 5 for row in readings)
    expected = responses[responses["question_id"] == "confidence_after"]
    assert {(r[0], r[1], r[2], int(r[3])) for r in readings} == set(
        zip(expected["reader_id"], expected["case_id"], expected["arm"], expected["value"])
    )
    assert imrmc_text(responses.assign(ground_truth=""), "confidence_after") is None


def _study_folder(folder: Path, shift: float = 1.0) -> Path:
    study, responses = synthetic(shift=shift, readers=3, cases=12)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(study))
    (folder / "private").mkdir()
    key = responses.drop_duplicates("case_id")[["case_id", "ground_truth", "forced_choice_truth"]]
    key.assign(source="x", source_uid="").to_csv(folder / "private" / "key.csv", index=False)
    store = ResponseStore(folder / "responses.sqlite")
    for row in responses.itertuples():
        store.save(row.reader_id, row.case_id, row.question_id, row.arm, row.phase, int(row.value))
    first = responses.iloc[0]
    store.save(first.reader_id, first.case_id, "comment", first.arm, "after", "<script>alert(1)</script> heart grows")
    store.save(first.reader_id, first.case_id, "real_or_generated", first.arm, "before", first.forced_choice_truth)
    store.save(first.reader_id, first.case_id, "what_changed", first.arm, "after", ["heart size"])
    return folder


def test_analyze_command_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _study_folder(tmp_path / "study_dir", shift=1.0)
    assert main(["reader-study", "analyze", str(folder)]) == 0
    out = folder / "analysis"
    names = {p.name for p in out.iterdir()}
    assert {
        "responses.csv",
        "likert_summary.csv",
        "anova.csv",
        "tukey.csv",
        "confidence_change.csv",
        "agreement.csv",
        "forced_choice.csv",
        "auc.csv",
        "imrmc_confidence_before.imrmc",
        "imrmc_confidence_after.imrmc",
        "report.html",
        "summary.json",
    } <= names
    assert "report.html" in capsys.readouterr().out
    exported = pd.read_csv(out / "responses.csv", dtype=str, keep_default_na=False)
    assert len(exported) == 12 * 3 * 2 + 3
    assert set(exported["ground_truth"]) == {"0", "1"} and set(exported["arm"]) == set(ARMS)
    choice = exported[exported["question_id"] == "real_or_generated"]
    assert (
        choice["correct"].tolist() == ["1"]
        and exported.loc[exported["question_id"] == "what_changed", "value"].item() == '["heart size"]'
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["responses"] == len(exported) and summary["progress"] == {"R0": 12, "R1": 12, "R2": 12}
    summary_csv = pd.read_csv(out / "likert_summary.csv")
    assert len(summary_csv) == 6 and (summary_csv["ci_low"] < summary_csv["mean"]).all()
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") >= 3
    assert not re.search(r"(src|href)=\"(?!data:)", html) and "<script" not in html and "<link" not in html
    assert "http://" not in html and "https://" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; heart grows" in html  # reader text is escaped
    mixed = "statsmodels" in sys.modules or _has_statsmodels()
    assert (out / "mixed_model.csv").exists() == mixed
    assert ("mixed-effects model skipped" in html) != mixed


def _has_statsmodels() -> bool:
    try:
        import statsmodels  # noqa: F401
    except ImportError:
        return False
    return True


def test_analyze_without_statsmodels_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.formula.api", None)
    result = analyze_study(_study_folder(tmp_path / "s"), tmp_path / "elsewhere")
    assert "mixed_model" not in result.files and not (tmp_path / "elsewhere" / "mixed_model.csv").exists()
    assert any("statsmodels is not installed" in note for note in result.notes)
    assert "statsmodels is not installed" in (tmp_path / "elsewhere" / "report.html").read_text()


def test_analyze_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["reader-study", "analyze", str(tmp_path / "missing")]) == 2
    assert "not a study folder" in caplog.text
    study, _ = synthetic(readers=2, cases=3)
    (tmp_path / "study.json").write_text(json.dumps(study))
    caplog.clear()
    assert main(["reader-study", "analyze", str(tmp_path)]) == 2
    assert "no responses yet" in caplog.text and not (tmp_path / "analysis").exists()
    ResponseStore(tmp_path / "responses.sqlite").save("R0", "C1", "confidence_before", "image", "before", 3)
    caplog.clear()
    assert main(["reader-study", "analyze", str(tmp_path), "--mrmc-question", "comment"]) == 2
    assert "not a Likert question" in caplog.text
